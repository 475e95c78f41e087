"""JAX side of benches/layers.rs: the same MLP and CNN forward under jax.jit.

Prints median milliseconds per forward (dispatch + block_until_ready) for
batch 32 and 256, in the same table format as `cargo bench --bench layers`.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np


def mlp(p, x):
    h = x.reshape((x.shape[0], -1))
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        h = jnp.tanh(h) if i < 2 else jax.nn.softmax(h, axis=1)
    return h


def conv(x, k, b):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b


def pool(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def cnn(p, x):
    h = pool(jax.nn.relu(conv(x, p["k1"], p["c1"])))
    h = pool(jax.nn.relu(conv(h, p["k2"], p["c2"])))
    h = h.reshape((h.shape[0], -1))
    h = jax.nn.relu(h @ p["w1"] + p["b1"])
    return jax.nn.softmax(h @ p["w2"] + p["b2"], axis=1)


def params(shapes, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in shapes:
        fan_in = max(int(np.prod(dims[:-1])), 1)
        out[name] = jnp.asarray(rng.uniform(-1, 1, size=dims).astype(np.float32) / np.sqrt(fan_in))
    return out


def time_ms(f, p, x, iters):
    f(p, x).block_until_ready()
    t = []
    for _ in range(iters):
        s = time.perf_counter()
        f(p, x).block_until_ready()
        t.append((time.perf_counter() - s) * 1e3)
    return float(np.median(t))


mlp_p = params([("w0", (784, 300)), ("b0", (300,)), ("w1", (300, 100)), ("b1", (100,)), ("w2", (100, 10)), ("b2", (10,))], 1)
cnn_p = params([("k1", (3, 3, 1, 32)), ("c1", (32,)), ("k2", (3, 3, 32, 64)), ("c2", (64,)),
                ("w1", (7 * 7 * 64, 200)), ("b1", (200,)), ("w2", (200, 10)), ("b2", (10,))], 2)
fm, fc = jax.jit(mlp), jax.jit(cnn)
print(f"| jax {jax.__version__} | time |")
print("|---|---|")
for batch in (32, 256):
    x = jnp.full((batch, 28, 28, 1), 0.5, jnp.float32)
    iters = 200 if batch == 32 else 40
    print(f"| MLP 784-300-100-10 forward, batch {batch} | {time_ms(fm, mlp_p, x, iters):.3f} ms |")
    print(f"| CNN Conv32-Conv64-Dense200-Dense10 forward, batch {batch} | {time_ms(fc, cnn_p, x, iters // 4):.3f} ms |")
