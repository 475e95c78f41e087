//! `jax.random`: the threefry2x32 PRNG over builder [`Value`]s, with JAX's
//! keys and bits bit for bit and its samples computed by JAX's algorithms.
//!
//! A key is a `u32[2]` [`Value`] holding JAX's raw (legacy `PRNGKey`) key
//! data. Every sampler here computes exactly what `jax.random` computes with
//! its default PRNG implementation, `threefry2x32`, and JAX's default
//! `jax_threefry_partitionable=True` (the default since JAX 0.5; checked
//! against JAX 0.10.2): random bits for element `i` (row-major) of a sample of
//! shape `dims` are `threefry2x32(key, (hi(i), lo(i)))` for the 64-bit counter
//! `i`, so a sample does not depend on how it is laid out across devices.
//! `split` uses the same counters; `fold_in` hashes the pair `(0, data)`.
//!
//! The algorithms follow `jax/_src/random/threefry2x32.py` and
//! `jax/_src/random/core.py`: `uniform` fills the mantissa of a float in
//! `[1, 2)` with random bits and subtracts 1; `normal` is
//! `sqrt(2) * erf_inv(u)` for `u` uniform in `(-1, 1)` (no Box–Muller);
//! `truncated_normal` inverts the CDF between `erf(lower/√2)` and
//! `erf(upper/√2)`; `bernoulli` is `uniform < p` (JAX's `mode="low"`);
//! `randint` draws twice as many bits as the dtype and reduces them modulo
//! the span.
//!
//! As in JAX, degenerate ranges are not errors: `randint` with
//! `maxval <= minval` returns `minval`, `uniform` with `maxval <= minval`
//! returns `minval`. Misuse (a key that is not `u32[2]`, a dtype a sampler
//! cannot produce) is an [`Error::Op`](crate::Error::Op) naming the function
//! (`random.uniform`, ...) and the shapes.
//!
//! **What matches JAX, and constant keys.** JAX takes its key as a run-time
//! operand (on CPU its threefry is even a rolled loop), so its samples are
//! computed by compiled code, where XLA's CPU backend fuses
//! `floats * (maxval - minval) + minval` into one multiply-add. Pass the key
//! as a run-time input (a parameter, or derived from one) and `key`,
//! `split`, `fold_in`, `bits`, `randint`, `bernoulli` and `uniform` are
//! bit-exact with `jax.random` (checked for f32, f64, f16 and bf16).
//! `normal` and `truncated_normal` go through `erf_inv`, a polynomial whose
//! vectorized code the CPU plugin picks by CPU feature: against jaxlib on a
//! 784x300 f32 array, 0.4% of the elements differ, by at most 3 ulp; f16
//! samples differ by a few half ulp (measured up to 3), more near 0 (where
//! only an absolute bound holds), between CPUs that round to half precision
//! between the steps and CPUs that do not (docs/ops.md, "Tolerances").
//! With a compile-time constant key ([`key`]) on a small sample, XLA/LLVM
//! may evaluate the whole sample while compiling, rounding the product and
//! the sum separately: `uniform`/`truncated_normal` values can then differ
//! from JAX by an ulp or a few (the integer outputs, `bits`, `split`,
//! `fold_in`, `randint`, never differ).
//!
//! Host-side helpers ([`key_data`], [`threefry2x32`], [`split_data`],
//! [`fold_in_data`], [`bits_data`]) compute the same keys and bits in plain
//! Rust, for known-answer tests and for deriving keys outside a graph.
//!
//! ```
//! use xlayer::builder::{jit, random};
//! use xlayer::{Client, DType};
//! let client = Client::cpu()?;
//! let exe = jit(&client, &[], |b, _| {
//!     let key = random::key(b, 0)?;
//!     Ok(vec![random::uniform(&key, &[3], DType::F32, 0.0, 1.0)?])
//! })?;
//! let u = exe.execute(&[])?[0].to_vec::<f32>()?;
//! // jax.random.uniform(jax.random.PRNGKey(0), (3,))
//! assert_eq!(u, vec![0.947667, 0.9785799, 0.33229148]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::core::{op_err, Builder, Value};

