"""JAX + optax side of benches/train.rs: the same train steps under jax.jit
(batch 128, Adam, sparse CE from logits), ms per step (median of 3 epochs of
20 steps, batches transferred from host each step as xlayer does)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

BATCH, STEPS = 128, 20


def dense(p, x, i):
    return x @ p[f"w{i}"] + p[f"b{i}"]


def mlp(p, x):
    h = jnp.tanh(dense(p, x.reshape((x.shape[0], 784)), 0))
    h = jnp.tanh(dense(p, h, 1))
    return dense(p, h, 2)


def conv(x, k, b):
    return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


def pool(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def cnn(p, x):
    h = pool(jax.nn.relu(conv(x, p["k1"], p["c1"])))
    h = pool(jax.nn.relu(conv(h, p["k2"], p["c2"])))
    h = jax.nn.relu(h.reshape((h.shape[0], -1)) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def params(shapes, seed):
    rng = np.random.default_rng(seed)
    return {n: jnp.asarray((rng.normal(size=s) / np.sqrt(max(np.prod(s[:-1]), 1))).astype(np.float32)) for n, s in shapes}


n = BATCH * STEPS
x = (np.arange(n * 784) % 17).astype(np.float32).reshape(n, 28, 28, 1) / 17.0
y = (np.arange(n) % 10).astype(np.int32)
models = {
    "MLP 784-300-100-10": (mlp, params([("w0", (784, 300)), ("b0", (300,)), ("w1", (300, 100)), ("b1", (100,)), ("w2", (100, 10)), ("b2", (10,))], 0)),
    "CNN Conv32-Conv64-Dense200-Dense10": (cnn, params([("k1", (3, 3, 1, 32)), ("c1", (32,)), ("k2", (3, 3, 32, 64)), ("c2", (64,)), ("w1", (3136, 200)), ("b1", (200,)), ("w2", (200, 10)), ("b2", (10,))], 0)),
}
print(f"| jax {jax.__version__} + optax train step (Adam, batch {BATCH}) | ms per step |")
print("|---|---|")
for name, (f, p) in models.items():
    opt = optax.adam(1e-3)
    s = opt.init(p)

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(f(p, xb), yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    p, s, l = step(p, s, x[:BATCH], y[:BATCH])
    l.block_until_ready()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(STEPS):
            p, s, l = step(p, s, x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
            float(l)  # the loss comes back to the host each step, as in fit
        times.append((time.perf_counter() - t) * 1e3 / STEPS)
    print(f"| {name} | {sorted(times)[1]:.3f} |")
