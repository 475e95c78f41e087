//! The threefry2x32 hash of `jax.random`: on the host (known-answer
//! tests, keys derived outside a graph) and over builder arrays (every
//! sampler's bits), with JAX's 64-bit row-major counters.

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::super::core::{op_err, Builder, Value};

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
// Graph side

/// Checks that `key` is raw threefry key data and returns its two words as scalars.
pub(super) fn key_words(op: &'static str, key: &Value) -> Result<(Value, Value)> {
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
pub(super) fn threefry_values(
    k0: &Value,
    k1: &Value,
    x0: &Value,
    x1: &Value,
) -> Result<(Value, Value)> {
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
pub(super) fn hash_counters(
    op: &'static str,
    key: &Value,
    dims: &[usize],
) -> Result<(Value, Value)> {
    let (k0, k1) = key_words(op, key)?;
    let (hi, lo) = counters(key.builder(), dims)?;
    threefry_values(&k0, &k1, &hi, &lo)
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
}
