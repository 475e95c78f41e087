//! SmolLM2 prefill (issue #15): time to first token of a 128-token prompt
//! (the prompt of `benches/compare/llm.py`: its text repeated, cut to 128
//! tokens), through [`Llm::generate`] with one new token, so one execution
//! of the 128-token prefill program over a 256-token KV cache (the program
//! `generate --capacity 512 --max-tokens 128` uses) plus the request's
//! cache allocation and the host transfers.
//!
//! ```text
//! cargo bench --bench llm_prefill
//! ```
//! Prints the load average before and after, and the median, fastest and
//! slowest time to first token of the timed runs (after two warm-up runs;
//! the first one compiles the program or loads it from the compilation
//! cache) and the prefill tokens/s at the median. Anchor it against
//! llama.cpp's prefill in the same window with `benches/compare/llm.py`
//! (docs/benchmarks.md, SmolLM2).

use std::time::Instant;

use anyhow::{ensure, Result};
use xlayer::models::llm::{GenerateOptions, Llm};
use xlayer::Client;

const BASE: &str = "The history of computing is a story of people, machines and ideas. \
                    From the abacus to the analytical engine, from vacuum tubes to transistors, ";
const PROMPT_TOKENS: usize = 128;
const RUNS: usize = 15;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<()> {
    let before = load();
    let client = Client::cpu()?;
    let llm = Llm::load(&client)?;
    let mut ids = llm.encode(&BASE.repeat(8))?;
    ensure!(
        ids.len() >= PROMPT_TOKENS,
        "the prompt has {} tokens",
        ids.len()
    );
    ids.truncate(PROMPT_TOKENS);
    let opts = GenerateOptions {
        stop: Some(vec![]),
        ..GenerateOptions::new(1)
    };
    let t = Instant::now();
    let first = llm.generate(&ids, &opts, |_, _| {})?;
    eprintln!(
        "first run (compile or cache load): {:.2?}, token {:?}",
        t.elapsed(),
        first.ids
    );
    llm.generate(&ids, &opts, |_, _| {})?;
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let g = llm.generate(&ids, &opts, |_, _| {})?;
        ensure!(g.ids == first.ids, "the runs disagree: {:?}", g.ids);
        ms.push(g.first_token.as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let med = ms[ms.len() / 2];
    println!("load average before: {before}, after: {}", load());
    println!(
        "prefill of {PROMPT_TOKENS} tokens: time to first token median {med:.1} ms \
         (fastest {:.1}, slowest {:.1}; {RUNS} runs): {:.0} tok/s",
        ms[0],
        ms[ms.len() - 1],
        PROMPT_TOKENS as f64 / (med / 1e3)
    );
    Ok(())
}
