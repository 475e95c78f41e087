"""A/B of xlayer builds on the speed suite: several `suite --serve`
binaries (e.g. benches/suite.rs built before and after a change, copied
aside), each on a CPU plugin, interleaved with JAX 0.12 round by round;
prints the median same-round ratio to JAX per entry.

    python suite_ab.py --side before=/tmp/suite-before:cpu=PLUGIN.so \\
                       --side after=/tmp/suite-after:cpu=PLUGIN.so \\
                       --entries cnn_b32,cnn_b256,train_cnn --rounds 5

Run from this folder with the JAX 0.12 venv's python (see suite.sh).
"""
import argparse
import statistics
import time

import suite
import suite_jax


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", action="append", required=True, help="LABEL=EXE:PLUGIN_NAME=PLUGIN_PATH")
    ap.add_argument("--entries", default="cnn_b32,cnn_b256,train_cnn")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=float, default=1.0)
    args = ap.parse_args()
    sides = []
    for spec in args.side:
        label, rest = spec.split("=", 1)
        exe, plugin = rest.split(":", 1)
        sides.append((label, suite.Server(exe, label, plugin.split("=", 1)[1])))
    entries = args.entries.split(",")
    jax_calls = {e: suite_jax.build(e)[0] for e in entries}
    labels = ["jax"] + [lab for lab, _ in sides]
    times = {(lab, e): [] for lab in labels for e in entries}
    ratios = {(lab, e): [] for lab in labels[1:] for e in entries}
    loads = []
    for r in range(args.rounds):
        loads.append(suite.loadavg())
        for e in entries:
            n = max(1, round(suite.CALLS[e] * args.calls))
            order = [("jax", None)] + sides
            k = r % len(order)
            got = {}
            for lab, server in order[k:] + order[:k]:
                if server is None:
                    got[lab] = statistics.median(jax_calls[e]() for _ in range(n))
                else:
                    got[lab] = server.ask(f"time {e} {n}")["median_ms"]
            for lab in labels:
                times[(lab, e)].append(got[lab])
                if lab != "jax":
                    ratios[(lab, e)].append(got[lab] / got["jax"])
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} rounds; "
          f"load average at round starts {min(loads):.2f}-{max(loads):.2f}")
    print("| entry | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for e in entries:
        cells = [f"{statistics.median(times[('jax', e)]):.2f}"]
        cells += [f"{statistics.median(times[(lab, e)]):.2f} ({statistics.median(ratios[(lab, e)]):.2f}×)"
                  for lab in labels[1:]]
        print(f"| {e} | " + " | ".join(cells) + " |")
    for _, server in sides:
        server.close()


if __name__ == "__main__":
    main()
