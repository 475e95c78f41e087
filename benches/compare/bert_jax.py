#!/usr/bin/env python3
"""The JAX side of the MiniLM benchmarks, written once: all-MiniLM-L6-v2
(BERT, 6 layers, 12 heads) under jax.jit over the model's own safetensors
weights, with the shipped tokenizer, mean pooling and L2 normalization as
sentence-transformers does. Imported by minilm_jax.py, minilm_speed.py and
suite_jax.py; needs jax, numpy and (for `tokenizer`) tokenizers.

    import bert_jax
    P = bert_jax.load_params(model_dir)
    ids, mask = bert_jax.pad(bert_jax.token_ids(bert_jax.tokenizer(model_dir), texts))
    emb = np.asarray(bert_jax.embed(P, ids, mask))
"""
import json
import struct

import jax
import jax.numpy as jnp
import numpy as np

LAYERS, HEADS, EPS = 6, 12, 1e-12
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def load_params(model_dir):
    """The model's f32 tensors (by their PyTorch names) as device arrays."""
    raw = open(f"{model_dir}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    params = {}
    for name, v in header.items():
        if name != "__metadata__" and v["dtype"] == "F32":
            a, b = v["data_offsets"]
            data = np.frombuffer(raw[8 + n + a:8 + n + b], np.float32).reshape(v["shape"])
            params[name] = jnp.asarray(data)
    return params


def tokenizer(model_dir):
    """The shipped tokenizer.json, without padding, truncating at 256."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    return tok


def token_ids(tok, texts):
    """Each text's token ids, [CLS] and [SEP] included."""
    return [e.ids for e in tok.encode_batch(texts)]


def pad(ids_list):
    """Token id lists padded to the longest: (ids int32, mask float32)."""
    s = max(len(i) for i in ids_list)
    ids = np.zeros((len(ids_list), s), np.int32)
    mask = np.zeros((len(ids_list), s), np.float32)
    for r, i in enumerate(ids_list):
        ids[r, :len(i)] = i
        mask[r, :len(i)] = 1
    return ids, mask


def _ln(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + EPS) * g + b


@jax.jit
def embed(P, ids, mask):
    """Unit-length sentence embeddings of a padded batch (b x 384)."""
    def dense(x, name):
        return x @ P[name + ".weight"].T + P[name + ".bias"]

    b, s = ids.shape
    x = P["embeddings.word_embeddings.weight"][ids]
    x = x + P["embeddings.position_embeddings.weight"][:s] + P["embeddings.token_type_embeddings.weight"][0]
    x = _ln(x, P["embeddings.LayerNorm.weight"], P["embeddings.LayerNorm.bias"])
    bias = (1.0 - mask)[:, None, None, :] * jnp.finfo(jnp.float32).min
    dh = x.shape[-1] // HEADS
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."
        q, k, v = (dense(x, p + "attention.self." + t).reshape(b, s, HEADS, dh)
                   for t in ("query", "key", "value"))
        sc = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(sc, -1), v).reshape(b, s, -1)
        x = _ln(dense(ctx, p + "attention.output.dense") + x,
                P[p + "attention.output.LayerNorm.weight"], P[p + "attention.output.LayerNorm.bias"])
        h = jax.nn.gelu(dense(x, p + "intermediate.dense"), approximate=False)
        x = _ln(dense(h, p + "output.dense") + x, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"])
    m = mask[:, :, None]
    mean = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
