#!/usr/bin/env python3
"""A JAX BERT (all-MiniLM-L6-v2, same safetensors weights) under jax.jit on
the MiniLM workload written by benches/minilm.rs: token ids (from the
shipped tokenizer, via the ids the Rust side wrote) -> normalized
embeddings on the host, padding to the longest in the batch.

    python minilm_jax.py WORKLOAD.json MODEL_DIR  ->  JSON on stdout
"""
import json
import statistics
import struct
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

work = json.load(open(sys.argv[1]))
model_dir = sys.argv[2]


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "I64": np.int64}[v["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt).reshape(v["shape"])
    return out


w = load_safetensors(f"{model_dir}/model.safetensors")
P = {k: jnp.asarray(v) for k, v in w.items() if v.dtype == np.float32}
LAYERS, HEADS, EPS = 6, 12, 1e-12


def ln(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + EPS) * g + b


@jax.jit
def embed(P, ids, mask):
    def dense(x, name):
        return x @ P[name + ".weight"].T + P[name + ".bias"]

    b, s = ids.shape
    x = P["embeddings.word_embeddings.weight"][ids]
    x = x + P["embeddings.position_embeddings.weight"][:s] + P["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"])
    bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(jnp.float32).min
    dh = x.shape[-1] // HEADS
    for l in range(LAYERS):
        p = f"encoder.layer.{l}."
        heads = lambda t: t.reshape(b, s, HEADS, dh)
        q = heads(dense(x, p + "attention.self.query"))
        k = heads(dense(x, p + "attention.self.key"))
        v = heads(dense(x, p + "attention.self.value"))
        sc = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(sc, -1), v).reshape(b, s, -1)
        x = ln(dense(ctx, p + "attention.output.dense") + x,
               P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"])
        h = jax.nn.gelu(dense(x, p + "intermediate.dense"), approximate=False)
        x = ln(dense(h, p + "output.dense") + x, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"])
    m = mask[:, :, None]
    mean = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


params = dict(P)
results = {}
for case in work["cases"]:
    ids_list = case["ids"]
    s = max(len(i) for i in ids_list)
    ids = np.zeros((len(ids_list), s), np.int32)
    mask = np.zeros((len(ids_list), s), np.float32)
    for r, i in enumerate(ids_list):
        ids[r, :len(i)] = i
        mask[r, :len(i)] = 1

    def run():
        return np.asarray(embed(params, ids, mask))

    for _ in range(3):
        run()
    times = []
    deadline = time.perf_counter() + work["seconds"]
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    results[case["name"]] = {"median_s": statistics.median(times), "n": len(times), "padded_len": s}
print(json.dumps({"system": f"JAX {jax.__version__} jax.jit", "results": results}))
