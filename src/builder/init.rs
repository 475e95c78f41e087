//! `jax.nn.initializers` (as Flax re-exports them): the same algorithm and
//! random bits as JAX, values within a few ulp (the `erf_inv` of the normal
//! ones is CPU vector math; tolerances in docs/ops.md, "Tolerances").
//!
//! An [`Initializer`] is a small configuration value; [`Initializer::init`]
//! turns `(key, dims, dtype)` into a [`Value`] exactly as the JAX
//! initializer does, using [`super::random`]. Constants are rounded to the
//! parameter dtype where JAX rounds them (`jnp.array(stddev, dtype)`), and
//! the scale arithmetic (`sqrt(variance) / 0.8796...`) happens in that dtype.
//!
//! Fans follow `_compute_fans`: with `in_axis`/`out_axis`/`batch_axis`
//! (negative counts from the end; Flax kernels are `(in, out)`, so the
//! defaults are `-2` and `-1`), the remaining axes are the receptive field,
//! `fan_in = in_size * receptive`, `fan_out = out_size * receptive`.
//!
//! ```
//! use xlayer::builder::{init, jit, random};
//! use xlayer::{Client, DType};
//! let client = Client::cpu()?;
//! let exe = jit(&client, &[], |b, _| {
//!     let key = random::key(b, 0)?;
//!     Ok(vec![init::lecun_normal().init(&key, &[4, 3], DType::F32)?])
//! })?;
//! assert_eq!(exe.execute(&[])?[0].dims(), &[4, 3]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use crate::dtype::DType;
use crate::error::Result;

use super::core::{op_err, Value};
use super::random;

/// How variance scaling counts the units of a weight (its "fan").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The number of inputs.
    FanIn,
    /// The number of outputs.
    FanOut,
    /// `(fan_in + fan_out) / 2`.
    FanAvg,
    /// `sqrt(fan_in * fan_out)`.
    FanGeoAvg,
}

/// The distribution variance scaling samples from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Normal truncated to ±2 standard deviations, rescaled by
    /// `1 / 0.87962566103423978` so the result has the target variance.
    TruncatedNormal,
    /// Normal.
    Normal,
    /// Uniform in `[-sqrt(3 v), sqrt(3 v))`.
    Uniform,
}

/// The settings of `jax.nn.initializers.variance_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub struct VarianceScaling {
    /// The variance is `scale / fan`.
    pub scale: f64,
    /// Which fan.
    pub mode: Mode,
    /// Which distribution.
    pub distribution: Distribution,
    /// The input axes (negative counts from the end).
    pub in_axis: Vec<isize>,
    /// The output axes.
    pub out_axis: Vec<isize>,
    /// Axes left out of the fans entirely.
    pub batch_axis: Vec<isize>,
}

/// A JAX/Flax initializer: `(key, dims, dtype) -> array`.
#[derive(Debug, Clone, PartialEq)]
pub enum Initializer {
    /// All zeros (the key is ignored).
    Zeros,
    /// All ones (the key is ignored).
    Ones,
    /// A constant (the key is ignored).
    Constant(f64),
    /// `normal(key) * stddev`.
    Normal {
        /// Standard deviation.
        stddev: f64,
    },
    /// `uniform(key) * scale`: values in `[0, scale)`.
    Uniform {
        /// Upper bound.
        scale: f64,
    },
    /// `truncated_normal(key, lower, upper) * stddev` (no variance correction).
    TruncatedNormal {
        /// Standard deviation before truncation.
        stddev: f64,
        /// Lower bound, in standard deviations.
        lower: f64,
        /// Upper bound, in standard deviations.
        upper: f64,
    },
    /// Variance scaling.
    VarianceScaling(VarianceScaling),
}

/// `jax.nn.initializers.zeros`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::zeros().init(&xlayer::builder::random::key(&b, 0)?, &[2], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn zeros() -> Initializer {
    Initializer::Zeros
}

/// `jax.nn.initializers.ones`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::ones().init(&xlayer::builder::random::key(&b, 0)?, &[2], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn ones() -> Initializer {
    Initializer::Ones
}

/// `jax.nn.initializers.constant(value)`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::constant(-7.0).init(&xlayer::builder::random::key(&b, 0)?, &[2], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn constant(value: f64) -> Initializer {
    Initializer::Constant(value)
}

/// `jax.nn.initializers.normal(stddev)` (Flax's default `stddev` is `1e-2`).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::normal(1e-2).init(&xlayer::builder::random::key(&b, 0)?, &[2, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn normal(stddev: f64) -> Initializer {
    Initializer::Normal { stddev }
}

/// `jax.nn.initializers.uniform(scale)`: values in `[0, scale)`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::uniform(1e-2).init(&xlayer::builder::random::key(&b, 0)?, &[2, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn uniform(scale: f64) -> Initializer {
    Initializer::Uniform { scale }
}

