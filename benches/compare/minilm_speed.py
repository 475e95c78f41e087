#!/usr/bin/env python3
"""MiniLM (all-MiniLM-L6-v2) speed anchor for the minilm example's --bench:
the same sentences, text -> normalized embeddings on the host (tokenization
included), one call, 2 warm-ups then N timed runs; prints one JSON object
like `minilm --bench N`.

    python minilm_speed.py jax|torch MODEL_DIR SENTENCES_FILE N [FIRST COUNT]

FIRST/COUNT pick lines of SENTENCES_FILE (default: all). `jax`: the BERT of
bert_jax.py under jax.jit over the safetensors weights (padding to the
longest, as JAX code does; needs jax, numpy, tokenizers). `torch`: transformers'
BertModel in eager mode, 2 threads, mean pooling and normalization as
sentence-transformers does (needs torch, transformers).
"""
import json
import os
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
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bert_jax  # the one JAX BERT of the benchmarks

    tok = bert_jax.tokenizer(model_dir)
    P = bert_jax.load_params(model_dir)

    def run():
        ids, mask = bert_jax.pad(bert_jax.token_ids(tok, lines))
        return np.asarray(bert_jax.embed(P, ids, mask)), ids.shape

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
