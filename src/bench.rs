//! Timing compiled programs: warm-up, timed runs awaited to completion,
//! statistics, achieved throughput, and the fraction of a roofline.
//!
//! Each timed run is one [`Executable::execute`] followed by
//! [`Buffer::block_until_ready`] on every output, so a time covers dispatch
//! and the computation itself (not the host transfer of inputs, which are
//! uploaded once before timing).
//!
//! The roofline of a device is its peak compute (GFLOP/s) and memory
//! bandwidth (GB/s). Give it ([`Roofline::new`]) or measure it once
//! ([`Roofline::measure`]: a large f32 matmul and a large elementwise copy,
//! compiled through XLA on the same client), cached by
//! [`Roofline::cached_or_measure`] in `roofline.json` under
//! [`xla_build::home`], keyed by platform and device.
//!
//! ```no_run
//! use xlayer::bench::{bench, random_inputs, BenchOptions};
//! use xlayer::{Client, Program};
//! let client = Client::cpu()?;
//! let exe = client.compile(&Program::mlir_text(r#"
//! func.func public @main(%a: tensor<256x256xf32>) -> tensor<256x256xf32> {
//!   %0 = stablehlo.dot_general %a, %a, contracting_dims = [1] x [0] : (tensor<256x256xf32>, tensor<256x256xf32>) -> tensor<256x256xf32>
//!   return %0 : tensor<256x256xf32>
//! }"#)?)?;
//! let inputs = random_inputs(&client, &exe.signature().inputs, 0)?;
//! let report = bench(&exe, &inputs.iter().collect::<Vec<_>>(), &BenchOptions::new().iters(20))?;
//! println!("{report}");
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::pjrt::analysis::{CostAnalysis, CostSource};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::executable::Executable;
use crate::program::Program;

/// How to benchmark: warm-up runs, timed runs, and an optional roofline.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Untimed runs first (compilation caches, page faults, thread pools).
    pub warmup: usize,
    /// Timed runs (at least 1).
    pub iters: usize,
    /// Peak compute and bandwidth to compare against.
    pub roofline: Option<Roofline>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 3,
            iters: 20,
            roofline: None,
        }
    }
}

impl BenchOptions {
    /// 3 warm-up runs, 20 timed runs, no roofline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of warm-up runs.
    pub fn warmup(mut self, n: usize) -> Self {
        self.warmup = n;
        self
    }

    /// Sets the number of timed runs.
    pub fn iters(mut self, n: usize) -> Self {
        self.iters = n;
        self
    }

    /// Compares against this roofline.
    pub fn roofline(mut self, r: Roofline) -> Self {
        self.roofline = Some(r);
        self
    }
}

/// Where a roofline's numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RooflineSource {
    /// Given by the user.
    User,
    /// Measured by [`Roofline::measure`] (now or earlier, from the cache).
    Measured,
}

/// Peak compute and memory bandwidth of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Roofline {
    /// Peak compute, GFLOP/s.
    pub peak_gflops: f64,
    /// Peak memory bandwidth, GB/s (10⁹ bytes per second).
    pub peak_gbps: f64,
    /// Given or measured.
    pub source: RooflineSource,
}