/// `jax.nn.initializers.truncated_normal(stddev, lower=lower, upper=upper)`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::truncated_normal(1e-2, -2.0, 2.0).init(&xlayer::builder::random::key(&b, 0)?, &[2, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn truncated_normal(stddev: f64, lower: f64, upper: f64) -> Initializer {
    Initializer::TruncatedNormal {
        stddev,
        lower,
        upper,
    }
}

/// `jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis, out_axis)`.
///
/// ```
/// use xlayer::builder::init::{variance_scaling, Distribution, Mode};
/// # let b = xlayer::builder::Builder::new();
/// let conv = variance_scaling(2.0, Mode::FanOut, Distribution::Normal, &[-2], &[-1]);
/// let w = conv.init(&xlayer::builder::random::key(&b, 0)?, &[3, 3, 8, 16], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn variance_scaling(
    scale: f64,
    mode: Mode,
    distribution: Distribution,
    in_axis: &[isize],
    out_axis: &[isize],
) -> Initializer {
    Initializer::VarianceScaling(VarianceScaling {
        scale,
        mode,
        distribution,
        in_axis: in_axis.to_vec(),
        out_axis: out_axis.to_vec(),
        batch_axis: vec![],
    })
}

fn default_scaling(scale: f64, mode: Mode, distribution: Distribution) -> Initializer {
    variance_scaling(scale, mode, distribution, &[-2], &[-1])
}

/// `jax.nn.initializers.lecun_normal()`: scale 1, fan_in, truncated normal
/// (Flax's default kernel initializer).
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::lecun_normal().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn lecun_normal() -> Initializer {
    default_scaling(1.0, Mode::FanIn, Distribution::TruncatedNormal)
}

/// `jax.nn.initializers.lecun_uniform()`: scale 1, fan_in, uniform.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::lecun_uniform().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn lecun_uniform() -> Initializer {
    default_scaling(1.0, Mode::FanIn, Distribution::Uniform)
}

/// `jax.nn.initializers.glorot_uniform()`: scale 1, fan_avg, uniform.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::glorot_uniform().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn glorot_uniform() -> Initializer {
    default_scaling(1.0, Mode::FanAvg, Distribution::Uniform)
}

/// `jax.nn.initializers.xavier_uniform()`, the same as [`glorot_uniform`].
///
/// ```
/// assert_eq!(xlayer::builder::init::xavier_uniform(), xlayer::builder::init::glorot_uniform());
/// ```
pub fn xavier_uniform() -> Initializer {
    glorot_uniform()
}

/// `jax.nn.initializers.glorot_normal()`: scale 1, fan_avg, truncated normal.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::glorot_normal().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn glorot_normal() -> Initializer {
    default_scaling(1.0, Mode::FanAvg, Distribution::TruncatedNormal)
}

/// `jax.nn.initializers.xavier_normal()`, the same as [`glorot_normal`].
///
/// ```
/// assert_eq!(xlayer::builder::init::xavier_normal(), xlayer::builder::init::glorot_normal());
/// ```
pub fn xavier_normal() -> Initializer {
    glorot_normal()
}

/// `jax.nn.initializers.he_normal()`: scale 2, fan_in, truncated normal.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::he_normal().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn he_normal() -> Initializer {
    default_scaling(2.0, Mode::FanIn, Distribution::TruncatedNormal)
}

/// `jax.nn.initializers.kaiming_normal()`, the same as [`he_normal`].
///
/// ```
/// assert_eq!(xlayer::builder::init::kaiming_normal(), xlayer::builder::init::he_normal());
/// ```
pub fn kaiming_normal() -> Initializer {
    he_normal()
}

/// `jax.nn.initializers.he_uniform()`: scale 2, fan_in, uniform.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let w = xlayer::builder::init::he_uniform().init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn he_uniform() -> Initializer {
    default_scaling(2.0, Mode::FanIn, Distribution::Uniform)
}

/// `jax.nn.initializers.kaiming_uniform()`, the same as [`he_uniform`].
///
/// ```
/// assert_eq!(xlayer::builder::init::kaiming_uniform(), xlayer::builder::init::he_uniform());
/// ```
pub fn kaiming_uniform() -> Initializer {
    he_uniform()
}

