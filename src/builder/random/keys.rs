//! `jax.random`'s keys in a graph: `PRNGKey`, `split` and `fold_in`.

use crate::dtype::DType;
use crate::error::Result;

use super::super::core::{op_err, Builder, Value};
use super::threefry::{hash_counters, key_data, key_words, threefry_values};

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