impl Roofline {
    /// A roofline given by the user.
    ///
    /// Errors: [`Error::OutOfRange`] unless both numbers are finite and positive.
    pub fn new(peak_gflops: f64, peak_gbps: f64) -> Result<Roofline> {
        for (what, v) in [
            ("peak compute (GFLOP/s)", peak_gflops),
            ("peak bandwidth (GB/s)", peak_gbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::OutOfRange {
                    function: "Roofline::new",
                    what: what.into(),
                    value: v.to_string(),
                    expected: "a finite positive number".into(),
                });
            }
        }
        Ok(Roofline {
            peak_gflops,
            peak_gbps,
            source: RooflineSource::User,
        })
    }

    /// Measures the default device of `client`: the best of several runs of
    /// a 1024×1024×1024 f32 matmul (compute) and of an elementwise copy of
    /// 64 MiB (`negate`, bandwidth = bytes read + written per second, as
    /// the cost analysis counts them). Takes a few seconds.
    pub fn measure(client: &Client) -> Result<Roofline> {
        let n: usize = 1024;
        let mm = Program::mlir_text(format!(
            "func.func public @main(%a: tensor<{n}x{n}xf32>, %b: tensor<{n}x{n}xf32>) -> tensor<{n}x{n}xf32> {{\n  %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<{n}x{n}xf32>, tensor<{n}x{n}xf32>) -> tensor<{n}x{n}xf32>\n  return %0 : tensor<{n}x{n}xf32>\n}}"
        ))?;
        let len: usize = 16 * 1024 * 1024;
        let copy = Program::mlir_text(format!(
            "func.func public @main(%a: tensor<{len}xf32>) -> tensor<{len}xf32> {{\n  %0 = stablehlo.negate %a : tensor<{len}xf32>\n  return %0 : tensor<{len}xf32>\n}}"
        ))?;
        let opts = BenchOptions::new().warmup(2).iters(10);
        let mm_exe = client.compile(&mm)?;
        let mm_in = filled_inputs(client, &mm_exe.signature().inputs)?;
        let mm_report = bench(&mm_exe, &mm_in.iter().collect::<Vec<_>>(), &opts)?;
        let copy_exe = client.compile(&copy)?;
        let copy_in = filled_inputs(client, &copy_exe.signature().inputs)?;
        let copy_report = bench(&copy_exe, &copy_in.iter().collect::<Vec<_>>(), &opts)?;
        let secs = |d: Duration| d.as_secs_f64().max(1e-9);
        let flops = mm_report.flops.unwrap_or((2 * n * n * n) as f64);
        let bytes = copy_report.bytes_accessed.unwrap_or((2 * 4 * len) as f64);
        Ok(Roofline {
            peak_gflops: flops / secs(mm_report.min) / 1e9,
            peak_gbps: bytes / secs(copy_report.min) / 1e9,
            source: RooflineSource::Measured,
        })
    }

    /// The cached measurement for `client`'s platform and default device,
    /// or a new one (then cached). The cache is `roofline.json` in
    /// [`xla_build::home`]; delete it to measure again.
    pub fn cached_or_measure(client: &Client) -> Result<Roofline> {
        let path = Self::cache_path()?;
        let key = Self::cache_key(client);
        let mut cache = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(|v| v.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(entry) = cache.get(&key) {
            let g = entry.get("peak_gflops").and_then(|v| v.as_f64());
            let b = entry.get("peak_gbps").and_then(|v| v.as_f64());
            if let (Some(g), Some(b)) = (g, b) {
                if g > 0.0 && b > 0.0 {
                    return Ok(Roofline {
                        peak_gflops: g,
                        peak_gbps: b,
                        source: RooflineSource::Measured,
                    });
                }
            }
        }
        let r = Self::measure(client)?;
        if let Some(obj) = cache.as_object_mut() {
            obj.insert(
                key,
                serde_json::json!({ "peak_gflops": r.peak_gflops, "peak_gbps": r.peak_gbps }),
            );
        }
        let io = |source| Error::Io {
            what: "cannot write the roofline cache",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&cache).unwrap_or_default(),
        )
        .map_err(io)?;
        Ok(r)
    }

    /// The file measured rooflines are cached in.
    pub fn cache_path() -> Result<PathBuf> {
        Ok(xla_build::home()?.join("roofline.json"))
    }

    fn cache_key(client: &Client) -> String {
        let d = client.default_device();
        format!(
            "{} {} | {} | {} devices",
            client.platform_name(),
            client.platform_version(),
            d.description(),
            client.devices().len()
        )
    }
}

