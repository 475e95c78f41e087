//! `jax.random.normal` and `truncated_normal`: inverse error function of
//! a uniform sample, as JAX computes them (no Box–Muller).

use crate::dtype::DType;
use crate::error::Result;

use super::super::core::Value;
use super::uniform::{check_float, float_layout, uniform_between};

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

#[cfg(test)]
mod tests {
    use super::*;

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
