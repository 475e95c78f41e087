"""JAX side of the speed suite (issue #14): the same entries as
benches/suite.rs, as JAX 0.12 + flax + optax run them.

Imported by suite.py (which interleaves these with xlayer's runs); each
entry is a zero-argument callable that performs one timed call and returns
its time in ms (per step for the train entries). `lowered_text(name)` gives
JAX's own StableHLO of a forward entry (`jax.jit(f).lower(...).as_text()`),
which suite.py can hand to xlayer to run on each plugin.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

TRAIN_BATCH, TRAIN_STEPS = 128, 10
MLP_SIZES = (784, 512, 512, 10)


def _input(shape):
    n = int(np.prod(shape))
    return jnp.asarray((np.arange(n) * 7919 % 1000).astype(np.float32).reshape(shape) / 1000.0)


def _params(shapes, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in shapes:
        fan_in = max(int(np.prod(dims[:-1])), 1)
        out[name] = jnp.asarray(rng.uniform(-1, 1, size=dims).astype(np.float32) / np.sqrt(fan_in))
    return out


def _mlp_shapes():
    s = []
    for i in range(3):
        s += [(f"w{i}", (MLP_SIZES[i], MLP_SIZES[i + 1])), (f"b{i}", (MLP_SIZES[i + 1],))]
    return s


CNN_SHAPES = [("k1", (3, 3, 1, 32)), ("c1", (32,)), ("k2", (3, 3, 32, 64)), ("c2", (64,)),
              ("w1", (7 * 7 * 64, 200)), ("b1", (200,)), ("w2", (200, 10)), ("b2", (10,))]


def mlp_logits(p, x):
    h = x.reshape((x.shape[0], -1))
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        if i < 2:
            h = jax.nn.relu(h)
    return h


def cnn_logits(p, x):
    def conv(x, k, b):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    def pool(x):
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0

    h = pool(jax.nn.relu(conv(x, p["k1"], p["c1"])))
    h = pool(jax.nn.relu(conv(h, p["k2"], p["c2"])))
    h = jax.nn.relu(h.reshape((h.shape[0], -1)) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


class Block(nn.Module):
    """Pre-LayerNorm block, as benches/suite.rs's FlaxLayer block."""

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        h = nn.MultiHeadDotProductAttention(num_heads=12)(nn.LayerNorm()(x), mask=mask)
        x = x + h
        h = nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))
        return x + h


def _forward(f, *args):
    jf = jax.jit(f)
    jf(*args).block_until_ready()
    jf(*args).block_until_ready()

    def call():
        s = time.perf_counter()
        jf(*args).block_until_ready()
        return (time.perf_counter() - s) * 1e3

    return call, (jf, args)


def _train(logits, shapes):
    p = _params(shapes, 0)
    opt = optax.adam(1e-3)
    s = opt.init(p)
    n = TRAIN_BATCH * TRAIN_STEPS
    x = (np.arange(n * 784) % 17).astype(np.float32).reshape(n, 28, 28, 1) / 17.0
    y = (np.arange(n) % 10).astype(np.int32)

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, xb), yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state = [p, s]

    def epoch():
        t = time.perf_counter()
        for i in range(TRAIN_STEPS):
            b = slice(i * TRAIN_BATCH, (i + 1) * TRAIN_BATCH)
            state[0], state[1], loss = step(state[0], state[1], x[b], y[b])
            float(loss)  # the loss comes back each step, as in xlayer's fit
        return (time.perf_counter() - t) * 1e3 / TRAIN_STEPS

    epoch()
    return epoch, None


def build(name):
    """(call, (jitted, args) or None) of the entry `name`."""
    if name == "mlp_b256":
        p = _params(_mlp_shapes(), 1)
        return _forward(lambda p, x: jax.nn.softmax(mlp_logits(p, x), axis=1), p, _input((256, 784)))
    if name in ("cnn_b32", "cnn_b256"):
        b = 32 if name == "cnn_b32" else 256
        p = _params(CNN_SHAPES, 2)
        return _forward(lambda p, x: jax.nn.softmax(cnn_logits(p, x), axis=1), p, _input((b, 28, 28, 1)))
    if name == "block_b8x128x768":
        x = _input((8, 128, 768))
        m = Block()
        v = m.init(jax.random.PRNGKey(0), x)
        return _forward(m.apply, v, x)
    if name == "matmul_1024":
        return _forward(jnp.matmul, _input((1024, 1024)), _input((1024, 1024)))
    if name == "train_mlp":
        return _train(mlp_logits, _mlp_shapes())
    if name == "train_cnn":
        return _train(cnn_logits, CNN_SHAPES)
    raise KeyError(name)


def lowered_text(jitted_args):
    jf, args = jitted_args
    return jf.lower(*args).as_text()


def compiled_text(jitted_args):
    jf, args = jitted_args
    return jf.lower(*args).compile().as_text()


def minilm(model_dir, sentences):
    """One call of all-MiniLM-L6-v2 under jax.jit on `sentences`, as the
    minilm example's `--bench` times it: tokenize (the shipped
    tokenizer.json, truncated at 256), pad to the longest in the batch,
    embed, mean-pool, normalize, back on the host. Returns the call (ms)."""
    import bert_jax  # the one JAX BERT of the benchmarks (this folder)

    tok = bert_jax.tokenizer(model_dir)
    P = bert_jax.load_params(model_dir)

    def call():
        t = time.perf_counter()
        ids, mask = bert_jax.pad(bert_jax.token_ids(tok, sentences))
        np.asarray(bert_jax.embed(P, ids, mask))
        return (time.perf_counter() - t) * 1e3

    call()
    call()
    return call
