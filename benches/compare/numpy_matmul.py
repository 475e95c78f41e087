#!/usr/bin/env python3
"""The 1024x1024x1024 f32 matmul of benches/kernels.rs, in numpy (its BLAS).

Usage: python3 benches/compare/numpy_matmul.py [--rounds 3] [--iters 20] [--warmup 3]

Times `np.matmul(a, b, out=c)` like xlayer's harness times a run: warm-up
runs, then each timed run on its own clock (time.perf_counter_ns); per round
the median time gives GFLOP/s (2 n^3 flop per run). Prints a markdown table,
the BLAS that threadpoolctl reports (kernel = "architecture", threads), and
a `RESULT key=value ...` line for benches/compare/kernels.sh.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set, pick OpenBLAS's kernel; run
it once as the environment has them and once with both unset
(`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 ...`).
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = []
    for p in threadpool_info():
        if p.get("user_api") == "blas":
            parts.append(
                f"{p.get('internal_api')} {p.get('version')} kernel={p.get('architecture')} "
                f"threads={p.get('num_threads')} layer={p.get('threading_layer')}"
            )
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    n = args.n

    env = {k: os.environ.get(k, "(unset)") for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"# numpy {np.__version__} on Python {platform.python_version()}")
    print("env: " + " ".join(f"{k}={v}" for k, v in env.items()))
    print(f"blas: {blas_info()}")
    print()

    # Same values as the Rust bench: a = 1, b[k][j] = j mod 7.
    a = np.ones((n, n), dtype=np.float32)
    b = np.tile((np.arange(n) % 7).astype(np.float32), (n, 1))
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    assert np.array_equal(c[0], n * (np.arange(n) % 7).astype(np.float32)), "wrong result"

    flops = 2.0 * n * n * n
    print(f"## numpy f32 matmul {n}x{n}x{n}, {args.rounds} rounds x {args.iters} runs")
    print()
    print("| round | min (ms) | median (ms) | max (ms) | spread | GFLOP/s (median) | GFLOP/s (min time) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    gflops = []
    best = 0.0
    for r in range(args.rounds):
        for _ in range(args.warmup):
            np.matmul(a, b, out=c)
        times = []
        for _ in range(args.iters):
            t = time.perf_counter_ns()
            np.matmul(a, b, out=c)
            times.append((time.perf_counter_ns() - t) * 1e-9)
        med = statistics.median(times)
        lo, hi = min(times), max(times)
        g = flops / med / 1e9
        gflops.append(g)
        best = max(best, flops / lo / 1e9)
        print(f"| {r + 1} | {lo * 1e3:.3f} | {med * 1e3:.3f} | {hi * 1e3:.3f} | {(hi - lo) / med * 100:.1f}% | {g:.2f} | {flops / lo / 1e9:.2f} |")
    med = statistics.median(gflops)
    print()
    print(f"numpy matmul: median {med:.2f} GFLOP/s (rounds {min(gflops):.2f} .. {max(gflops):.2f})")
    print(f"fastest single run: {best:.2f} GFLOP/s")
    print(
        f"RESULT numpy_matmul_gflops={med:.4f} numpy_matmul_gflops_min={min(gflops):.4f} "
        f"numpy_matmul_gflops_max={max(gflops):.4f} numpy_matmul_gflops_best={best:.4f}"
    )


if __name__ == "__main__":
    main()
