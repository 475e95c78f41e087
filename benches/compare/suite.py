"""The speed suite of issue #14: xlayer next to JAX 0.12, interleaved, in one run.

Run by suite.sh (which builds xlayer's side, `benches/suite.rs`, finds the
plugins and the venv). This process runs JAX itself and drives one xlayer
server process per CPU plugin build (`suite --serve`, see benches/suite.rs).
Every round times every entry on every side back to back (the order of the
sides rotates per round), so each round gives xlayer/JAX ratios measured
within seconds of each other; the table reports medians over rounds, and the
load average at the start of every round.

    python suite.py --server PATH --plugin cpu=PATH [--plugin cpu-zml=PATH ...]
                    [--rounds 5] [--calls 20] [--entries a,b] [--jax-hlo]
                    [--variant NAME=FLAGS ...] [--minilm BIN] [--json OUT]

--jax-hlo also runs JAX's own StableHLO of each forward entry on every
plugin (the programs are then identical; only the compiler differs).
--variant adds runs of that HLO compiled with the XLA flags FLAGS
(`name=value;name=value`) on every plugin. --minilm BIN adds the MiniLM entries
(batch 1, 8, 24) when the minilm example BIN supports `--bench N`
(see the MiniLM entries below), on every plugin.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax

import suite_jax

ENTRIES = ["mlp_b256", "cnn_b32", "cnn_b256", "block_b8x128x768", "matmul_1024", "train_mlp", "train_cnn"]
FORWARD = {"mlp_b256", "cnn_b32", "cnn_b256", "block_b8x128x768", "matmul_1024"}
# Calls per entry per side per round (train: epochs of 10 steps each).
CALLS = {"mlp_b256": 40, "cnn_b32": 40, "cnn_b256": 10, "block_b8x128x768": 10, "matmul_1024": 20,
         "train_mlp": 3, "train_cnn": 3}


class Server:
    """One `suite --serve` process on one plugin."""

    def __init__(self, exe, name, plugin):
        env = dict(os.environ, XLAYER_PJRT_PLUGIN_CPU=plugin)
        env.pop("XLAYER_PJRT_PLUGIN", None)
        self.name = name
        self.plugin = plugin
        self.p = subprocess.Popen([exe, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=env, text=True, bufsize=1)
        self.info = self.ask("info")

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        reply = self.p.stdout.readline()
        if not reply:
            raise RuntimeError(f"xlayer server {self.name} ended (exit {self.p.wait()}) on {line!r}")
        v = json.loads(reply)
        if "error" in v:
            raise RuntimeError(f"xlayer server {self.name}: {v['error']} (on {line!r})")
        return v

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        self.p.wait()


# MiniLM entries: xlayer's side is the minilm example's `--bench N` (one
# JSON object {"sentences": k, "median_ms": m, "runs_ms": [...]}, a fresh
# process per plugin and round, so its own warm-up and persistent cache
# apply); JAX's side is suite_jax.minilm (same weights and tokenizer, padded to the
# longest). Batch 24 is one ~140-token paragraph among 23 short sentences.
MINILM_LONG = ("A long paragraph sentence " * 35).strip()
MINILM_BATCHES = {
    "minilm_b1": ["The quick brown fox jumps over the lazy dog."],
    "minilm_b8": [f"Short sentence number {i} about the weather today." for i in range(8)],
    "minilm_b24": [MINILM_LONG] + [f"Short sentence number {i} about the weather." for i in range(23)],
}


def minilm_time(bin_path, plugin, sentences, n):
    env = dict(os.environ, XLAYER_PJRT_PLUGIN_CPU=plugin)
    env.pop("XLAYER_PJRT_PLUGIN", None)
    out = subprocess.run([bin_path, "--bench", str(n), *sentences], capture_output=True, text=True,
                         timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"minilm --bench failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--plugin", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=float, default=1.0, help="scale the calls per round")
    ap.add_argument("--entries", default=",".join(ENTRIES))
    ap.add_argument("--jax-hlo", action="store_true")
    ap.add_argument("--variant", action="append", default=[], help="NAME=FLAGS for the JAX-HLO runs")
    ap.add_argument("--minilm", help="the minilm example binary (adds the MiniLM entries)")
    ap.add_argument("--minilm-dir", help="the all-MiniLM-L6-v2 folder (xla-build path minilm)")
    ap.add_argument("--json")
    args = ap.parse_args()
    entries = [e for e in args.entries.split(",") if e]
    unknown = [e for e in entries if e not in ENTRIES]
    if unknown:
        sys.exit(f"unknown entries {unknown}; known: {ENTRIES}")

    servers = []
    for spec in args.plugin:
        name, path = spec.split("=", 1)
        servers.append(Server(args.server, name, path))
    variants = [("", "")] + [tuple(v.split("=", 1)) for v in args.variant]

    jax_calls, hlo_files = {}, {}
    tmp = tempfile.mkdtemp(prefix="xlayer-suite-")
    for e in entries:
        call, lowered = suite_jax.build(e)
        jax_calls[e] = call
        if args.jax_hlo and lowered is not None:
            path = os.path.join(tmp, f"{e}.mlir")
            with open(path, "w") as f:
                f.write(suite_jax.lowered_text(lowered))
            hlo_files[e] = path

    # columns: ("jax", None) | ("xlayer", server) | ("hlo", server, variant)
    columns = [("jax",)] + [("xlayer", s) for s in servers]
    for s in servers:
        for vname, vflags in variants:
            if hlo_files:
                columns.append(("hlo", s, vname, vflags))

    def col_name(c):
        if c[0] == "jax":
            return f"JAX {jax.__version__}"
        if c[0] == "xlayer":
            return f"xlayer [{c[1].name}]"
        return f"JAX's HLO on [{c[1].name}]" + (f" +{c[2]}" if c[2] else "")

    def measure(c, e):
        n = max(1, round(CALLS[e] * args.calls))
        if c[0] == "jax":
            return statistics.median(jax_calls[e]() for _ in range(n))
        if c[0] == "xlayer":
            return c[1].ask(f"time {e} {n}")["median_ms"]
        if e not in hlo_files:
            return None
        flags = f" {c[3]}" if c[3] else ""
        return c[1].ask(f"hlo {e} {hlo_files[e]} {n}{flags}")["median_ms"]

    minilm, minilm_jax = [], {}
    if args.minilm:
        minilm = list(MINILM_BATCHES)
        if args.minilm_dir:
            minilm_jax = {e: suite_jax.minilm(args.minilm_dir, MINILM_BATCHES[e]) for e in minilm}

    times = {(col_name(c), e): [] for c in columns for e in entries + minilm}
    ratios = {(col_name(c), e): [] for c in columns[1:] for e in entries + minilm}
    loads = []
    for r in range(args.rounds):
        loads.append(loadavg())
        for e in entries:
            k = r % len(columns)
            order = columns[k:] + columns[:k]
            got = {}
            for c in order:
                try:
                    got[col_name(c)] = measure(c, e)
                except RuntimeError as err:
                    print(f"round {r + 1} {e} {col_name(c)}: {err}", file=sys.stderr)
                    got[col_name(c)] = None
            j = got[col_name(columns[0])]
            for c in columns:
                t = got[col_name(c)]
                if t is not None:
                    times[(col_name(c), e)].append(t)
                    if c[0] != "jax" and j:
                        ratios[(col_name(c), e)].append(t / j)
        for e in minilm:
            n = max(3, round(10 * args.calls))
            # every plugin, in an order that rotates per round, then JAX once:
            # each plugin's ratio is against that one JAX time of the round
            k = r % len(servers)
            got = {}
            for s in servers[k:] + servers[:k]:
                try:
                    got[s.name] = minilm_time(args.minilm, s.plugin, MINILM_BATCHES[e], n)["median_ms"]
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
                    print(f"round {r + 1} {e} [{s.name}]: {err}", file=sys.stderr)
            j = None
            if e in minilm_jax:
                j = statistics.median(minilm_jax[e]() for _ in range(n))
                times[(col_name(columns[0]), e)].append(j)
            for c in columns[1:1 + len(servers)]:
                x = got.get(c[1].name)
                if x is not None:
                    times[(col_name(c), e)].append(x)
                    if j:
                        ratios[(col_name(c), e)].append(x / j)
        print(f"round {r + 1}/{args.rounds} done (load {loads[-1]:.2f})", file=sys.stderr)
    loads.append(loadavg())
    for s in servers:
        s.close()

    names = [col_name(c) for c in columns]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}; nproc {os.cpu_count()}; "
          f"jax {jax.__version__} (jaxlib {jax.lib.__version__}); {args.rounds} rounds; "
          f"load average (1 min) at round starts {min(loads):.2f}-{max(loads):.2f}")
    for s in servers:
        print(f"plugin {s.name}: {s.info['plugin']} (C API {s.info['api_version']}, {s.info['platform_version']})")
    print("\nmedian ms over rounds; in brackets: median over rounds of (this / JAX in the same round), "
          "< 1 = faster than JAX\n")
    print("| entry | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for e in entries + minilm:
        cells = []
        for n in names:
            t = times[(n, e)]
            if not t:
                cells.append("—")
                continue
            cell = f"{statistics.median(t):.3f}"
            rr = ratios.get((n, e))
            if rr:
                cell += f" ({statistics.median(rr):.2f}×)"
            cells.append(cell)
        print(f"| {e} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loads": loads, "times": {f"{k[0]}|{k[1]}": v for k, v in times.items()},
                       "ratios": {f"{k[0]}|{k[1]}": v for k, v in ratios.items()},
                       "plugins": {s.name: s.info for s in servers}}, f, indent=1)


if __name__ == "__main__":
    main()
