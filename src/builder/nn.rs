//! `jax.nn`-style helpers over builder values: activations, softmax
//! family, one_hot, standardize. Each follows JAX's formula so results
//! match `jax.nn` to rounding.

use crate::dtype::DType;
use crate::error::Result;

use super::axis::{axis_of, Axis};
use super::core::{op_err, Value};

fn float_only(op: &'static str, x: &Value) -> Result<()> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        Err(op_err(
            op,
            format!("needs a float operand, got {}", x.spec()),
        ))
    }
}

/// `max(x, 0)`.
///
/// ```
/// # let b = xlayer::builder::Builder::new();
/// let y = xlayer::builder::nn::relu(&b.scalar(-2f32)?)?;
/// assert_eq!(y.dims(), &[] as &[usize]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn relu(x: &Value) -> Result<Value> {
    // Forward: max(x, 0), NaN-propagating, one op as in JAX (so the
    // compiler can fuse it, e.g. into a YNNPACK conv fusion). Gradient:
    // JAX's custom rule, g where x > 0 and 0 elsewhere (also at x == 0,
    // where max would split it), the derivative of the select.
    let zero = x.scalar_like(0.0)?;
    let positive = x.gt(&zero)?.select(x, &zero)?;
    x.maximum(&zero)?.with_gradient_of(&positive)
}

/// The logistic sigmoid `1 / (1 + e^-x)`.
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::sigmoid(&x)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn sigmoid(x: &Value) -> Result<Value> {
    float_only("sigmoid", x)?;
    x.logistic()
}

/// `x * sigmoid(x)` (`jax.nn.silu`, a.k.a. swish).
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::silu(&x)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn silu(x: &Value) -> Result<Value> {
    x * sigmoid(x)?
}

/// GELU: exact `x/2 erfc(-x/√2)`, or JAX's default tanh approximation
/// `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))` when `approximate`.
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::gelu(&x, true)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn gelu(x: &Value, approximate: bool) -> Result<Value> {
    float_only("gelu", x)?;
    if approximate {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let cube = (x * &x.square()?)?;
        let inner = ((x + (cube * 0.044715)?)? * c)?;
        let cdf = ((inner.tanh()? + 1.0)? * 0.5)?;
        x * cdf
    } else {
        // 0.5 * x * erfc(-x * sqrt(1/2)), as jax.nn.gelu(approximate=False).
        let e = (x.neg()? * std::f64::consts::FRAC_1_SQRT_2)?.erfc()?;
        (x * 0.5)? * e
    }
}

/// `log(1 + e^x)`, computed stably as `logaddexp(x, 0)` like `jax.nn.softplus`.
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::softplus(&x)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn softplus(x: &Value) -> Result<Value> {
    float_only("softplus", x)?;
    // logaddexp(x, 0) = max(x, 0) + log1p(exp(-|x - 0|))
    let m = relu(x)?;
    m + x.abs()?.neg()?.exp()?.log1p()?
}

/// `log(sum(exp(x), axis))`, stable: the maximum is subtracted first and an
/// infinite maximum is treated as 0 (as `jax.nn.logsumexp`).
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// assert_eq!(nn::logsumexp(&x, 1, false)?.dims(), &[2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn logsumexp(x: &Value, axis: impl Axis, keepdims: bool) -> Result<Value> {
    float_only("logsumexp", x)?;
    let axis = axis_of("logsumexp", axis, x.spec(), 0)?;
    let m = x.max(&[axis], true)?.stop_gradient()?;
    let m = m.is_finite()?.select(&m, &m.scalar_like(0.0)?)?;
    let s = (x - &m)?.exp()?.sum(&[axis], true)?.log()?;
    let out = (s + m)?;
    if keepdims {
        Ok(out)
    } else {
        out.squeeze(&[axis])
    }
}

/// `exp(x - max) / sum(exp(x - max))` along `axis` (negative from the end).
///
/// Errors: [`crate::Error::AxisOutOfRange`] naming `softmax`, the axis and
/// the rank; [`crate::Error::Op`] for a non-float `x`.
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::softmax(&x, -1)?; // the last axis
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn softmax(x: &Value, axis: impl Axis) -> Result<Value> {
    float_only("softmax", x)?;
    let axis = axis_of("softmax", axis, x.spec(), 0)?;
    let unnormalized = (x - x.max(&[axis], true)?.stop_gradient()?)?.exp()?;
    let total = unnormalized.sum(&[axis], true)?;
    unnormalized / total
}

/// `x - logsumexp(x)` along `axis`, computed as JAX does (shift by the max).
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::log_softmax(&x, -1)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn log_softmax(x: &Value, axis: impl Axis) -> Result<Value> {
    float_only("log_softmax", x)?;
    let axis = axis_of("log_softmax", axis, x.spec(), 0)?;
    let shifted = (x - x.max(&[axis], true)?.stop_gradient()?)?;
    let lse = shifted.exp()?.sum(&[axis], true)?.log()?;
    shifted - lse
}

/// One-hot encoding of integer `indices` into a new last dimension of size
/// `num_classes` (out-of-range indices give all zeros).
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// assert_eq!(nn::one_hot(&idx, 10, DType::F32)?.dims(), &[4, 10]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn one_hot(indices: &Value, num_classes: usize, dtype: DType) -> Result<Value> {
    if !indices.dtype().is_int() {
        return Err(op_err(
            "one_hot",
            format!("indices must be integers, got {}", indices.spec()),
        ));
    }
    let mut dims = indices.dims().to_vec();
    dims.push(num_classes);
    let classes = indices
        .builder()
        .iota(indices.dtype(), &dims, dims.len() - 1)?;
    let expanded = indices.expand_dims(indices.rank())?;
    classes.eq(&expanded)?.convert(dtype)
}

/// `(x - mean) / sqrt(var + epsilon)` along `axis` (`jax.nn.standardize`).
///
/// ```
/// # use xlayer::{builder::*, ArraySpec, DType};
/// # let b = Builder::new();
/// # let x = b.parameter(ArraySpec::of::<f32>([2, 3]), "x")?;
/// # let y = b.parameter(ArraySpec::of::<f32>([2, 3]), "y")?;
/// # let i = b.parameter(ArraySpec::of::<i32>([2, 3]), "i")?;
/// # let idx = b.parameter(ArraySpec::of::<i32>([4]), "idx")?;
/// let z = nn::standardize(&x, 1, 1e-5)?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn standardize(x: &Value, axis: impl Axis, epsilon: f64) -> Result<Value> {
    float_only("standardize", x)?;
    let axis = axis_of("standardize", axis, x.spec(), 0)?;
    let mean = x.mean(&[axis], true)?;
    let var = (x.square()?.mean(&[axis], true)? - mean.square()?)?;
    (x - mean) * (var + epsilon)?.rsqrt()?
}