/// The rotation constants of threefry2x32, as JAX uses them.
const ROTATIONS: [[u32; 4]; 2] = [[13, 15, 26, 6], [17, 29, 16, 24]];
/// The key-schedule parity constant of threefry.
const PARITY: u32 = 0x1BD1_1BDA;

// ---------------------------------------------------------------------------
// Host side

/// The key data of `jax.random.PRNGKey(seed)`: `[seed >> 32, seed & 0xffffffff]`.
///
/// This is how JAX splits a 64-bit seed (`jax_enable_x64=True`, or a
/// `np.uint64`/`np.int64` seed). In JAX's default 32-bit mode a Python int
/// seed is first narrowed to 32 bits, so the high word is always 0: for
/// seeds below 2³² both agree; to reproduce default-mode JAX with a larger
/// seed pass `seed & 0xffff_ffff`. A negative `i64` seed `s` is `s as u64`.
///
/// ```
/// assert_eq!(xlayer::builder::random::key_data(42), [0, 42]);
/// ```
pub fn key_data(seed: u64) -> [u32; 2] {
    [(seed >> 32) as u32, seed as u32]
}

/// The threefry2x32 block cipher (20 rounds) on one counter pair: JAX's
/// `threefry2x32_p` for one element.
///
/// ```
/// use xlayer::builder::random::threefry2x32;
/// // Known-answer vector from the Random123 suite (also in JAX's tests).
/// assert_eq!(threefry2x32([0x13198a2e, 0x03707344], [0x243f6a88, 0x85a308d3]),
///            [0xc4923a9c, 0x483df7a0]);
/// ```
pub fn threefry2x32(key: [u32; 2], count: [u32; 2]) -> [u32; 2] {
    let ks = [key[0], key[1], key[0] ^ key[1] ^ PARITY];
    let mut x = [count[0].wrapping_add(ks[0]), count[1].wrapping_add(ks[1])];
    for i in 0..5usize {
        for &r in &ROTATIONS[i % 2] {
            x[0] = x[0].wrapping_add(x[1]);
            x[1] = x[1].rotate_left(r) ^ x[0];
        }
        x[0] = x[0].wrapping_add(ks[(i + 1) % 3]);
        x[1] = x[1]
            .wrapping_add(ks[(i + 2) % 3])
            .wrapping_add(i as u32 + 1);
    }
    x
}

/// The key data of `jax.random.split(key, n)` (row `i` is key `i`).
///
/// ```
/// use xlayer::builder::random::{key_data, split_data};
/// assert_eq!(split_data(key_data(0), 2)[1], [928981903, 3453687069]);
/// ```
pub fn split_data(key: [u32; 2], n: usize) -> Vec<[u32; 2]> {
    (0..n as u64)
        .map(|i| threefry2x32(key, [(i >> 32) as u32, i as u32]))
        .collect()
}

/// The key data of `jax.random.fold_in(key, data)`.
///
/// ```
/// use xlayer::builder::random::{fold_in_data, key_data, threefry2x32};
/// assert_eq!(fold_in_data(key_data(0), 5), threefry2x32(key_data(0), [0, 5]));
/// ```
pub fn fold_in_data(key: [u32; 2], data: u32) -> [u32; 2] {
    threefry2x32(key, [0, data])
}

/// `jax.random.bits(key, (n,), jnp.uint32)` on the host.
///
/// ```
/// use xlayer::builder::random::{bits_data, key_data};
/// assert_eq!(bits_data(key_data(0), 2), vec![4070199207, 4202968722]);
/// ```
pub fn bits_data(key: [u32; 2], n: usize) -> Vec<u32> {
    split_data(key, n).into_iter().map(|[a, b]| a ^ b).collect()
}