/// Timings and throughput of one benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The executable's name.
    pub name: String,
    /// Every timed run, in order.
    pub times: Vec<Duration>,
    /// Fastest run.
    pub min: Duration,
    /// Median run.
    pub median: Duration,
    /// Slowest run.
    pub max: Duration,
    /// Mean run.
    pub mean: Duration,
    /// `(max - min) / median`: how noisy the runs were.
    pub spread: f64,
    /// Flops per run, from the cost analysis (if reported).
    pub flops: Option<f64>,
    /// Bytes accessed per run, from the cost analysis (if reported).
    pub bytes_accessed: Option<f64>,
    /// The roofline compared against.
    pub roofline: Option<Roofline>,
    /// Who counted `flops` and `bytes_accessed`: the compiler, or xlayer
    /// from the optimized program where the plugin has no cost analysis.
    /// `None` when neither could.
    pub cost_source: Option<CostSource>,
    /// Why the plugin gave no cost analysis (it lacks
    /// `PJRT_Executable_GetCostAnalysis`, or answers `Unimplemented`):
    /// then `flops` and `bytes_accessed` are `None`, and GFLOP/s, GB/s and
    /// the roofline fraction are unknown. `None` when it gave one.
    pub cost_unavailable: Option<String>,
}

impl BenchReport {
    /// Achieved GFLOP/s at the median time.
    pub fn gflops(&self) -> Option<f64> {
        self.flops
            .map(|f| f / self.median.as_secs_f64().max(1e-12) / 1e9)
    }

    /// Achieved GB/s at the median time.
    pub fn gbps(&self) -> Option<f64> {
        self.bytes_accessed
            .map(|b| b / self.median.as_secs_f64().max(1e-12) / 1e9)
    }

    /// The roofline's time bound for one run, in seconds:
    /// `max(flops / peak compute, bytes / peak bandwidth)`.
    pub fn roofline_seconds(&self) -> Option<f64> {
        let r = self.roofline.as_ref()?;
        let compute = self.flops.map(|f| f / (r.peak_gflops * 1e9));
        let memory = self.bytes_accessed.map(|b| b / (r.peak_gbps * 1e9));
        match (compute, memory) {
            (None, None) => None,
            (c, m) => Some(c.unwrap_or(0.0).max(m.unwrap_or(0.0))),
        }
    }

    /// Fraction of the roofline reached at the median time: the roofline
    /// bound divided by the measured time (1.0 = at the roofline).
    pub fn roofline_fraction(&self) -> Option<f64> {
        Some(self.roofline_seconds()? / self.median.as_secs_f64().max(1e-12))
    }

    /// Whether the roofline says the program is bound by compute (else by
    /// memory bandwidth).
    pub fn compute_bound(&self) -> Option<bool> {
        let r = self.roofline.as_ref()?;
        let compute = self.flops? / (r.peak_gflops * 1e9);
        let memory = self.bytes_accessed.unwrap_or(0.0) / (r.peak_gbps * 1e9);
        Some(compute >= memory)
    }

