//! Compiled kernels (issue #8): what the benchmark harness costs, and what a
//! compiled matmul achieves.
//!
//! `cargo bench --bench kernels` (or `benches/compare/kernels.sh`, which
//! also runs the numpy comparison and prints the ratio from the same run).
//!
//! 1. Harness overhead. A tiny program (`x + x` on f32[4]) is timed two
//!    ways in the same process, in interleaved rounds: by
//!    [`xlayer::bench::bench`] (one `Instant` per timed run, times kept in a
//!    vector), and by a bare loop of `execute` + `block_until_ready` timed
//!    as a whole. The per-run difference is the harness's own cost; the
//!    spread of the bare loop across rounds is the noise it is compared to.
//! 2. A 1024×1024×1024 f32 matmul traced with `builder::jit` and timed by
//!    the harness: GFLOP/s from XLA's cost analysis at the median time.
//!
//! Lines starting with `RESULT ` are `key=value` pairs for scripts.
//!
//! Environment: `KBENCH_ROUNDS` (default 15), `KBENCH_ITERS` (runs per round
//! of the tiny program, default 4000), `KBENCH_MM_ITERS` (timed matmul runs
//! per round, default 20), `KBENCH_MM_ROUNDS` (default 3).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use xlayer::bench::{bench, BenchOptions};
use xlayer::builder::jit;
use xlayer::{ArraySpec, Buffer, Client, Executable};

mod common;

use common::median;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run_once(exe: &Executable, args: &[&Buffer]) -> Result<()> {
    for o in exe.execute(args)? {
        o.block_until_ready()?;
    }
    Ok(())
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn harness_overhead(client: &Client) -> Result<()> {
    let rounds = env_usize("KBENCH_ROUNDS", 15).max(1);
    let iters = env_usize("KBENCH_ITERS", 4000).max(1);
    let exe = jit(client, &[ArraySpec::of::<f32>([4])], |_b, xs| {
        Ok(vec![xs[0].add(&xs[0])?])
    })?;
    let x = client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[4])?;
    let args = [&x];
    ensure!(
        exe.execute(&args)?[0].to_vec::<f32>()? == [2.0, 4.0, 6.0, 8.0],
        "x + x computed a wrong result"
    );
    for _ in 0..iters {
        run_once(&exe, &args)?;
    }

    // Per round: bare-loop mean, harness mean (from its own per-run times),
    // harness median, and the harness call's wall time per run (which also
    // pays for the cost analysis and the statistics, once per call).
    let (mut bare, mut h_mean, mut h_median, mut h_wall) = (vec![], vec![], vec![], vec![]);
    let opts = BenchOptions::new().warmup(0).iters(iters);
    for round in 0..rounds {
        // Alternate which goes first so drift does not favour one side.
        let mut do_bare = || -> Result<()> {
            let t = Instant::now();
            for _ in 0..iters {
                run_once(&exe, &args)?;
            }
            bare.push(us(t.elapsed()) / iters as f64);
            Ok(())
        };
        let mut do_harness = || -> Result<()> {
            let t = Instant::now();
            let r = bench(&exe, &args, &opts)?;
            h_wall.push(us(t.elapsed()) / iters as f64);
            h_mean.push(us(r.mean));
            h_median.push(us(r.median));
            Ok(())
        };
        if round % 2 == 0 {
            do_bare()?;
            do_harness()?;
        } else {
            do_harness()?;
            do_bare()?;
        }
    }
    // The harness's once-per-call costs: the cost analysis it reports
    // through PJRT (timed here) and sorting the times (negligible).
    let fixed_us = {
        let n = 50;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(exe.cost_analysis()?);
        }
        us(t.elapsed()) / n as f64
    };
    // The harness's per-run costs besides the run: `Instant::now()`,
    // `elapsed()` and a push into a preallocated vector.
    let timer_us = {
        let n = 100_000;
        let mut v = Vec::with_capacity(n);
        let t = Instant::now();
        for _ in 0..n {
            let s = Instant::now();
            v.push(std::hint::black_box(s).elapsed());
        }
        std::hint::black_box(&v);
        us(t.elapsed()) / n as f64
    };
    let (bare_lo, bare_hi) = min_max(&bare);
    let (hm_lo, hm_hi) = min_max(&h_mean);
    let (hw_lo, hw_hi) = min_max(&h_wall);
    let (hd_lo, hd_hi) = min_max(&h_median);
    let bare_med = median(&bare);
    let hm_med = median(&h_mean);
    let hw_med = median(&h_wall);
    // Paired per-round differences cancel slow drift between rounds.
    let diffs: Vec<f64> = h_wall.iter().zip(&bare).map(|(h, b)| h - b).collect();
    let (d_lo, d_hi) = min_max(&diffs);
    let d_med = median(&diffs);

    println!("## Harness overhead: x + x on f32[4], {rounds} rounds × {iters} runs");
    println!();
    println!("| per run (µs) | median of rounds | min | max |");
    println!("|---|---:|---:|---:|");
    println!("| bare loop (execute + block_until_ready), wall / runs | {bare_med:.3} | {bare_lo:.3} | {bare_hi:.3} |");
    println!("| harness `bench()`, wall / runs | {hw_med:.3} | {hw_lo:.3} | {hw_hi:.3} |");
    println!("| harness report: mean of timed runs | {hm_med:.3} | {hm_lo:.3} | {hm_hi:.3} |");
    println!(
        "| harness report: median of timed runs | {:.3} | {hd_lo:.3} | {hd_hi:.3} |",
        median(&h_median)
    );
    println!("| harness wall − bare, paired by round | {d_med:+.3} | {d_lo:+.3} | {d_hi:+.3} |");
    println!();
    println!(
        "once per bench() call: cost_analysis() {fixed_us:.1} µs = {:.4} µs per run at {iters} runs",
        fixed_us / iters as f64
    );
    println!("per run: Instant::now() + elapsed() + push {timer_us:.4} µs");
    println!(
        "bare-loop noise across rounds: {:.3} µs ({:.1}% of its median); harness overhead {:+.3} µs ({:+.1}%)",
        bare_hi - bare_lo,
        (bare_hi - bare_lo) / bare_med * 100.0,
        d_med,
        d_med / bare_med * 100.0
    );
    println!(
        "RESULT bare_us={bare_med:.4} harness_wall_us={hw_med:.4} harness_mean_us={hm_med:.4} overhead_us={d_med:.4} bare_noise_us={:.4} cost_analysis_us={fixed_us:.2} timer_us={timer_us:.4}",
        bare_hi - bare_lo
    );
    println!();
    Ok(())
}