// ---------------------------------------------------------------------------
// Graph side: keys

/// `jax.random.PRNGKey(seed)` as a `u32[2]` constant (see [`key_data`] for
/// how the seed's two words are formed).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// assert_eq!(xlayer::builder::random::key(&b, 0)?.dims(), &[2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn key(b: &Builder, seed: u64) -> Result<Value> {
    b.constant(&key_data(seed), &[2])
}

/// Checks that `key` is raw threefry key data and returns its two words as scalars.
fn key_words(op: &'static str, key: &Value) -> Result<(Value, Value)> {
    if key.dtype() != DType::U32 || key.dims() != [2] {
        return Err(op_err(
            op,
            format!(
                "key must be u32[2] raw threefry key data (as from random::key), got {}",
                key.spec()
            ),
        ));
    }
    // The key goes through an optimization barrier so XLA does not evaluate
    // a constant key's whole sample in its compile-time constant folder
    // (slow for big initializers). See the module docs on constant keys.
    let key = key.optimization_barrier()?;
    let k0 = key.slice_axis(0, 0, 1)?.reshape(&[])?;
    let k1 = key.slice_axis(0, 1, 2)?.reshape(&[])?;
    Ok((k0, k1))
}

/// The 64-bit row-major counter of each element of `dims`, as `(hi, lo)`
/// `u32` arrays (JAX's `iota_2x32_shape`).
fn counters(b: &Builder, dims: &[usize]) -> Result<(Value, Value)> {
    let n = ArraySpec::new(DType::U64, dims)
        .checked_element_count()
        .ok_or_else(|| crate::Error::ShapeTooLarge {
            what: "random bits".into(),
            spec: ArraySpec::new(DType::U32, dims),
        })?;
    if n == 0 || (n as u64) - 1 <= u64::from(u32::MAX) {
        let lo = b.iota(DType::U32, &[n], 0)?.reshape(dims)?;
        let hi = b.zeros(DType::U32, dims)?;
        Ok((hi, lo))
    } else {
        let c = b.iota(DType::U64, &[n], 0)?;
        let hi = c.shift_right_logical(&c.scalar_like(32.0)?)?;
        Ok((
            hi.convert(DType::U32)?.reshape(dims)?,
            c.convert(DType::U32)?.reshape(dims)?,
        ))
    }
}

fn rotate_left(x: &Value, r: u32) -> Result<Value> {
    let b = x.builder();
    let left = x.shift_left(&b.scalar(r)?)?;
    let right = x.shift_right_logical(&b.scalar(32 - r)?)?;
    left.or(&right)
}

/// threefry2x32 over arrays: the key words are `u32[]` scalars, the counters
/// two `u32` arrays of one shape. Unrolled as JAX's default lowering.
fn threefry_values(k0: &Value, k1: &Value, x0: &Value, x1: &Value) -> Result<(Value, Value)> {
    let b = k0.builder();
    let k2 = k0.xor(k1)?.xor(&b.scalar(PARITY)?)?;
    let ks = [k0.clone(), k1.clone(), k2];
    let mut x = [x0.add(&ks[0])?, x1.add(&ks[1])?];
    for i in 0..5usize {
        for &r in &ROTATIONS[i % 2] {
            x[0] = x[0].add(&x[1])?;
            x[1] = rotate_left(&x[1], r)?.xor(&x[0])?;
        }
        x[0] = x[0].add(&ks[(i + 1) % 3])?;
        x[1] = x[1].add(&ks[(i + 2) % 3])?.add(&b.scalar(i as u32 + 1)?)?;
    }
    let [a, c] = x;
    Ok((a, c))
}

/// The two threefry output words for every element of `dims`.
fn hash_counters(op: &'static str, key: &Value, dims: &[usize]) -> Result<(Value, Value)> {
    let (k0, k1) = key_words(op, key)?;
    let (hi, lo) = counters(key.builder(), dims)?;
    threefry_values(&k0, &k1, &hi, &lo)
}

