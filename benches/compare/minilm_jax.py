#!/usr/bin/env python3
"""The JAX BERT of bert_jax.py (all-MiniLM-L6-v2, same safetensors
weights) under jax.jit on the MiniLM workload written by benches/minilm.rs: token ids (from the
shipped tokenizer, via the ids the Rust side wrote) -> normalized
embeddings on the host, padding to the longest in the batch.

    python minilm_jax.py WORKLOAD.json MODEL_DIR  ->  JSON on stdout
"""
import json
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_jax  # noqa: E402 (the one JAX BERT of the benchmarks)

work = json.load(open(sys.argv[1]))
model_dir = sys.argv[2]
P = bert_jax.load_params(model_dir)

results = {}
for case in work["cases"]:
    ids, mask = bert_jax.pad(case["ids"])
    s = ids.shape[1]

    def run():
        return np.asarray(bert_jax.embed(P, ids, mask))

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
