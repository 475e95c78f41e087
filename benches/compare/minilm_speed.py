#!/usr/bin/env python3
"""MiniLM (all-MiniLM-L6-v2) speed anchor for the minilm example's --bench:
the same sentences, text -> normalized embeddings on the host (tokenization
included), one call, 2 warm-ups then N timed runs; prints one JSON object
like `minilm --bench N`.

    python minilm_speed.py jax|torch MODEL_DIR SENTENCES_FILE N [FIRST COUNT]

FIRST/COUNT pick lines of SENTENCES_FILE (default: all). `jax`: a BERT
under jax.jit over the safetensors weights (padding to the longest, as
JAX code does; needs jax, numpy, tokenizers). `torch`: transformers'
BertModel in eager mode, 2 threads, mean pooling and normalization as
sentence-transformers does (needs torch, transformers).
"""
import json
import statistics
import sys
import time

system, model_dir, path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l.strip()]
if len(sys.argv) > 6:
    first, count = int(sys.argv[5]), int(sys.argv[6])
    lines = lines[first:first + count]

if system == "jax":
    import jax
    import jax.numpy as jnp
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(256)
    P = {k: jnp.asarray(v) for k, v in load_file(f"{model_dir}/model.safetensors").items()
         if v.dtype == np.float32}
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

    def run():
        encs = tok.encode_batch(lines)
        s = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), s), np.int32)
        mask = np.zeros((len(encs), s), np.float32)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)] = e.ids
            mask[r, :len(e.ids)] = 1
        return np.asarray(embed(P, ids, mask)), (len(encs), s)

    label = f"JAX {jax.__version__} jax.jit"
elif system == "torch":
    import torch
    from transformers import BertModel, PreTrainedTokenizerFast

    torch.set_num_threads(2)
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
    model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()

    def run():
        with torch.inference_mode():
            f = tok(lines, padding=True, truncation=True, max_length=256, return_tensors="pt")
            x = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).last_hidden_state
            m = f["attention_mask"].unsqueeze(-1).to(x.dtype)
            mean = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out = torch.nn.functional.normalize(mean, p=2, dim=1)
            return out.numpy(), tuple(f["input_ids"].shape)

    label = f"PyTorch {torch.__version__} eager"
else:
    sys.exit(f"unknown system {system!r} (jax or torch)")

for _ in range(2):
    _, padded = run()
runs = []
for _ in range(n):
    t = time.perf_counter()
    run()
    runs.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"system": label, "sentences": len(lines), "median_ms": statistics.median(runs),
                  "runs_ms": runs, "padded": list(padded)}))