/// `jax.random.split(key, n)`: `n` new keys as `u32[n, 2]`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let keys = xlayer::builder::random::split(&xlayer::builder::random::key(&b, 0)?, 3)?;
/// assert_eq!(keys.dims(), &[3, 2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn split(key: &Value, n: usize) -> Result<Value> {
    let (a, c) = hash_counters("random.split", key, &[n])?;
    Value::concatenate(&[a.reshape(&[n, 1])?, c.reshape(&[n, 1])?], 1)
}

/// [`split`] into `n` separate `u32[2]` keys.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let [k1, k2]: [_; 2] = xlayer::builder::random::split_keys(&xlayer::builder::random::key(&b, 0)?, 2)?.try_into().unwrap();
/// assert_eq!(k2.dims(), &[2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn split_keys(key: &Value, n: usize) -> Result<Vec<Value>> {
    let keys = split(key, n)?;
    (0..n)
        .map(|i| keys.slice_axis(0, i, i + 1)?.reshape(&[2]))
        .collect()
}

/// `jax.random.fold_in(key, data)`: a new key from a key and a 32-bit integer.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::fold_in(&xlayer::builder::random::key(&b, 0)?, 7)?;
/// assert_eq!(k.dims(), &[2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn fold_in(key: &Value, data: u32) -> Result<Value> {
    let data = key.builder().scalar(data)?;
    fold_in_value(key, &data)
}

/// [`fold_in`] with run-time data: an integer scalar, converted to `u32`
/// as `jnp.asarray(data, dtype='uint32')` does (wrapping).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let step = b.scalar(3i32)?;
/// let k = xlayer::builder::random::fold_in_value(&xlayer::builder::random::key(&b, 0)?, &step)?;
/// assert_eq!(k.dims(), &[2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn fold_in_value(key: &Value, data: &Value) -> Result<Value> {
    const OP: &str = "random.fold_in";
    if data.rank() != 0 || !data.dtype().is_int() {
        return Err(op_err(
            OP,
            format!(
                "data must be an integer scalar, got {} (key {})",
                data.spec(),
                key.spec()
            ),
        ));
    }
    let (k0, k1) = key_words(OP, key)?;
    let lo = data.convert(DType::U32)?;
    let hi = lo.scalar_like(0.0)?;
    let (a, c) = threefry_values(&k0, &k1, &hi, &lo)?;
    Value::concatenate(&[a.reshape(&[1])?, c.reshape(&[1])?], 0)
}

// ---------------------------------------------------------------------------
// Graph side: samplers

/// `jax.random.bits(key, dims, dtype)`: uniform random bits as an unsigned
/// integer array (`u8`, `u16`, `u32` or `u64`).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let x = xlayer::builder::random::bits(&k, &[4], xlayer::DType::U32)?;
/// assert_eq!(x.dtype(), xlayer::DType::U32);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn bits(key: &Value, dims: &[usize], dtype: DType) -> Result<Value> {
    if !dtype.is_unsigned_int() {
        return Err(op_err(
            "random.bits",
            format!("dtype must be an unsigned integer type, got {dtype} (shape {dims:?})"),
        ));
    }
    random_bits("random.bits", key, dtype.bit_width(), dims)
}

/// JAX's `threefry_random_bits` (partitionable): `bit_width` ∈ {8, 16, 32, 64}.
fn random_bits(op: &'static str, key: &Value, bit_width: usize, dims: &[usize]) -> Result<Value> {
    let (a, c) = hash_counters(op, key, dims)?;
    match bit_width {
        64 => {
            let hi = a.convert(DType::U64)?;
            let lo = c.convert(DType::U64)?;
            hi.shift_left(&hi.scalar_like(32.0)?)?.or(&lo)
        }
        32 => a.xor(&c),
        16 => a.xor(&c)?.convert(DType::U16),
        8 => a.xor(&c)?.convert(DType::U8),
        other => Err(op_err(op, format!("no random bits of width {other}"))),
    }
}