    /// The report as JSON (times in seconds).
    pub fn to_json(&self) -> serde_json::Value {
        let s = |d: Duration| d.as_secs_f64();
        serde_json::json!({
            "name": self.name,
            "iters": self.times.len(),
            "min_s": s(self.min),
            "median_s": s(self.median),
            "max_s": s(self.max),
            "mean_s": s(self.mean),
            "spread": self.spread,
            "times_s": self.times.iter().map(|d| s(*d)).collect::<Vec<_>>(),
            "flops": self.flops,
            "bytes_accessed": self.bytes_accessed,
            "cost_source": self.cost_source.map(|s| match s {
                CostSource::Compiler => "compiler",
                CostSource::Counted => "counted",
            }),
            "cost_analysis_unavailable": self.cost_unavailable,
            "gflops_per_s": self.gflops(),
            "gbytes_per_s": self.gbps(),
            "roofline": self.roofline.as_ref().map(|r| serde_json::json!({
                "peak_gflops_per_s": r.peak_gflops,
                "peak_gbytes_per_s": r.peak_gbps,
                "source": match r.source { RooflineSource::User => "user", RooflineSource::Measured => "measured" },
                "bound_s": self.roofline_seconds(),
                "fraction": self.roofline_fraction(),
                "compute_bound": self.compute_bound(),
            })),
        })
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} runs", self.name, self.times.len())?;
        writeln!(
            f,
            "  time     min {}  median {}  max {}  spread {:.1}%",
            fmt_duration(self.min),
            fmt_duration(self.median),
            fmt_duration(self.max),
            self.spread * 100.0
        )?;
        if let (Some(fl), Some(g)) = (self.flops, self.gflops()) {
            let by = match self.cost_source {
                Some(CostSource::Counted) => {
                    "  (flops and bytes counted by xlayer: the plugin has no cost analysis)"
                }
                _ => "",
            };
            writeln!(f, "  compute  {fl:.4e} flop/run  {g:.3} GFLOP/s{by}")?;
        }
        if let (Some(b), Some(g)) = (self.bytes_accessed, self.gbps()) {
            writeln!(f, "  memory   {b:.4e} B/run  {g:.3} GB/s")?;
        }
        if let Some(why) = &self.cost_unavailable {
            writeln!(
                f,
                "  compute  unknown: the plugin gives no cost analysis ({why}); GFLOP/s and GB/s unknown"
            )?;
            if self.roofline.is_some() {
                writeln!(f, "  roofline unknown (no flop or byte counts to compare)")?;
            }
        }
        if let (Some(r), Some(frac)) = (&self.roofline, self.roofline_fraction()) {
            let src = match r.source {
                RooflineSource::User => "given",
                RooflineSource::Measured => "measured",
            };
            let bound = match self.compute_bound() {
                Some(true) => "compute-bound",
                _ => "memory-bound",
            };
            writeln!(
                f,
                "  roofline {:.1}% of {src} peak ({:.2} GFLOP/s, {:.2} GB/s; {bound})",
                frac * 100.0,
                r.peak_gflops,
                r.peak_gbps
            )?;
        }
        Ok(())
    }
}