impl Initializer {
    /// The array this initializer gives for `key` (a `u32[2]` key), `dims` and `dtype`.
    ///
    /// Errors: [`crate::Error::Op`] for a bad key or a non-float dtype for a
    /// random initializer, and (variance scaling) for axes out of range or
    /// a weight of rank < 2 with the default `in_axis`, naming the shape.
    ///
    /// ```
    /// # let b = xlayer::builder::Builder::new();
    /// let k = xlayer::builder::random::key(&b, 0)?;
    /// assert_eq!(xlayer::builder::init::he_uniform().init(&k, &[4, 3], xlayer::DType::BF16)?.dims(), &[4, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn init(&self, key: &Value, dims: &[usize], dtype: DType) -> Result<Value> {
        let b = key.builder();
        match self {
            Initializer::Zeros => b.zeros(dtype, dims),
            Initializer::Ones => b.ones(dtype, dims),
            Initializer::Constant(v) => b.full(*v, dtype, dims),
            Initializer::Normal { stddev } => {
                random::normal(key, dims, dtype)?.mul(&b.full(*stddev, dtype, &[])?)
            }
            Initializer::Uniform { scale } => {
                random::uniform(key, dims, dtype, 0.0, 1.0)?.mul(&b.full(*scale, dtype, &[])?)
            }
            Initializer::TruncatedNormal {
                stddev,
                lower,
                upper,
            } => random::truncated_normal(key, *lower, *upper, dims, dtype)?.mul(&b.full(
                *stddev,
                dtype,
                &[],
            )?),
            Initializer::VarianceScaling(vs) => vs.init(key, dims, dtype),
        }
    }
}

impl VarianceScaling {
    /// `(fan_in, fan_out)` of a weight of `dims`, as JAX's `_compute_fans`.
    ///
    /// ```
    /// use xlayer::builder::init::{variance_scaling, Distribution, Initializer, Mode};
    /// let Initializer::VarianceScaling(vs) = variance_scaling(1.0, Mode::FanIn, Distribution::Normal, &[-2], &[-1]) else { unreachable!() };
    /// assert_eq!(vs.fans(&[3, 3, 8, 16])?, (72.0, 144.0));
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn fans(&self, dims: &[usize]) -> Result<(f64, f64)> {
        const OP: &str = "init.variance_scaling";
        if self.in_axis == [-2] && dims.len() <= 1 {
            return Err(op_err(
                OP,
                format!(
                    "cannot compute the fans of a weight of shape {dims:?} (rank {}) with the default in_axis -2: it needs rank >= 2 or an explicit in_axis",
                    dims.len()
                ),
            ));
        }
        let size = |what: &str, axes: &[isize]| -> Result<f64> {
            // f64 products: exact below 2^53, and no overflow for any dims.
            let mut p = 1f64;
            for &a in axes {
                let i = if a < 0 { a + dims.len() as isize } else { a };
                if i < 0 || i as usize >= dims.len() {
                    return Err(op_err(
                        OP,
                        format!("{what} {a} is out of range for a weight of shape {dims:?}"),
                    ));
                }
                p *= dims[i as usize] as f64;
            }
            Ok(p)
        };
        let in_size = size("in_axis", &self.in_axis)?;
        let out_size = size("out_axis", &self.out_axis)?;
        let batch_size = size("batch_axis", &self.batch_axis)?;
        if in_size == 0.0 || out_size == 0.0 || batch_size == 0.0 {
            return Err(op_err(
                OP,
                format!("a weight of shape {dims:?} has a fan axis of size 0"),
            ));
        }
        let total: f64 = dims.iter().map(|&d| d as f64).product();
        let receptive = total / in_size / out_size / batch_size;
        Ok((in_size * receptive, out_size * receptive))
    }

    /// The initializer's array; see [`Initializer::init`].
    ///
    /// ```
    /// use xlayer::builder::init::{variance_scaling, Distribution, Initializer, Mode};
    /// # let b = xlayer::builder::Builder::new();
    /// let Initializer::VarianceScaling(vs) = variance_scaling(1.0, Mode::FanIn, Distribution::Normal, &[-2], &[-1]) else { unreachable!() };
    /// assert_eq!(vs.init(&xlayer::builder::random::key(&b, 0)?, &[4, 3], xlayer::DType::F32)?.dims(), &[4, 3]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn init(&self, key: &Value, dims: &[usize], dtype: DType) -> Result<Value> {
        if !dtype.is_float() {
            return Err(op_err(
                "init.variance_scaling",
                format!("dtype must be a float type, got {dtype} (shape {dims:?})"),
            ));
        }
        let (fan_in, fan_out) = self.fans(dims)?;
        let denominator = match self.mode {
            Mode::FanIn => fan_in,
            Mode::FanOut => fan_out,
            Mode::FanAvg => (fan_in + fan_out) / 2.0,
            Mode::FanGeoAvg => (fan_in * fan_out).powf(0.5),
        };
        let b = key.builder();
        let variance = b.full(self.scale / denominator, dtype, &[])?;
        match self.distribution {
            Distribution::TruncatedNormal => {
                let stddev =
                    variance
                        .sqrt()?
                        .div(&b.full(0.879_625_661_034_239_8, dtype, &[])?)?;
                random::truncated_normal(key, -2.0, 2.0, dims, dtype)?.mul(&stddev)
            }
            Distribution::Normal => random::normal(key, dims, dtype)?.mul(&variance.sqrt()?),
            Distribution::Uniform => {
                let bound = variance.mul(&variance.scalar_like(3.0)?)?.sqrt()?;
                random::uniform(key, dims, dtype, -1.0, 1.0)?.mul(&bound)
            }
        }
    }
}