fn check_float(op: &'static str, dtype: DType, dims: &[usize]) -> Result<()> {
    if !dtype.is_float() {
        return Err(op_err(
            op,
            format!("dtype must be a float type, got {dtype} (shape {dims:?})"),
        ));
    }
    Ok(())
}

/// The unsigned integer type of a width.
fn uint_of_width(bits: usize) -> DType {
    match bits {
        8 => DType::U8,
        16 => DType::U16,
        32 => DType::U32,
        _ => DType::U64,
    }
}

/// (total bits, explicit mantissa bits) of a float dtype.
fn float_layout(dtype: DType) -> (usize, usize) {
    match dtype {
        DType::F16 => (16, 10),
        DType::BF16 => (16, 7),
        DType::F32 => (32, 23),
        _ => (64, 52),
    }
}

/// The bit pattern of 1.0 in a float dtype.
fn one_bits(dtype: DType) -> u64 {
    match dtype {
        DType::F16 => 0x3c00,
        DType::BF16 => 0x3f80,
        DType::F32 => 0x3f80_0000,
        _ => 0x3ff0_0000_0000_0000,
    }
}

/// JAX's `_uniform` with scalar bounds already of `dtype`.
fn uniform_between(
    op: &'static str,
    key: &Value,
    dims: &[usize],
    dtype: DType,
    minval: &Value,
    maxval: &Value,
) -> Result<Value> {
    let (nbits, nmant) = float_layout(dtype);
    let rng_bits = if nmant < 8 { 8 } else { nbits };
    let uint = uint_of_width(nbits);
    let bits = random_bits(op, key, rng_bits, dims)?.convert(uint)?;
    let shift = bits.scalar_like((rng_bits - nmant) as f64)?;
    let one = key.builder().full(one_bits(dtype) as f64, uint, &[])?;
    let float_bits = bits.shift_right_logical(&shift)?.or(&one)?;
    let floats = float_bits.bitcast_convert(dtype)?;
    // The barrier keeps XLA from folding `(u - 1) * 1 + lo` into
    // `u + (lo - 1)`, which the pinned plugin's simplifier does (rounding
    // differently from JAX on every element for bounds such as (-0.3, 0.7)).
    let floats = floats
        .sub(&floats.scalar_like(1.0)?)?
        .optimization_barrier()?;
    let scaled = floats.mul(&maxval.sub(minval)?)?.add(minval)?;
    minval.maximum(&scaled)
}

/// `jax.random.uniform(key, dims, dtype, minval, maxval)`: floats in
/// `[minval, maxval)` (bounds rounded to `dtype` first).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let u = xlayer::builder::random::uniform(&k, &[2, 3], xlayer::DType::BF16, -1.0, 1.0)?;
/// assert_eq!(u.dims(), &[2, 3]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn uniform(
    key: &Value,
    dims: &[usize],
    dtype: DType,
    minval: f64,
    maxval: f64,
) -> Result<Value> {
    const OP: &str = "random.uniform";
    check_float(OP, dtype, dims)?;
    let b = key.builder();
    let lo = b.full(minval, dtype, &[])?;
    let hi = b.full(maxval, dtype, &[])?;
    uniform_between(OP, key, dims, dtype, &lo, &hi)
}

/// The largest value of `dtype` below -1.0's successor toward 0: `nextafter(-1, 0)`.
fn minus_one_successor(dtype: DType) -> f64 {
    let (_, nmant) = float_layout(dtype);
    // Just above -1.0 the spacing is 2^-(nmant + 1).
    -1.0 + (0.5f64).powi(nmant as i32 + 1)
}

