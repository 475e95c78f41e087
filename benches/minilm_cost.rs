//! Measures the cost model of MiniLM's length-aware batching
//! (`xlayer::models::batching::CostModel`): the time of one execution of
//! the encoder for a grid of `batch × seq` shapes, and the least-squares
//! fit (relative error) of `per_call + per_token × t + per_token_pos × t ×
//! seq`, `t = batch × seq`.
//!
//! ```text
//! cargo bench --bench minilm_cost
//! ```
//! Prints a table of measured vs modelled times and the fitted constants,
//! to paste into `CostModel::MINILM_CPU` when the plugin or the machine
//! changes (docs/benchmarks.md, MiniLM).

use std::time::Instant;

use anyhow::Result;
use xlayer::models::batching::CostModel;
use xlayer::models::minilm::MiniLm;
use xlayer::Client;

const BATCHES: [usize; 4] = [1, 3, 8, 24];
const SEQS: [usize; 5] = [8, 16, 32, 64, 144];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Solves the 3 × 3 system `a x = b` (Gaussian elimination, partial pivoting).
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> [f64; 3] {
    for c in 0..3 {
        let p = (c..3)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..3 {
            let f = a[r][c] / a[c][c];
            let pivot = a[c];
            for (x, p) in a[r].iter_mut().zip(pivot).skip(c) {
                *x -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = [0f64; 3];
    for c in (0..3).rev() {
        let s: f64 = (c + 1..3).map(|k| a[c][k] * x[k]).sum();
        x[c] = (b[c] - s) / a[c][c];
    }
    x
}

fn main() -> Result<()> {
    let client = Client::cpu()?;
    let model = MiniLm::load(&client)?;
    let mut rows = Vec::new();
    for &b in &BATCHES {
        for &s in &SEQS {
            let ids = vec![1000i32; b * s];
            let mask = vec![1f32; b * s];
            model.program(b, s)?;
            for _ in 0..2 {
                model.run_bucket(b, s, &ids, &mask)?;
            }
            let mut times = Vec::new();
            let start = Instant::now();
            while times.len() < 5 || (start.elapsed().as_secs_f64() < 1.0 && times.len() < 100) {
                let t = Instant::now();
                model.run_bucket(b, s, &ids, &mask)?;
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let t = median(times);
            eprintln!("{b:>3} x {s:>3}: {:>9.1} µs", t);
            rows.push((b, s, t));
        }
    }
    // Minimise sum(((f(b, s) - t) / t)^2) over the three coefficients.
    let mut ata = [[0f64; 3]; 3];
    let mut atb = [0f64; 3];
    for &(b, s, t) in &rows {
        let tok = (b * s) as f64;
        let x = [1.0 / t, tok / t, tok * s as f64 / t];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += x[i] * x[j];
            }
            atb[i] += x[i];
        }
    }
    let [per_call_us, per_token_us, per_token_pos_us] = solve3(ata, atb);
    let fit = CostModel {
        per_call_us,
        per_token_us,
        per_token_pos_us,
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| batch x seq | measured ms | fitted ms | built-in model ms |");
    println!("|---|---|---|---|");
    for &(b, s, t) in &rows {
        println!(
            "| {b} x {s} | {:.2} | {:.2} | {:.2} |",
            t / 1e3,
            fit.cost(b, s) / 1e3,
            CostModel::MINILM_CPU.cost(b, s) / 1e3
        );
    }
    println!("{fit:?}");
    Ok(())
}
