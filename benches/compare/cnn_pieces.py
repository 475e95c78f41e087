"""The Keras-test CNN at batch 256 cut into pieces, each jitted alone and
timed on jaxlib 0.12's own XLA and on a CPU plugin build registered as an
extra JAX platform, interleaved round by round: where the CNN's time goes
on a plugin, and how much each piece costs there against JAX.

    python cnn_pieces.py --plugin cpu=PATH [--rounds 7] [--flags "NAME=VALUE;..."]

PATH: `cargo run -p xla-build -- path cpu`. The pieces follow xlayer's own
lowering of the CNN (benches/suite.rs): the first convolution as shifted
products, 2x2 average pools as four strided slices. `--flags` compiles the
plugin's side with per-compile XLA options (JAX's `compiler_options`; a
repeated enum takes the enum's full names joined by commas, e.g.
`xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE`,
what xlayer sets for a program with a convolution).
docs/benchmarks.md ("YNNPACK fusion types") has a run of it.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import xla_bridge

B = 256


def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted(x, k):
    """A 3x3 'same' convolution as one product per tap and input feature."""
    _, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = None
    for i in range(3):
        for j in range(3):
            for f in range(c):
                t = xp[:, i:i + h, j:j + w, f:f + 1] * k[i, j, f, :]
                out = t if out is None else out + t
    return out


def pool(x):
    return (x[:, 0::2, 0::2, :] + x[:, 0::2, 1::2, :] + x[:, 1::2, 0::2, :] + x[:, 1::2, 1::2, :]) * 0.25


def first_layer(x, k1, c1):
    return pool(jax.nn.relu(shifted(x, k1) + c1))


def dense(h, w1, b1, w2, b2):
    return jax.nn.softmax(jax.nn.relu(h @ w1 + b1) @ w2 + b2)


def whole(x, k1, c1, k2, c2, w1, b1, w2, b2):
    h = pool(jax.nn.relu(conv(first_layer(x, k1, c1), k2) + c2)).reshape(B, -1)
    return dense(h, w1, b1, w2, b2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True, help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--flags", default="", help="NAME=VALUE;... for the plugin's compiles")
    args = ap.parse_args()
    name, path = args.plugin.split("=", 1)
    name = name.replace("-", "_")
    xla_bridge.register_plugin(name, library_path=path)
    jax.config.update("jax_platforms", "cpu," + name)
    flags = {}
    for item in filter(None, args.flags.split(";")):
        k, v = item.split("=", 1)
        flags[k] = {"true": True, "false": False}.get(v, v)
    devs = {"jax": (jax.devices("cpu")[0], {}), name: (jax.devices(name)[0], flags)}

    rng = np.random.default_rng(0)

    def f(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    x, k1, c1, k2, c2 = f(B, 28, 28, 1), f(3, 3, 1, 32), f(32), f(3, 3, 32, 64), f(64)
    w1, b1, w2, b2 = f(3136, 200), f(200), f(200, 10), f(10)
    h1, h2, h3 = f(B, 14, 14, 32), f(B, 14, 14, 64), f(B, 3136)
    pieces = {
        "conv 1->32 + relu + pool (shifted products)": (first_layer, (x, k1, c1)),
        "conv 32->64 alone": (conv, (h1, k2)),
        "bias + relu + pool of conv 2, 4-D out": (lambda h, c: pool(jax.nn.relu(h + c)), (h2, c2)),
        "the same, flattened to [256, 3136]": (lambda h, c: pool(jax.nn.relu(h + c)).reshape(B, -1), (h2, c2)),
        "dense 3136->200->10 + softmax": (dense, (h3, w1, b1, w2, b2)),
        "the whole CNN": (whole, (x, k1, c1, k2, c2, w1, b1, w2, b2)),
    }
    compiled = {}
    for piece, (fn, vals) in pieces.items():
        for side, (dev, opts) in devs.items():
            a = [jax.device_put(v, dev) for v in vals]
            exe = jax.jit(fn).lower(*a).compile(compiler_options=opts or None)
            exe(*a).block_until_ready()
            compiled[(piece, side)] = (exe, a)
    times = {key: [] for key in compiled}
    for _ in range(args.rounds):
        for key, (exe, a) in compiled.items():
            for _ in range(2):
                exe(*a).block_until_ready()
            t0 = time.perf_counter()
            for _ in range(10):
                exe(*a).block_until_ready()
            times[key].append((time.perf_counter() - t0) / 10 * 1e3)
    print(f"load average {os.getloadavg()[0]:.2f}; median ms over {args.rounds} rounds of 10 calls")
    print(f"| piece | JAX 0.12 | {name} | ratio (same round) |")
    print("|---|---|---|---|")
    for piece in pieces:
        j, p = times[(piece, "jax")], times[(piece, name)]
        ratio = statistics.median([b / a for a, b in zip(j, p)])
        print(f"| {piece} | {statistics.median(j):.2f} | {statistics.median(p):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
