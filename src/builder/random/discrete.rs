//! The discrete samplers of `jax.random`: `bernoulli` (a uniform below
//! `p`) and `randint` (JAX's two-draw modulus).

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::super::core::{op_err, Builder, Value};
use super::keys::split_keys;
use super::threefry::key_words;
use super::uniform::{random_bits, uint_of_width, uniform_between};

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
    if super::super::broadcast_shapes(dims, p.dims())
        .ok()
        .as_deref()
        != Some(dims)
    {
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
