//! Random bits and `jax.random.uniform`: floats made by filling the
//! mantissa of a float in `[1, 2)` with random bits, as JAX does.

use crate::dtype::DType;
use crate::error::Result;

use super::super::core::{op_err, Value};
use super::threefry::hash_counters;

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
pub(super) fn random_bits(
    op: &'static str,
    key: &Value,
    bit_width: usize,
    dims: &[usize],
) -> Result<Value> {
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

pub(super) fn check_float(op: &'static str, dtype: DType, dims: &[usize]) -> Result<()> {
    if !dtype.is_float() {
        return Err(op_err(
            op,
            format!("dtype must be a float type, got {dtype} (shape {dims:?})"),
        ));
    }
    Ok(())
}

/// The unsigned integer type of a width.
pub(super) fn uint_of_width(bits: usize) -> DType {
    match bits {
        8 => DType::U8,
        16 => DType::U16,
        32 => DType::U32,
        _ => DType::U64,
    }
}

/// (total bits, explicit mantissa bits) of a float dtype.
pub(super) fn float_layout(dtype: DType) -> (usize, usize) {
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
pub(super) fn uniform_between(
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