/// `jax.random.normal(key, dims, dtype)`: standard normal samples, computed
/// as JAX does, `sqrt(2) * erf_inv(u)` with `u` uniform in `[nextafter(-1, 0), 1)`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let z = xlayer::builder::random::normal(&k, &[5], xlayer::DType::F32)?;
/// assert_eq!(z.dims(), &[5]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn normal(key: &Value, dims: &[usize], dtype: DType) -> Result<Value> {
    const OP: &str = "random.normal";
    check_float(OP, dtype, dims)?;
    let b = key.builder();
    let lo = b.full(minus_one_successor(dtype), dtype, &[])?;
    let hi = b.full(1.0, dtype, &[])?;
    let u = uniform_between(OP, key, dims, dtype, &lo, &hi)?;
    let sqrt2 = b.full(std::f64::consts::SQRT_2, dtype, &[])?;
    sqrt2.mul(&u.erf_inv()?)
}

/// `value` rounded to `dtype`, as an `f64` (exact for every float dtype).
fn round_to(value: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::from_f64(value).to_f64(),
        DType::BF16 => half::bf16::from_f64(value).to_f64(),
        DType::F32 => f64::from(value as f32),
        _ => value,
    }
}

/// `nextafter(value, ±inf)` in `dtype` (`value` already representable), as an `f64`.
fn next_after(value: f64, dtype: DType, up: bool) -> f64 {
    if value.is_nan() {
        return value;
    }
    match dtype {
        DType::F16 => {
            let bits = half::f16::from_f64(value).to_bits().into();
            half::f16::from_bits(step_bits(bits, 15, 0x7c00, up) as u16).to_f64()
        }
        DType::BF16 => {
            let bits = half::bf16::from_f64(value).to_bits().into();
            half::bf16::from_bits(step_bits(bits, 15, 0x7f80, up) as u16).to_f64()
        }
        DType::F32 => {
            let bits = (value as f32).to_bits().into();
            f64::from(f32::from_bits(step_bits(bits, 31, 0x7f80_0000, up) as u32))
        }
        _ => f64::from_bits(step_bits(value.to_bits(), 63, 0x7ff0_0000_0000_0000, up)),
    }
}

/// The bits of the neighbouring float of a (non-NaN) float's bits, as C's
/// `nextafter` toward +inf (`up`) or -inf; `sign` is the sign bit's
/// position, `inf` the bits of +inf.
fn step_bits(bits: u64, sign: u32, inf: u64, up: bool) -> u64 {
    let sign_mask = 1u64 << sign;
    let magnitude = bits & !sign_mask;
    let negative = bits & sign_mask != 0;
    if magnitude == 0 {
        // ±0 → the smallest subnormal in the direction of travel.
        return if up { 1 } else { sign_mask | 1 };
    }
    let outward = up != negative;
    if magnitude == inf && outward {
        return bits;
    }
    if outward {
        bits + 1
    } else {
        bits - 1
    }
}

/// `jax.random.truncated_normal(key, lower, upper, dims, dtype)`: standard
/// normal samples conditioned on `lower < x < upper`, by CDF inversion, then
/// clipped into the open interval.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let z = xlayer::builder::random::truncated_normal(&k, -2.0, 2.0, &[5], xlayer::DType::F32)?;
/// assert_eq!(z.dims(), &[5]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn truncated_normal(
    key: &Value,
    lower: f64,
    upper: f64,
    dims: &[usize],
    dtype: DType,
) -> Result<Value> {
    const OP: &str = "random.truncated_normal";
    check_float(OP, dtype, dims)?;
    let b = key.builder();
    let sqrt2 = b.full(std::f64::consts::SQRT_2, dtype, &[])?;
    let lo = b.full(lower, dtype, &[])?;
    let hi = b.full(upper, dtype, &[])?;
    let a = lo.div(&sqrt2)?.erf()?;
    let c = hi.div(&sqrt2)?.erf()?;
    let u = uniform_between(OP, key, dims, dtype, &a, &c)?;
    let out = sqrt2.mul(&u.erf_inv()?)?;
    let floor = b.full(next_after(round_to(lower, dtype), dtype, true), dtype, &[])?;
    let ceil = b.full(next_after(round_to(upper, dtype), dtype, false), dtype, &[])?;
    floor.maximum(&out)?.minimum(&ceil)
}

