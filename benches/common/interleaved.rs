//! Interleaved timing: several calls measured in rounds (A, B, ... then
//! again), so that drift and a neighbour's bursts of load hit all of them
//! alike; a ratio is taken per round and its median reported.

use std::time::Instant;

/// Mean ns per call of `f` over `calls` calls.
pub fn mean_ns(calls: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        f();
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// The median of `v` (the upper one for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `(min, max)` of `v`.
pub fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// The 1-minute load average (`/proc/loadavg`), for the record.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Per-round mean ns per call of each of `calls_of`, over `rounds` rounds
/// of `calls` calls each: `result[k][r]` is call `k` in round `r`.
pub fn rounds(rounds: usize, calls: u32, calls_of: &mut [&mut dyn FnMut()]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::with_capacity(rounds); calls_of.len()];
    for _ in 0..rounds {
        for (k, f) in calls_of.iter_mut().enumerate() {
            out[k].push(mean_ns(calls, f));
        }
    }
    out
}

/// Per-round ratios `num[r] / (scale * den[r])`.
pub fn ratios(num: &[f64], den: &[f64], scale: f64) -> Vec<f64> {
    num.iter().zip(den).map(|(n, d)| n / (scale * d)).collect()
}

/// One line: `label  median us  [min .. max]`.
pub fn line_us(label: &str, v: &[f64]) -> String {
    let (lo, hi) = spread(v);
    format!(
        "  {label:<28} {:8.3} us  [{:.3} .. {:.3}]",
        median(v) / 1e3,
        lo / 1e3,
        hi / 1e3
    )
}

/// One line: `label  median ratio  [min .. max]  note`.
pub fn line_ratio(label: &str, v: &[f64], note: &str) -> String {
    let (lo, hi) = spread(v);
    format!(
        "  {label:<28} {:8.3}     [{:.3} .. {:.3}]  {note}",
        median(v),
        lo,
        hi
    )
}
