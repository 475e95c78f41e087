//! `builder::random` and `builder::init` against outputs of JAX 0.10.2
//! (`tests/fixtures/random.safetensors`, written by
//! `tests/fixtures/gen_random.py`; no Python needed here).
//!
//! Every fixture is traced, compiled on the CPU plugin and compared with
//! JAX's output: bit for bit where the algorithm fixes the bits (threefry
//! keys and bits, randint, bernoulli, uniform), within the bound of
//! [`sample_tol`] for the samples that go through `erf_inv` (normal,
//! truncated_normal, the initializers); docs/ops.md has the policy and the
//! measurements. Each tensor's name describes the JAX call
//! (`fn|key=value|...`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use xlayer::builder::{init, jit, random, Builder, Value};
use xlayer::{ArraySpec, Client, DType, Error};

const FIXTURES: &[u8] = include_bytes!("fixtures/random.safetensors");

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| Client::cpu().expect("CPU client"))
}

/// One fixture: the function, its parameters, and JAX's output bytes.
struct Case {
    name: String,
    func: String,
    params: BTreeMap<String, String>,
    bytes: Vec<u8>,
}

impl Case {
    fn get(&self, k: &str) -> Result<&str> {
        self.params
            .get(k)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("{}: no parameter `{k}`", self.name))
    }
    fn f64(&self, k: &str) -> Result<f64> {
        Ok(self.get(k)?.parse()?)
    }
    fn i64(&self, k: &str) -> Result<i64> {
        Ok(self.get(k)?.parse()?)
    }
    fn u64(&self, k: &str) -> Result<u64> {
        Ok(self.get(k)?.parse()?)
    }
    fn dims(&self) -> Result<Vec<usize>> {
        let s = self.get("dims")?;
        if s.is_empty() {
            return Ok(vec![]);
        }
        s.split(',').map(|d| Ok(d.parse()?)).collect()
    }
    fn dtype(&self, k: &str) -> Result<DType> {
        let s = self.get(k)?;
        DType::ALL
            .into_iter()
            .find(|d| d.to_string() == s)
            .ok_or_else(|| anyhow!("{}: unknown dtype {s}", self.name))
    }
    fn axes(&self, k: &str) -> Result<Vec<isize>> {
        self.get(k)?.split(',').map(|d| Ok(d.parse()?)).collect()
    }
    fn key_data(&self) -> Result<[u32; 2]> {
        Ok(random::key_data(self.u64("seed")?))
    }
}

