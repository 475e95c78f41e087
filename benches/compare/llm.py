#!/usr/bin/env python3
"""SmolLM2-135M-Instruct Q4_1 (the pinned GGUF) on this machine, one script,
three runtimes, greedy decoding, 2 threads:

- xlayer: `target/release/examples/generate` (build it first), run on the
  128-token prompt twice in one process; the second (warm) run is reported;
- transformers on torch, eager f32 (the file dequantized), 2 threads;
- llama.cpp through llama-cpp-python (n_threads=2), when installed.

Reports prefill tokens/s (a 128-token prompt), time to first token, decode
tokens/s (batch 1, 128 new tokens, stop tokens ignored) and peak RSS of a
process that only loads the model and generates, against the GGUF size.

Usage: $LLM_VENV/bin/python benches/compare/llm.py GGUF_DIR
  ($LLM_VENV: pip install torch transformers gguf accelerate llama-cpp-python;
  GGUF_DIR: `cargo run -p xla-build -- path smollm2`)
"""
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = Path(__file__).resolve().parents[2]
NEW = 128
BASE = ("The history of computing is a story of people, machines and ideas. "
        "From the abacus to the analytical engine, from vacuum tubes to transistors, ")


def prompt_of_128(tok):
    text = BASE * 8
    ids = tok(text)["input_ids"][:128]
    assert len(ids) == 128
    return tok.decode(ids), ids


def child(fn_name, gguf_dir):
    """Runs one runtime in a fresh process, so peak RSS is its own."""
    out = subprocess.run([sys.executable, __file__, gguf_dir, fn_name],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_transformers(gguf_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    _, ids = prompt_of_128(tok)
    x = torch.tensor([ids])
    with torch.no_grad():
        model(x)  # warm-up
        t = time.perf_counter()
        model(x)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        total = time.perf_counter() - t
    n = out.shape[1] - len(ids)
    return {"ttft_s": ttft, "prefill_tok_s": 128 / ttft, "decode_tok_s": (n - 1) / (total - ttft),
            "new_tokens": n, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_llamacpp(gguf_dir):
    from llama_cpp import Llama
    llm = Llama(model_path=str(Path(gguf_dir) / GGUF), n_threads=2, n_threads_batch=2,
                n_ctx=1024, verbose=False)
    ids = llm.tokenize(BASE.encode() * 8, add_bos=False, special=True)[:128]
    llm.eval(ids)  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    ttft = time.perf_counter() - t
    t = time.perf_counter()
    n = 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        n += 1
        if n == 1:
            first = time.perf_counter() - t
        if n >= NEW:
            break
    total = time.perf_counter() - t
    return {"ttft_s": ttft, "prefill_tok_s": 128 / ttft, "decode_tok_s": (n - 1) / (total - first),
            "new_tokens": n, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_xlayer(gguf_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF)
    text, _ = prompt_of_128(tok)
    exe = ROOT / "target" / "release" / "examples" / "generate"
    env = dict(os.environ, XLAYER_SMOLLM2_DIR=gguf_dir)
    cmd = [str(exe), "--json", "--verbose", "--no-stop", "--capacity", "512",
           "--max-tokens", str(NEW), text, text]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    # The process's own peak (VmHWM, printed by --verbose): RUSAGE_CHILDREN
    # would also count the forked image of this Python process (with
    # transformers loaded) before it exec'ed the binary.
    rss = float(re.findall(r"memory after generating: RSS \d+ MiB, peak (\d+) MiB", out.stderr)[-1])
    lines = [l for l in out.stderr.splitlines() if "first token" in l]
    m = re.search(r"(\d+) prompt tokens, (\d+) new .*first token ([\d.]+) ms, decode ([\d.]+) tok/s",
                  lines[-1])
    n_prompt, n_new, ttft_ms, dec = int(m[1]), int(m[2]), float(m[3]), float(m[4])
    # What the resident memory is made of (generate --verbose): the client
    # alone (the plugin's floor), then with the weights loaded.
    mem = {k: float(re.search(r"memory " + k + r": RSS (\d+) MiB", out.stderr)[1])
           for k in ["with the client only", "after loading"]}
    temps = re.findall(r"program of (\d+) token\(s\), KV cache \d+: temp ([\d.]+) MiB", out.stderr)
    return {"ttft_s": ttft_ms / 1e3, "prefill_tok_s": n_prompt / (ttft_ms / 1e3),
            "decode_tok_s": dec, "new_tokens": n_new, "prompt_tokens": n_prompt, "rss_mb": rss,
            "client_only_rss_mb": mem["with the client only"],
            "after_load_rss_mb": mem["after loading"],
            "program_temp_mb": {s: float(t) for s, t in temps}}


LOAD_BEFORE = os.getloadavg()


def main():
    gguf_dir = sys.argv[1]
    if len(sys.argv) > 2:
        print(json.dumps(globals()[sys.argv[2]](gguf_dir)))
        return
    size_mb = (Path(gguf_dir) / GGUF).stat().st_size / 2**20
    results = {name: child(f"run_{name}", gguf_dir) for name in ["xlayer", "transformers", "llamacpp"]}
    print(f"GGUF file: {size_mb:.1f} MiB")
    print("| runtime | prefill tok/s (128) | time to first token | decode tok/s (128 new) | peak RSS | RSS / file |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | not run: {r['error']} | | | | |")
            continue
        print(f"| {name} | {r['prefill_tok_s']:.0f} | {r['ttft_s'] * 1e3:.0f} ms | {r['decode_tok_s']:.1f} "
              f"| {r['rss_mb']:.0f} MiB | {r['rss_mb'] / size_mb:.2f}x |")
    x = results["xlayer"]
    for other in ["transformers", "llamacpp"]:
        r = results[other]
        if "error" not in r and "error" not in x:
            print(f"xlayer / {other}: decode {x['decode_tok_s'] / r['decode_tok_s']:.2f}x, "
                  f"prefill {x['prefill_tok_s'] / r['prefill_tok_s']:.2f}x")
    if "error" not in x:
        print(f"xlayer memory: client alone {x['client_only_rss_mb']:.0f} MiB, with the weights "
              f"{x['after_load_rss_mb']:.0f} MiB, program temporaries {x['program_temp_mb']} MiB")
    print(f"load average before/after: {LOAD_BEFORE} / {os.getloadavg()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
