"""JAX side of the dispatch benchmark: jax.jit of f(a, b) = a @ b + 1 with
a: f32[2,3], b: f32[3,4] (the program benches/dispatch.rs runs), on CPU.

Prints the mean of N async dispatches (the call returns once the work is
enqueued) and of N dispatch + block_until_ready, each the median of a few
rounds, interleaved. Usage: python jax_dispatch.py [N] [ROUNDS]
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def f(a, b):
    return a @ b + 1


def mean_us(calls, fn):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    jf = jax.jit(f)
    a = jax.device_put(np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    b = jax.device_put(np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=np.float32))
    out = np.asarray(jf(a, b))
    assert np.array_equal(out, [[2, 3, 4, 7], [5, 6, 7, 16]]), out

    def dispatch():
        jf(a, b)

    def dispatch_block():
        jf(a, b).block_until_ready()

    for _ in range(2000):  # warm-up: caches, allocator
        dispatch_block()
    asyncs, blocks = [], []
    for _ in range(rounds):
        asyncs.append(mean_us(n, dispatch))
        jf(a, b).block_until_ready()  # drain the queue before the next phase
        blocks.append(mean_us(n, dispatch_block))

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {rounds} rounds x {n} calls, "
          "mean per call, median of rounds [min .. max]")
    for name, v in (("dispatch (async)", asyncs), ("dispatch + block_until_ready", blocks)):
        print(f"  {name:30s} {statistics.median(v):7.3f} us  [{min(v):.3f} .. {max(v):.3f}]")


if __name__ == "__main__":
    main()
