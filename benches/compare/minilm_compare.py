#!/usr/bin/env python3
"""MiniLM speed, xlayer vs JAX vs PyTorch, interleaved in one run: the
minilm example's `--bench N`, then minilm_speed.py under each Python, per
case and round; prints a Markdown table of median-of-round medians and the
ratios of the same rounds, with the load average.

    cargo build --release --example minilm
    MINILM_JAX_PYTHON=$JAX_VENV/bin/python MINILM_TORCH_PYTHON=$TORCH_VENV/bin/python \\
      python3 benches/compare/minilm_compare.py [ROUNDS] [N]

Cases (lines of minilm_sentences.txt): b1 = line 1, b8 = lines 1-8, b24 =
all 24 (23 sentences of 6-23 tokens, then a paragraph of 139). The model
folder is `$XLAYER_HOME/assets/...` as fetched by
`cargo run -p xla-build -- fetch minilm` (found from the example's
`--verbose` output unless MINILM_DIR is set).
"""
import json
import os
import re
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sentences = os.path.join(here, "minilm_sentences.txt")
example = os.environ.get("MINILM_EXAMPLE", os.path.join(root, "target/release/examples/minilm"))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
lines = [l for l in open(sentences, encoding="utf-8").read().splitlines() if l.strip()]
cases = {"b1": (0, 1), "b8": (0, 8), "b24": (0, 24)}


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def xlayer(first, count):
    out = subprocess.run([example, "--bench", str(n), "--verbose", *lines[first:first + count]],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    m = re.search(r"in \d+ execution\(s\): (.*)", out.stderr)
    r["padded"] = m.group(1) if m else "?"
    return r


def model_dir():
    if os.environ.get("MINILM_DIR"):
        return os.environ["MINILM_DIR"]
    home = os.environ.get("XLAYER_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xlayer")
    for dirpath, _, files in os.walk(os.path.join(home, "assets")):
        if "model.safetensors" in files and "tokenizer.json" in files and "minilm" in dirpath.lower():
            return dirpath
    sys.exit("MiniLM model not found: cargo run -p xla-build -- fetch minilm, or set MINILM_DIR")


def python(var, system, first, count):
    py = os.environ.get(var)
    if not py:
        return None
    out = subprocess.run([py, os.path.join(here, "minilm_speed.py"), system, mdir, sentences, str(n),
                          str(first), str(count)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{system} failed: {out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout)


mdir = model_dir()
results = {c: {"xlayer": [], "jax": [], "torch": []} for c in cases}
loads = [loadavg()]
padded = {}
for r in range(rounds):
    for c, (first, count) in cases.items():
        x = xlayer(first, count)
        results[c]["xlayer"].append(x["median_ms"])
        padded.setdefault(c, {})["xlayer"] = x["padded"]
        for system, var in (("jax", "MINILM_JAX_PYTHON"), ("torch", "MINILM_TORCH_PYTHON")):
            p = python(var, system, first, count)
            if p:
                results[c][system].append(p["median_ms"])
                padded[c][system] = "x".join(map(str, p["padded"]))
                padded[c][system + "_label"] = p["system"]
        print(f"round {r + 1} {c}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in results[c].items() if v),
              file=sys.stderr)
    loads.append(loadavg())

print(f"load average (1/5/15 min) before and after each round: {' | '.join(loads)}")
labels = {s: next((padded[c].get(s + "_label") for c in cases if padded[c].get(s + "_label")), s)
          for s in ("jax", "torch")}
print(f"xlayer vs {labels['jax']} and {labels['torch']}; {rounds} rounds x {n} timed runs; "
      "median of the rounds' medians, ratio = other / xlayer per round, median (> 1: xlayer faster)\n")
print("| case | xlayer ms (executions) | JAX ms (padded) | PyTorch ms (padded) | vs JAX | vs PyTorch |")
print("|---|---|---|---|---|---|")
for c in cases:
    res = results[c]
    med = lambda s: f"{statistics.median(res[s]):.1f}" if res[s] else "-"
    ratio = lambda s: (f"{statistics.median([o / x for o, x in zip(res[s], res['xlayer'])]):.2f}x"
                       if res[s] else "-")
    print(f"| {c} | {med('xlayer')} ({padded[c].get('xlayer', '?')}) | {med('jax')} ({padded[c].get('jax', '-')}) "
          f"| {med('torch')} ({padded[c].get('torch', '-')}) | {ratio('jax')} | {ratio('torch')} |")