/// Runs `exe` on `args` `options.warmup` times untimed, then
/// `options.iters` times timed, each awaited to completion.
///
/// Errors: [`Error::OutOfRange`] if `iters` is 0; the argument checks of
/// [`Executable::execute`] (done before anything runs); errors of the runs.
pub fn bench(exe: &Executable, args: &[&Buffer], options: &BenchOptions) -> Result<BenchReport> {
    if options.iters == 0 {
        return Err(Error::OutOfRange {
            function: "bench",
            what: "iters (timed runs)".into(),
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    let run = || -> Result<()> {
        let outputs = exe.execute(args)?;
        for o in &outputs {
            o.block_until_ready()?;
        }
        Ok(())
    };
    for _ in 0..options.warmup {
        run()?;
    }
    let mut times = Vec::with_capacity(options.iters);
    for _ in 0..options.iters {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed());
    }
    let mut sorted = times.clone();
    sorted.sort();
    let min = sorted[0];
    let max = sorted[sorted.len() - 1];
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2
    };
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    let spread = (max - min).as_secs_f64() / median.as_secs_f64().max(1e-12);
    let (flops, bytes_accessed, cost_source, cost_unavailable) = costs(exe.cost_analysis())?;
    Ok(BenchReport {
        name: exe.name().to_string(),
        times,
        min,
        median,
        max,
        mean,
        spread,
        flops,
        bytes_accessed,
        roofline: options.roofline.clone(),
        cost_source,
        cost_unavailable,
    })
}

/// Flops, bytes, who counted them and why they are missing, from a cost
/// analysis: a plugin without one whose optimized program xlayer cannot
/// count either leaves the counts unknown; any other error is returned.
type Costs = (Option<f64>, Option<f64>, Option<CostSource>, Option<String>);

fn costs(c: Result<CostAnalysis>) -> Result<Costs> {
    match c {
        Ok(c) => Ok((c.flops(), c.bytes_accessed(), Some(c.source), None)),
        Err(e) if e.is_unimplemented() => Ok((None, None, None, Some(e.to_string()))),
        Err(e) => Err(e),
    }
}

/// f32 arrays filled with 0.5 (the measured programs' inputs: the values
/// do not change their speed, and filling is much faster than sampling).
fn filled_inputs(client: &Client, specs: &[ArraySpec]) -> Result<Vec<Buffer>> {
    check_host_memory("input", specs, available_memory())?;
    specs
        .iter()
        .map(|spec| {
            let data = vec![0.5f32; spec.element_count()];
            client.buffer_from_host(&data, &spec.dims)
        })
        .collect()
}

/// Bytes of host memory available now (`MemAvailable` of
/// `/proc/meminfo`), or `None` where that is not known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Checks, before anything is allocated, that arrays of `specs` can be
/// made on the host: each type must exist ([`ArraySpec::check_size`]), and
/// the host copy plus the device copy (host memory too on CPU) of all of
/// them together must fit in `limit` bytes when a limit is known.
///
/// Errors: [`Error::ShapeTooLarge`], or [`Error::HostMemory`] naming the
/// first array past the limit (`what` and its index).
pub fn check_host_memory(what: &str, specs: &[ArraySpec], limit: Option<u64>) -> Result<()> {
    let mut total: u64 = 0;
    for (i, spec) in specs.iter().enumerate() {
        let bytes = spec.check_size(|| format!("{what} {i}"))? as u64;
        total = total.saturating_add(bytes.saturating_mul(2));
        if let Some(limit) = limit {
            if total > limit {
                return Err(Error::HostMemory {
                    what: format!("{what} {i}"),
                    spec: spec.clone(),
                    bytes: total,
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// Random device arrays of the given types on `client`'s default device,
/// reproducible from `seed`: floats uniform in [-1, 1), integers in
/// [0, 16), booleans fair.
///
/// Errors: [`Error::ShapeTooLarge`] or [`Error::HostMemory`] (see
/// [`check_host_memory`]) before anything is allocated.
pub fn random_inputs(client: &Client, specs: &[ArraySpec], seed: u64) -> Result<Vec<Buffer>> {
    check_host_memory("random input", specs, available_memory())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    specs
        .iter()
        .map(|spec| {
            let n = spec.element_count();
            let mut bytes = Vec::with_capacity(spec.size_in_bytes());
            for _ in 0..n {
                let x: f64 = rng.random_range(-1.0..1.0);
                let i: u8 = rng.random_range(0..16);
                match spec.dtype {
                    DType::Bool => bytes.push(u8::from(rng.random::<bool>())),
                    DType::I8 | DType::U8 => bytes.push(i),
                    DType::I16 | DType::U16 => bytes.extend(u16::from(i).to_le_bytes()),
                    DType::I32 | DType::U32 => bytes.extend(u32::from(i).to_le_bytes()),
                    DType::I64 | DType::U64 => bytes.extend(u64::from(i).to_le_bytes()),
                    DType::F16 => bytes.extend(half::f16::from_f64(x).to_le_bytes()),
                    DType::BF16 => bytes.extend(half::bf16::from_f64(x).to_le_bytes()),
                    DType::F32 => bytes.extend((x as f32).to_le_bytes()),
                    DType::F64 => bytes.extend(x.to_le_bytes()),
                }
            }
            client.buffer_from_bytes(&bytes, spec, client.default_device())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn report(
        ms: &[u64],
        flops: Option<f64>,
        bytes: Option<f64>,
        roofline: Option<Roofline>,
    ) -> BenchReport {
        let times: Vec<Duration> = ms.iter().map(|&m| Duration::from_millis(m)).collect();
        let mut sorted = times.clone();
        sorted.sort();
        BenchReport {
            name: "t".into(),
            min: sorted[0],
            median: sorted[sorted.len() / 2],
            max: *sorted.last().unwrap(),
            mean: sorted.iter().sum::<Duration>() / sorted.len() as u32,
            spread: 0.0,
            times,
            flops,
            bytes_accessed: bytes,
            roofline,
            cost_source: flops.map(|_| CostSource::Compiler),
            cost_unavailable: None,
        }
    }

    #[test]
    fn a_plugin_without_cost_analysis_still_times() {
        // What jaxlib 0.11.2's CPU plugin (`cpu-lammps`) answers, when
        // xlayer cannot count the optimized program either.
        let missing = Err(Error::Pjrt {
            function: "PJRT_Executable_GetCostAnalysis",
            code: ErrorCode::Unimplemented,
            message: "not implemented".into(),
        });
        let (flops, bytes, source, why) = costs(missing).unwrap();
        assert_eq!((flops, bytes, source), (None, None, None));
        let why = why.unwrap();
        assert!(why.contains("PJRT_Executable_GetCostAnalysis"), "{why}");
        let mut r = report(
            &[10, 12, 11],
            None,
            None,
            Some(Roofline::new(40.0, 20.0).unwrap()),
        );
        r.cost_unavailable = Some(why);
        assert_eq!(
            (r.gflops(), r.gbps(), r.roofline_fraction()),
            (None, None, None)
        );
        let text = r.to_string();
        assert!(text.contains("median 11.000 ms"), "{text}");
        assert!(
            text.contains("GFLOP/s and GB/s unknown") && text.contains("roofline unknown"),
            "{text}"
        );
        let j = r.to_json();
        assert!(
            j["cost_analysis_unavailable"]
                .as_str()
                .unwrap()
                .contains("Unimplemented"),
            "{j}"
        );
        assert!(j["gflops_per_s"].is_null());
        // Other plugin errors are not hidden.
        let other = Err(Error::Pjrt {
            function: "PJRT_Executable_GetCostAnalysis",
            code: ErrorCode::Internal,
            message: "boom".into(),
        });
        assert!(matches!(
            costs(other),
            Err(Error::Pjrt {
                code: ErrorCode::Internal,
                ..
            })
        ));
    }

    #[test]
    fn throughput_and_roofline_fraction() {
        // 1 GFLOP and 1 GB in 100 ms: 10 GFLOP/s and 10 GB/s.
        let r = report(
            &[100, 90, 120],
            Some(1e9),
            Some(1e9),
            Some(Roofline::new(40.0, 20.0).unwrap()),
        );
        assert!((r.gflops().unwrap() - 10.0).abs() < 1e-9);
        assert!((r.gbps().unwrap() - 10.0).abs() < 1e-9);
        // bound = max(1e9/40e9, 1e9/20e9) = 0.05 s; fraction 0.05/0.1
        assert!((r.roofline_fraction().unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(r.compute_bound(), Some(false));
        assert!(r.to_string().contains("50.0% of given peak"), "{r}");
    }

    #[test]
    fn host_memory_is_checked_before_allocating() {
        let big = ArraySpec::of::<f32>([100_000_000_000]);
        let e = check_host_memory("random input", std::slice::from_ref(&big), Some(1 << 30))
            .unwrap_err();
        assert!(
            matches!(e, Error::HostMemory { ref spec, bytes: 800_000_000_000, limit, .. } if *spec == big && limit == 1 << 30),
            "{e:?}"
        );
        assert!(e.to_string().contains("random input 0"), "{e}");
        let small = ArraySpec::of::<f32>([256]);
        check_host_memory("input", &[small.clone(), small.clone()], Some(4096)).unwrap();
        let e = check_host_memory("input", &[small.clone(), small], Some(4095)).unwrap_err();
        assert!(e.to_string().contains("input 1"), "{e}");
        let e = check_host_memory("x", &[ArraySpec::of::<u8>([usize::MAX])], None).unwrap_err();
        assert!(matches!(e, Error::ShapeTooLarge { .. }), "{e:?}");
    }

    #[test]
    fn rejects_bad_roofline() {
        assert!(Roofline::new(0.0, 1.0).is_err());
        assert!(Roofline::new(1.0, f64::NAN).is_err());
    }
}
