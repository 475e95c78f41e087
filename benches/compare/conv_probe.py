"""Convolution and pooling formulations on JAX 0.12's CPU backend and on
the CPU plugin builds xlayer can use, all in one process, interleaved.

Each PJRT plugin is registered as an extra JAX platform
(`jax._src.xla_bridge.register_plugin`), so the same jitted program runs on
jaxlib's own XLA and on each plugin's XLA, timed round by round. This is
how docs/benchmarks.md ("Convolutions on the pinned plugin") chose which
convolutions xlayer emits as shifted products and which pools as
reshape + sum.

    python conv_probe.py --plugin cpu=PATH [--plugin cpu-lammps=PATH] [--rounds 10]

PATH: `cargo run -p xla-build -- path cpu` (or cpu-lammps, cpu-zml).
Prints, per case, the median ms on each platform and each formulation.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import xla_bridge


def conv(x, k, pad):
    return lax.conv_general_dilated(x, k, (1, 1), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def shifted(x, k, pad):
    """The convolution as Σ over taps and input features of slice * k[tap, c]."""
    n, h, w, c = x.shape
    kh, kw = k.shape[:2]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            for f in range(c):
                t = xp[:, i:i + oh, j:j + ow, f:f + 1] * k[i, j, f, :]
                out = t if out is None else out + t
    return out


def pool_rw(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def pool_rs(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).sum(axis=(2, 4)) / 4.0


def pool_sl(x):
    return (x[:, 0::2, 0::2, :] + x[:, 0::2, 1::2, :] + x[:, 1::2, 0::2, :] + x[:, 1::2, 1::2, :]) / 4.0


# name: (batch, size, input features, kernel size, output features)
CONVS = {"1x3x3->32 b32": (32, 28, 1, 3, 32), "1x3x3->32 b256": (256, 28, 1, 3, 32),
         "3x3x3->32 b32": (32, 28, 3, 3, 32), "3x3x3->32 b256": (256, 28, 3, 3, 32),
         "1x5x5->32 b32": (32, 28, 1, 5, 32), "4x3x3->64 b32": (32, 32, 4, 3, 64),
         "8x3x3->64 b32": (32, 32, 8, 3, 64)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", action="append", default=[], help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    names = []
    for spec in args.plugin:
        name, path = spec.split("=", 1)
        name = name.replace("-", "_")
        xla_bridge.register_plugin(name, library_path=path)
        names.append(name)
    jax.config.update("jax_platforms", ",".join(["cpu"] + names))
    devs = {"jax": jax.devices("cpu")[0], **{n: jax.devices(n)[0] for n in names}}
    rng = np.random.default_rng(0)

    def run(label, variants, host_args, rounds):
        compiled = {}
        for dn, d in devs.items():
            a = jax.device_put(host_args, d)
            for vn, f in variants.items():
                compiled[(dn, vn)] = (jax.jit(f).lower(*a).compile(), a)
        for c, a in compiled.values():
            jax.block_until_ready(c(*a))
        ts = {k: [] for k in compiled}
        for _ in range(rounds):
            for k, (c, a) in compiled.items():
                s = time.perf_counter()
                jax.block_until_ready(c(*a))
                ts[k].append((time.perf_counter() - s) * 1e3)
        cells = [f"{dn} {vn} {statistics.median(t):.2f}" for (dn, vn), t in ts.items()]
        print(f"{label}: " + "  ".join(cells), flush=True)

    for label, (b, s, c, k, o) in CONVS.items():
        pad = k // 2
        host = (rng.standard_normal((b, s, s, c), np.float32), rng.standard_normal((k, k, c, o), np.float32),
                rng.standard_normal((o,), np.float32))
        run(f"conv {label} +bias+relu", {
            "conv": lambda x, w, bb, pad=pad: jax.nn.relu(conv(x, w, pad) + bb),
            "shifted": lambda x, w, bb, pad=pad: jax.nn.relu(shifted(x, w, pad) + bb),
        }, host, args.rounds * (1 if b == 256 else 3))
    for b in (32, 256):
        host = (rng.standard_normal((b, 28, 28, 32), np.float32),)
        run(f"2x2 avg pool f32[{b},28,28,32]", {"reduce_window": pool_rw, "reshape_sum": pool_rs, "slices": pool_sl},
            host, args.rounds * (1 if b == 256 else 3))
        host = (rng.standard_normal((b, 28, 28, 1), np.float32), rng.standard_normal((3, 3, 1, 32), np.float32),
                rng.standard_normal((32,), np.float32))
        run(f"conv 1x3x3->32 + relu + 2x2 avg pool b{b}", {
            "conv+reduce_window": lambda x, w, bb: pool_rw(jax.nn.relu(conv(x, w, 1) + bb)),
            "shifted+reduce_window": lambda x, w, bb: pool_rw(jax.nn.relu(shifted(x, w, 1) + bb)),
            "shifted+reshape_sum": lambda x, w, bb: pool_rs(jax.nn.relu(shifted(x, w, 1) + bb)),
            "shifted+slices": lambda x, w, bb: pool_sl(jax.nn.relu(shifted(x, w, 1) + bb)),
        }, host, args.rounds * (1 if b == 256 else 3))


if __name__ == "__main__":
    main()