/// `jax.random.bernoulli(key, p, dims)` with a Python-float `p` in JAX's
/// default 32-bit mode: `uniform(key, dims, f32) < p`, as `bool`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let m = xlayer::builder::random::bernoulli(&k, 0.3, &[8])?;
/// assert_eq!(m.dtype(), xlayer::DType::Bool);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn bernoulli(key: &Value, p: f64, dims: &[usize]) -> Result<Value> {
    let p = key.builder().full(p, DType::F32, &[])?;
    bernoulli_p(key, &p, dims)
}

/// `jax.random.bernoulli(key, p, dims)` with an array `p` (any float dtype,
/// broadcastable to `dims`): the uniform is drawn in `p`'s dtype, as in JAX.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let p = b.constant(&[0.1f32, 0.9], &[2])?;
/// let m = xlayer::builder::random::bernoulli_p(&k, &p, &[3, 2])?;
/// assert_eq!(m.dims(), &[3, 2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn bernoulli_p(key: &Value, p: &Value, dims: &[usize]) -> Result<Value> {
    const OP: &str = "random.bernoulli";
    if !p.dtype().is_float() {
        return Err(op_err(
            OP,
            format!("probability p must be a float array, got {}", p.spec()),
        ));
    }
    if super::broadcast_shapes(dims, p.dims()).ok().as_deref() != Some(dims) {
        return Err(op_err(
            OP,
            format!(
                "p {} does not broadcast to the sample shape {dims:?}",
                p.spec()
            ),
        ));
    }
    let b = key.builder();
    let lo = b.full(0.0, p.dtype(), &[])?;
    let hi = b.full(1.0, p.dtype(), &[])?;
    let u = uniform_between(OP, key, dims, p.dtype(), &lo, &hi)?;
    u.lt(&p.broadcast_to(dims)?)
}

