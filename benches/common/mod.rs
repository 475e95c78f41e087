//! Helpers shared by the benchmarks (`mod common;`): the benchmarks' CNN
//! convolution, and the interleaved timing loop (each bench uses part).
#![allow(dead_code)]

use std::time::Instant;

use xlayer::builder::{ConvAttrs, ConvDims, Value};

/// A 3×3 NHWC convolution, stride 1, padding 1 ("same"), plus bias `b`:
/// the conv of the benchmarks' Flax-style CNN.
pub fn conv(x: &Value, k: &Value, b: &Value) -> xlayer::Result<Value> {
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    x.conv_general(k, &attrs)? + b
}

/// Mean time of one call of `f` over `calls` calls, in nanoseconds.
pub fn mean_ns(calls: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Seconds one call of `f` takes (its errors end the benchmark).
pub fn seconds<E: std::fmt::Debug>(mut f: impl FnMut() -> Result<(), E>) -> f64 {
    let start = Instant::now();
    f().expect("a timed run failed");
    start.elapsed().as_secs_f64()
}

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The smallest and largest of `v`.
pub fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Measures `cases` interleaved: `rounds` rounds, each running every case
/// once in order (a case returns its own measurement, e.g. a
/// [`mean_ns`]), so that a burst of load from a neighbour on a shared
/// machine spoils a round of every case rather than one case. Returns each
/// case's measurements, one per round; compare cases by the median of
/// their per-round ratios.
pub fn interleaved(rounds: usize, cases: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (case, times) in cases.iter_mut().zip(&mut out) {
            times.push(case());
        }
    }
    out
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`), or `?`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
