"""JAX side of the FlaxLayer benchmark (docs/benchmarks.md, issue #5):
jax.jit(module.apply) on the same modules and inputs as benches/flax_layer.rs.
Needs jax and flax (e.g. JAX_VENV with flax: `$JAX_VENV/bin/python jax_flax.py`)."""
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(200)(x))
        return nn.softmax(nn.Dense(10)(x))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        h = nn.MultiHeadDotProductAttention(num_heads=4)(nn.LayerNorm()(x), mask=mask)
        x = x + h
        h = nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))
        return x + h


def bench(name, module, shape):
    n = int(np.prod(shape))
    x = jnp.asarray((np.arange(n) * 7919 % 1000).astype(np.float32).reshape(shape) / 1000.0)
    variables = module.init(jax.random.PRNGKey(0), x)
    f = jax.jit(module.apply)
    for _ in range(5):
        f(variables, x).block_until_ready()
    rounds, calls = 9, 20
    means = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            f(variables, x).block_until_ready()
        means.append((time.perf_counter() - t) / calls)
    means.sort()
    print(f"jax.jit {name}: median {statistics.median(means) * 1e3:.3f} ms per call "
          f"(min {means[0] * 1e3:.3f}, max {means[-1] * 1e3:.3f})")


bench("cnn f32[32,28,28,1]", CNN(), (32, 28, 28, 1))
bench("block f32[32,64,128]", Block(), (32, 64, 128))