fn cases() -> Vec<Case> {
    let st = SafeTensors::deserialize(FIXTURES).expect("fixture file");
    let mut out: Vec<Case> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut parts = name.split('|');
            let func = parts.next().unwrap_or_default().to_string();
            let params = parts
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect();
            Case {
                name: name.clone(),
                func,
                params,
                bytes: view.data().to_vec(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn initializer(c: &Case) -> Result<init::Initializer> {
    Ok(match c.get("kind")? {
        "lecun_normal" => init::lecun_normal(),
        "lecun_uniform" => init::lecun_uniform(),
        "glorot_uniform" => init::glorot_uniform(),
        "glorot_normal" => init::glorot_normal(),
        "he_normal" => init::he_normal(),
        "he_uniform" => init::he_uniform(),
        "normal" => init::normal(c.f64("stddev")?),
        "uniform" => init::uniform(c.f64("scale")?),
        "truncated_normal" => {
            init::truncated_normal(c.f64("stddev")?, c.f64("lower")?, c.f64("upper")?)
        }
        "constant" => init::constant(c.f64("value")?),
        "variance_scaling" => {
            let mode = match c.get("mode")? {
                "fan_in" => init::Mode::FanIn,
                "fan_out" => init::Mode::FanOut,
                "fan_avg" => init::Mode::FanAvg,
                "fan_geo_avg" => init::Mode::FanGeoAvg,
                m => bail!("unknown mode {m}"),
            };
            let dist = match c.get("dist")? {
                "normal" => init::Distribution::Normal,
                "truncated_normal" => init::Distribution::TruncatedNormal,
                "uniform" => init::Distribution::Uniform,
                d => bail!("unknown distribution {d}"),
            };
            init::variance_scaling(
                c.f64("scale")?,
                mode,
                dist,
                &c.axes("in_axis")?,
                &c.axes("out_axis")?,
            )
        }
        k => bail!("unknown initializer {k}"),
    })
}

/// Records the op a fixture describes; `key` is the fixture's key, a
/// run-time parameter as in JAX (which takes its key as an operand).
fn build(c: &Case, b: &Builder, key: &Value) -> Result<Value> {
    Ok(match c.func.as_str() {
        "key" if c.params.contains_key("narrow") => random::key(b, c.u64("seed")? & 0xffff_ffff)?,
        "key" => random::key(b, c.u64("seed")?)?,
        "split" => random::split(key, c.u64("n")? as usize)?,
        "fold_in" => random::fold_in(key, c.u64("data")? as u32)?,
        "bits" => random::bits(key, &c.dims()?, c.dtype("dtype")?)?,
        "uniform" => random::uniform(
            key,
            &c.dims()?,
            c.dtype("dtype")?,
            c.f64("min")?,
            c.f64("max")?,
        )?,
        "normal" => random::normal(key, &c.dims()?, c.dtype("dtype")?)?,
        "truncated_normal" => random::truncated_normal(
            key,
            c.f64("lower")?,
            c.f64("upper")?,
            &c.dims()?,
            c.dtype("dtype")?,
        )?,
        "bernoulli" => {
            if c.params.contains_key("pdtype") {
                let ps: Vec<f64> = c
                    .get("p")?
                    .split(',')
                    .map(|p| p.parse())
                    .collect::<std::result::Result<_, _>>()?;
                let p = if ps.len() == 1 {
                    b.full(ps[0], c.dtype("pdtype")?, &[])?
                } else {
                    b.constant(&ps, &[ps.len()])?.convert(c.dtype("pdtype")?)?
                };
                random::bernoulli_p(key, &p, &c.dims()?)?
            } else {
                random::bernoulli(key, c.f64("p")?, &c.dims()?)?
            }
        }
        "randint" => random::randint(
            key,
            &c.dims()?,
            c.i64("min")?,
            c.i64("max")?,
            c.dtype("dtype")?,
        )?,
        "init" => initializer(c)?.init(key, &c.dims()?, c.dtype("dtype")?)?,
        f => bail!("unknown fixture function {f}"),
    })
}

/// How far an output may be from JAX's.
#[derive(Debug, Clone, Copy)]
enum Tol {
    /// Same bytes.
    Exact,
    /// Each element within `ulps` units in the last place of JAX's, or
    /// within `eps_of_max` machine epsilons of the dtype times the largest
    /// |element| of JAX's output (an absolute bound on the distribution's
    /// scale, for elements near 0 where an ulp means nothing).
    UlpsOrAbs { ulps: u64, eps_of_max: f64 },
}

/// The bound for samples that go through XLA's `erf_inv` (normal,
/// truncated_normal and every initializer: `sqrt(2) * erf_inv(u) * scale`,
/// or `u * scale` for the uniform ones) on a dtype.
///
/// Why these numbers (docs/ops.md, "Tolerances"):
/// - f32/f64: `erf_inv` is a polynomial whose vectorized and scalar code
///   paths differ by CPU and XLA build (784x300 arrays against jaxlib 0.12:
///   `erf_inv` up to 2 ulp on 0.5% of the elements, normal and
///   truncated_normal 3 ulp, he_normal and glorot_normal 4 ulp, on 0.4%);
///   the scale factor rounds once more and XLA may fold constant factors in
///   another order. 8 ulp is twice the measured spread; near 0 the absolute
///   part applies (measured at most 1.54 eps * max|x|).
/// - f16/bf16: the chain `lo + (hi - lo) * bits`, `erf_inv`, `* scale` is
///   computed in f32 and rounded once on some CPUs, with half-precision
///   roundings between the steps on others (the fixture's CPU: errors up to
///   5.2 half ulp against an f64 evaluation, against at most 1.2 on AMD
///   EPYC). Away from 0 that is a few ulp (measured at most 3: 6 allowed);
///   near 0 `lo + (hi - lo) * bits` cancels, its absolute error is about an
///   ulp of |lo| (< 1), and `erf_inv` multiplies it by ~1.25 * scale, so
///   the ulp error grows without bound (measured 20 ulp at 0.0137) while the
///   absolute error stays below eps * scale (measured at most 0.17 eps *
///   max|x|; allowed 4 eps * max|x|).
///
/// A real bug (a wrong constant such as the truncation's 0.8796 or sqrt(2),
/// fan_in for fan_out, other bits) moves elements by percents, which is
/// tens of half ulps (~10^5 f32 ulps) away from 0, and far above
/// 4 eps * max|x| (0.4% of max|x| in f16) near 0; see
/// `sample_tolerance_rejects_a_one_percent_error`.
fn sample_tol(dtype: DType) -> Tol {
    let ulps = if dtype.size_in_bytes() == 2 { 6 } else { 8 };
    Tol::UlpsOrAbs {
        ulps,
        eps_of_max: 4.0,
    }
}

/// The bound of a fixture (see [`sample_tol`] and docs/ops.md).
fn tol_of(c: &Case, dtype: DType) -> Tol {
    match c.func.as_str() {
        "normal" | "truncated_normal" | "init" if dtype.is_float() => sample_tol(dtype),
        _ => Tol::Exact,
    }
}

/// Element `i` of little-endian float bytes as (bits, value).
fn float_at(dtype: DType, b: &[u8], i: usize) -> (u64, f64) {
    let w = dtype.size_in_bytes();
    let bits = b[w * i..w * (i + 1)]
        .iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
    let value = match dtype {
        DType::F64 => f64::from_bits(bits),
        DType::F32 => f64::from(f32::from_bits(bits as u32)),
        DType::F16 => xlayer::f16::from_bits(bits as u16).to_f64(),
        DType::BF16 => xlayer::bf16::from_bits(bits as u16).to_f64(),
        other => panic!("not a float: {other}"),
    };
    (bits, value)
}

/// The machine epsilon of a float dtype.
fn epsilon(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON,
        DType::F32 => f64::from(f32::EPSILON),
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        other => panic!("not a float: {other}"),
    }
}

/// Runs one fixture; `Ok(None)` when every element is within the fixture's
/// [`tol_of`] of JAX's, else a description.
fn run(c: &Case) -> Result<Option<String>> {
    let mut dtype = None;
    let exe = jit(client(), &[ArraySpec::of::<u32>([2])], |b, key| {
        let v = build(c, b, &key[0]).map_err(|e| Error::Op {
            op: "random fixture",
            message: format!("{e:#}"),
        })?;
        dtype = Some(v.dtype());
        Ok(vec![v])
    })
    .with_context(|| c.name.clone())?;
    let key = client().buffer_from_host(&c.key_data()?, &[2])?;
    let got = exe.execute(&[&key])?[0].to_bytes()?;
    if got == c.bytes {
        return Ok(None);
    }
    let dtype = dtype.expect("traced");
    if got.len() != c.bytes.len() {
        return Ok(Some(format!(
            "{} bytes, JAX has {}",
            got.len(),
            c.bytes.len()
        )));
    }
    Ok(outside(tol_of(c, dtype), dtype, &got, &c.bytes))
}

/// `None` when `got` is within `tol` of JAX's `want` (same length), else
/// a description.
fn outside(tol: Tol, dtype: DType, got: &[u8], want: &[u8]) -> Option<String> {
    let w = dtype.size_in_bytes();
    let n = got.len() / w;
    let Tol::UlpsOrAbs { ulps, eps_of_max } = tol else {
        let differing = (0..n)
            .filter(|&i| got[w * i..w * (i + 1)] != want[w * i..w * (i + 1)])
            .count();
        return (differing > 0).then(|| format!("{differing} of {n} elements differ ({tol:?})"));
    };
    let max_abs = (0..n)
        .map(|i| float_at(dtype, want, i).1.abs())
        .fold(0.0, f64::max);
    let abs = eps_of_max * epsilon(dtype) * max_abs;
    let (mut differing, mut outside, mut max_ulp) = (0, 0, 0u64);
    for i in 0..n {
        let (gb, gv) = float_at(dtype, got, i);
        let (jb, jv) = float_at(dtype, want, i);
        if gb != jb {
            differing += 1;
            let u = ulp_distance(gb, jb, w * 8);
            max_ulp = max_ulp.max(u);
            if u > ulps && (gv - jv).abs() > abs {
                outside += 1;
            }
        }
    }
    (outside > 0).then(|| {
        format!(
            "{outside} of {n} elements outside {tol:?} (abs {abs:e}); \
             {differing} differ, max {max_ulp} ulp"
        )
    })
}

/// The number of representable floats between two bit patterns of a width.
fn ulp_distance(a: u64, b: u64, bits: usize) -> u64 {
    let sign = 1u64 << (bits - 1);
    // Map to a monotonic integer line: negative floats below positive ones.
    let line = |x: u64| -> i128 {
        if x & sign != 0 {
            -i128::from(x & !sign)
        } else {
            i128::from(x)
        }
    };
    (line(a) - line(b)).unsigned_abs() as u64
}

/// Runs every fixture whose function is in `funcs`, each within its
/// [`tol_of`].
fn check(funcs: &[&str]) -> Result<()> {
    let mut failures = vec![];
    let mut n = 0;
    for c in cases().iter().filter(|c| funcs.contains(&c.func.as_str())) {
        n += 1;
        if let Some(diff) = run(c)? {
            failures.push(format!("{}: {diff}", c.name));
        }
    }
    assert!(n > 0, "no fixtures for {funcs:?}");
    if !failures.is_empty() {
        bail!(
            "{} of {n} fixtures differ from JAX:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn every_fixture_is_checked() {
    let known = [
        "key",
        "split",
        "fold_in",
        "bits",
        "uniform",
        "normal",
        "truncated_normal",
        "bernoulli",
        "randint",
        "init",
    ];
    for c in cases() {
        assert!(
            known.contains(&c.func.as_str()),
            "unchecked fixture {}",
            c.name
        );
    }
}

#[test]
fn keys_split_fold_in_and_bits_match_jax() -> Result<()> {
    check(&["key", "split", "fold_in", "bits"])
}

#[test]
fn uniform_bernoulli_and_randint_match_jax() -> Result<()> {
    check(&["uniform", "bernoulli", "randint"])
}

/// Within [`sample_tol`]: `erf_inv` is a polynomial whose result depends on
/// the CPU's vector math, and f16/bf16 chains round differently by CPU.
#[test]
fn normal_and_truncated_normal_match_jax() -> Result<()> {
    check(&["normal", "truncated_normal"])
}

/// Within [`sample_tol`] of `jax.jit(init)`: the samples as above, and XLA's
/// algebraic simplifier may reassociate constant factors such as
/// `(sqrt(2) * erf_inv(u)) * stddev` differently between XLA versions (JAX
/// itself gives results up to 2 ulp apart eagerly and under `jit`).
#[test]
fn initializers_match_jax() -> Result<()> {
    check(&["init"])
}

/// The bounds are tight enough to catch a wrong scale: every normal-family
/// fixture, JAX's output scaled by 1% (bf16, which cannot resolve 1%: by 10
/// of its ulps, 7.8%), is rejected by the comparison the tests use.
#[test]
fn sample_tolerance_rejects_a_one_percent_error() -> Result<()> {
    let mut n = 0;
    for c in cases().iter().filter(|c| {
        matches!(c.func.as_str(), "normal" | "truncated_normal" | "init")
            && !c.params.contains_key("value")
    }) {
        let dtype = c.dtype("dtype")?;
        let factor = 1.0 + f64::max(0.01, 10.0 * epsilon(dtype));
        let w = dtype.size_in_bytes();
        let scaled: Vec<u8> = (0..c.bytes.len() / w)
            .flat_map(|i| {
                let v = float_at(dtype, &c.bytes, i).1 * factor;
                match dtype {
                    DType::F64 => v.to_le_bytes().to_vec(),
                    DType::F32 => (v as f32).to_le_bytes().to_vec(),
                    DType::F16 => xlayer::f16::from_f64(v).to_le_bytes().to_vec(),
                    _ => xlayer::bf16::from_f64(v).to_le_bytes().to_vec(),
                }
            })
            .collect();
        assert!(
            outside(tol_of(c, dtype), dtype, &scaled, &c.bytes).is_some(),
            "{}: JAX's output times {factor} passes {:?}",
            c.name,
            tol_of(c, dtype)
        );
        n += 1;
    }
    assert!(n >= 10, "only {n} sample fixtures");
    Ok(())
}

/// `uniform` is `(bits -> [1, 2)) - 1`, times `hi - lo`, plus `lo`, each
/// rounded as IEEE says (JAX's program, as jaxlib 0.12 runs it): with
/// bounds whose span is exactly 1 in f32 but whose `lo - 1` is not exact,
/// a compiler that folds `(u - 1) + lo` into `u + (lo - 1)` rounds
/// differently on most elements (the pinned plugin did, before the
/// optimization barrier in `uniform`).
#[test]
fn uniform_is_computed_as_written() -> Result<()> {
    let n = 4096;
    let exe = jit(client(), &[ArraySpec::of::<u32>([2])], |_, k| {
        Ok(vec![random::uniform(&k[0], &[n], DType::F32, -0.3, 0.7)?])
    })?;
    let key_data = random::key_data(5);
    let key = client().buffer_from_host(&key_data, &[2])?;
    let got = exe.execute(&[&key])?[0].to_vec::<f32>()?;
    let (lo, hi) = (-0.3f32, 0.7f32);
    let want: Vec<f32> = random::bits_data(key_data, n)
        .into_iter()
        .map(|b| {
            let u = f32::from_bits((b >> 9) | 0x3f80_0000) - 1.0;
            lo.max(u * (hi - lo) + lo)
        })
        .collect();
    let differing = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert_eq!(differing, 0, "{differing} of {n} elements differ");
    Ok(())
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn host_helpers_match_jax() -> Result<()> {
    for c in cases() {
        let key = random::key_data(c.u64("seed").unwrap_or(0));
        let expected = if c.bytes.len() % 4 == 0 {
            u32s(&c.bytes)
        } else {
            vec![]
        };
        match (c.func.as_str(), c.params.get("dtype").map(String::as_str)) {
            ("key", _) if c.params.contains_key("narrow") => {
                // JAX's default 32-bit mode keeps only the seed's low word.
                assert_eq!(
                    random::key_data(c.u64("seed")? & 0xffff_ffff).to_vec(),
                    expected,
                    "{}",
                    c.name
                )
            }
            ("key", _) => assert_eq!(key.to_vec(), expected, "{}", c.name),
            ("split", _) => {
                let got: Vec<u32> = random::split_data(key, c.u64("n")? as usize)
                    .into_iter()
                    .flatten()
                    .collect();
                assert_eq!(got, expected, "{}", c.name);
            }
            ("fold_in", _) => assert_eq!(
                random::fold_in_data(key, c.u64("data")? as u32).to_vec(),
                expected,
                "{}",
                c.name
            ),
            ("bits", Some("u32")) => {
                let n = c.dims()?.iter().product();
                assert_eq!(random::bits_data(key, n), expected, "{}", c.name);
            }
            _ => {}
        }
    }
    Ok(())
}