fn matmul(client: &Client) -> Result<()> {
    let n = 1024usize;
    let rounds = env_usize("KBENCH_MM_ROUNDS", 3).max(1);
    let iters = env_usize("KBENCH_MM_ITERS", 20).max(1);
    let spec = ArraySpec::of::<f32>([n, n]);
    let t = Instant::now();
    let exe = jit(client, &[spec.clone(), spec], |_b, xs| {
        Ok(vec![xs[0].matmul(&xs[1])?])
    })?;
    let compile = t.elapsed();
    // Values do not change the speed; they make the result checkable:
    // a = 1, b[k][j] = j mod 7 → c[i][j] = n · (j mod 7).
    let a = client.buffer_from_host(&vec![1f32; n * n], &[n, n])?;
    let b_host: Vec<f32> = (0..n * n).map(|i| ((i % n) % 7) as f32).collect();
    let b = client.buffer_from_host(&b_host, &[n, n])?;
    let args = [&a, &b];
    let c = exe.execute(&args)?[0].to_vec::<f32>()?;
    ensure!(
        c.iter()
            .enumerate()
            .all(|(i, &v)| v == (n * ((i % n) % 7)) as f32),
        "matmul computed a wrong result"
    );

    println!(
        "## f32 matmul {n}×{n}×{n} via builder::jit (compiled in {:.0} ms), {rounds} rounds × {iters} runs",
        compile.as_secs_f64() * 1e3
    );
    println!();
    println!("| round | min (ms) | median (ms) | max (ms) | spread | flop/run | GFLOP/s (median) | GFLOP/s (min time) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut gflops, mut best) = (vec![], 0f64);
    let opts = BenchOptions::new().warmup(3).iters(iters);
    for round in 0..rounds {
        let r = bench(&exe, &args, &opts)?;
        let flops = r.flops.unwrap_or(f64::NAN);
        let g = r.gflops().unwrap_or(f64::NAN);
        let g_best = flops / r.min.as_secs_f64() / 1e9;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.1}% | {flops:.4e} | {g:.2} | {g_best:.2} |",
            round + 1,
            r.min.as_secs_f64() * 1e3,
            r.median.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            r.spread * 100.0
        );
        gflops.push(g);
        best = best.max(g_best);
    }
    let (lo, hi) = min_max(&gflops);
    let med = median(&gflops);
    println!();
    println!("xlayer matmul: median {med:.2} GFLOP/s (rounds {lo:.2} .. {hi:.2})");
    println!("fastest single run: {best:.2} GFLOP/s");
    println!("RESULT xlayer_matmul_gflops={med:.4} xlayer_matmul_gflops_min={lo:.4} xlayer_matmul_gflops_max={hi:.4} xlayer_matmul_gflops_best={best:.4}");
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let client = Client::cpu()?;
    println!(
        "# xlayer kernels: {} {} ({} devices), {} threads available",
        client.platform_name(),
        client.platform_version(),
        client.devices().len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    harness_overhead(&client)?;
    matmul(&client)?;
    Ok(())
}