/// The (min, max) of an integer dtype, as `i128`.
fn int_range(dtype: DType) -> (i128, i128) {
    let bits = dtype.bit_width() as u32;
    if dtype.is_signed_int() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

/// `jax.random.randint(key, dims, minval, maxval, dtype)`: integers in
/// `[minval, maxval)` by JAX's two-draw modulus algorithm (8- and 16-bit
/// types are sampled in `i32`, bounds are clipped to the dtype's range, and
/// `maxval <= minval` gives `minval`).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let k = xlayer::builder::random::key(&b, 0)?;
/// let x = xlayer::builder::random::randint(&k, &[4], 0, 10, xlayer::DType::I32)?;
/// assert_eq!(x.dtype(), xlayer::DType::I32);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn randint(
    key: &Value,
    dims: &[usize],
    minval: i64,
    maxval: i64,
    dtype: DType,
) -> Result<Value> {
    const OP: &str = "random.randint";
    if !dtype.is_int() {
        return Err(op_err(
            OP,
            format!("dtype must be an integer type, got {dtype} (shape {dims:?})"),
        ));
    }
    key_words(OP, key)?;
    let (mut lo, mut hi) = (i128::from(minval), i128::from(maxval));
    let sampling = if dtype.bit_width() < 32 {
        // JAX converts the bounds to int32 and clips them to the dtype
        // (maxval up to max + 1), then samples in int32.
        if i32::try_from(minval).is_err() || i32::try_from(maxval).is_err() {
            return Err(op_err(
                OP,
                format!(
                    "bounds [{minval}, {maxval}) must fit in i32 for dtype {dtype} (JAX converts them to int32)"
                ),
            ));
        }
        let (dmin, dmax) = int_range(dtype);
        lo = lo.clamp(dmin, dmax);
        hi = hi.clamp(dmin, dmax + 1);
        DType::I32
    } else {
        dtype
    };
    let (smin, smax) = int_range(sampling);
    let out_of_range = hi > smax;
    let lo = lo.clamp(smin, smax);
    let hi = hi.clamp(smin, smax);
    let nbits = sampling.bit_width();
    let modulus = 1i128 << nbits;
    let mut span = (hi - lo).rem_euclid(modulus);
    if hi <= lo {
        span = 1;
    }
    if out_of_range && hi > lo {
        span = (span + 1) % modulus;
    }

    let b = key.builder();
    let uint = uint_of_width(nbits);
    let keys = split_keys(key, 2)?;
    let high_bits = random_bits(OP, &keys[0], nbits, dims)?;
    let low_bits = random_bits(OP, &keys[1], nbits, dims)?;
    // A run-time span, as in JAX: XLA's compile-time evaluator must not see
    // `x % 0` (a full-range span wraps to 0; XLA defines `x % 0 = x` at run
    // time, but folding it on the host traps with SIGFPE).
    let span = int_scalar(b, span, uint)?.optimization_barrier()?;
    // (a * b) % n = ((a % n) * (b % n)) % n, with 2^nbits % span as
    // (2^(nbits/2) % span)^2 % span, in wrapping unsigned arithmetic.
    let multiplier = int_scalar(b, 1i128 << (nbits / 2), uint)?.rem(&span)?;
    let multiplier = multiplier.mul(&multiplier)?.rem(&span)?;
    let offset = high_bits
        .rem(&span)?
        .mul(&multiplier)?
        .add(&low_bits.rem(&span)?)?
        .rem(&span)?;
    int_scalar(b, lo, sampling)?
        .add(&offset.convert(sampling)?)?
        .convert(dtype)
}

/// An integer scalar constant of `dtype`, `value` wrapped to its width.
fn int_scalar(b: &Builder, value: i128, dtype: DType) -> Result<Value> {
    let bytes = value.to_le_bytes()[..dtype.size_in_bytes()].to_vec();
    b.constant_bytes(bytes, ArraySpec::new(dtype, []))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threefry_known_answers() {
        // Random123 known-answer vectors for threefry2x32_20, as in JAX's
        // tests/random_test.py (testThreefry2x32).
        assert_eq!(threefry2x32([0, 0], [0, 0]), [0x6b200159, 0x99ba4efe]);
        assert_eq!(
            threefry2x32([u32::MAX, u32::MAX], [u32::MAX, u32::MAX]),
            [0x1cb996fc, 0xbb002be7]
        );
        assert_eq!(
            threefry2x32([0x13198a2e, 0x03707344], [0x243f6a88, 0x85a308d3]),
            [0xc4923a9c, 0x483df7a0]
        );
    }

    #[test]
    fn seeds_split_into_two_words() {
        assert_eq!(key_data(0), [0, 0]);
        assert_eq!(key_data(0x1_0000_0005), [1, 5]);
        assert_eq!(key_data(-1i64 as u64), [u32::MAX, u32::MAX]);
    }

    #[test]
    fn next_after_steps_one_ulp() {
        assert_eq!(
            next_after(-2.0, DType::F32, true),
            f64::from(-2.0f32 + 2f32.powi(-23))
        );
        assert_eq!(
            next_after(2.0, DType::F32, false),
            f64::from(2.0f32 - 2f32.powi(-23))
        );
        assert_eq!(next_after(2.0, DType::BF16, false), 2.0 - 2f64.powi(-7));
        assert_eq!(next_after(-2.0, DType::F16, true), -2.0 + 2f64.powi(-10));
        assert_eq!(next_after(0.0, DType::F64, true), f64::from_bits(1));
        assert_eq!(minus_one_successor(DType::F32), f64::from(-0.99999994f32));
    }
}
