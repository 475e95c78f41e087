//! Keras's normalization layers: [`LayerNormalization`] and
//! [`BatchNormalization`] (one axis, `-1` by default), with Keras's
//! formulas: `inv = rsqrt(variance + epsilon) * gamma`, `y = x * inv +
//! (beta - mean * inv)`, variance the biased one over the reduced axes.

use crate::builder::{axis_of, Tree, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

use super::jax_layer::JaxLayer;
use super::keras::{common_setters, field_setters, float_or_f32, keras_layer, weight, Common};
use super::signature::{InitState, Inputs, OutState, Params, State, Training};

/// `axis` (negative from the end) as an index into `x`'s axes.
fn resolve_axis(layer: &'static str, axis: i64, x: &Value) -> Result<usize> {
    axis_of(layer, axis, x.spec(), 0)
}

/// `v` of shape `(n,)` reshaped to broadcast along `axis` of `x`.
fn along(v: &Value, axis: usize, x: &Value) -> Result<Value> {
    let mut dims = vec![1; x.rank()];
    dims[axis] = x.dims()[axis];
    v.reshape(&dims)
}

/// Mean and biased variance of `x` over `axes` (kept as size-1 axes).
fn moments(x: &Value, axes: &[usize]) -> Result<(Value, Value)> {
    let mean = x.mean(axes, true)?;
    let var = (x - &mean)?.square()?.mean(axes, true)?;
    Ok((mean, var))
}

/// `x * inv + (beta - mean * inv)` with `inv = rsqrt(var + eps) * gamma`.
fn normalize(
    x: &Value,
    mean: &Value,
    var: &Value,
    gamma: Option<&Value>,
    beta: Option<&Value>,
    eps: f64,
) -> Result<Value> {
    let mut inv = (var + eps)?.rsqrt()?;
    if let Some(g) = gamma {
        inv = (inv * g)?;
    }
    let mut res = (mean * &inv)?.neg()?;
    if let Some(b) = beta {
        res = (res + b)?;
    }
    (x * &inv)? + &res
}

/// Keras's `LayerNormalization` over one axis (default `-1`): each example
/// normalized by its own mean and variance, then scaled by `gamma` (ones)
/// and shifted by `beta` (zeros), both of the axis's size.
#[derive(Clone)]
pub struct LayerNormalization {
    inner: JaxLayer,
}
keras_layer!(LayerNormalization, "LayerNormalization");

/// Configures a [`LayerNormalization`].
#[derive(Debug, Clone)]
pub struct LayerNormalizationConfig {
    /// The normalized axis (default -1).
    pub axis: i64,
    /// Added to the variance (default 1e-3).
    pub epsilon: f64,
    /// Whether there is a `beta` (default true).
    pub center: bool,
    /// Whether there is a `gamma` (default true).
    pub scale: bool,
    common: Common,
}

impl LayerNormalization {
    /// Keras's defaults: axis -1, epsilon 1e-3, `gamma` and `beta`.
    ///
    /// Errors: none with the defaults (see the config's `build`).
    pub fn new() -> Result<LayerNormalization> {
        LayerNormalization::config().build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config() -> LayerNormalizationConfig {
        LayerNormalizationConfig {
            axis: -1,
            epsilon: 1e-3,
            center: true,
            scale: true,
            common: Common::default(),
        }
    }
}

impl LayerNormalizationConfig {
    field_setters! {
        /// The normalized axis (negative from the end).
        axis: i64,
        /// Added to the variance.
        epsilon: f64,
        /// Whether there is a `beta`.
        center: bool,
        /// Whether there is a `gamma`.
        scale: bool,
    }

    common_setters!();

    /// Creates the layer.
    ///
    /// Errors: a negative or non-finite `epsilon`. An axis out of range for
    /// the inputs fails at build.
    pub fn build(self) -> Result<LayerNormalization> {
        let (axis, eps, center, scale) = (self.axis, self.epsilon, self.center, self.scale);
        check_epsilon("LayerNormalization", eps)?;
        const NAME: &str = "LayerNormalization";
        let call = move |Params(p): Params, Inputs(x): Inputs| {
            let x = x.into_leaf()?;
            let a = resolve_axis(NAME, axis, &x)?;
            let (mean, var) = moments(&x, &[a])?;
            let gamma = scale
                .then(|| along(weight(&p, NAME, "gamma")?, a, &x))
                .transpose()?;
            let beta = center
                .then(|| along(weight(&p, NAME, "beta")?, a, &x))
                .transpose()?;
            let y = normalize(&x, &mean, &var, gamma.as_ref(), beta.as_ref(), eps)?;
            Ok(super::Out::from(y))
        };
        let init_fn = move |Inputs(x): Inputs| {
            let x = x.into_leaf()?;
            let a = resolve_axis(NAME, axis, &x)?;
            Ok(super::Init(scale_and_offset(&x, a, scale, center)?))
        };
        let b = self.common.apply(
            "layer_normalization",
            JaxLayer::builder(call).init_fn(init_fn),
        );
        Ok(LayerNormalization { inner: b.build()? })
    }
}

/// The initial `gamma` (ones, when `scale`) and `beta` (zeros, when
/// `center`) of a normalization over `axis` of `x`, as Keras makes them.
fn scale_and_offset(x: &Value, axis: usize, scale: bool, center: bool) -> Result<Tree<Value>> {
    let (n, dtype, b) = (x.dims()[axis], float_or_f32(x.dtype()), x.builder());
    let mut m = Vec::new();
    if scale {
        m.push(("gamma", Tree::leaf(b.ones(dtype, &[n])?)));
    }
    if center {
        m.push(("beta", Tree::leaf(b.zeros(dtype, &[n])?)));
    }
    Ok(Tree::map(m))
}

fn check_epsilon(layer: &str, eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidSetting {
            what: layer.to_string(),
            field: "epsilon",
            value: eps.to_string(),
            reason: "must be finite and not negative",
        })
    }
}

/// Keras's `BatchNormalization` over one feature axis (default `-1`).
/// Training: normalized by the batch's mean and (biased) variance over
/// every other axis, and `moving_mean`/`moving_variance` move towards them
/// (`moving = moving * momentum + batch * (1 - momentum)`). Inference:
/// normalized by the moving statistics. Weights: `gamma` (ones), `beta`
/// (zeros) trainable; `moving_mean` (zeros), `moving_variance` (ones) state.
#[derive(Clone)]
pub struct BatchNormalization {
    inner: JaxLayer,
}
keras_layer!(BatchNormalization, "BatchNormalization");

/// Configures a [`BatchNormalization`].
#[derive(Debug, Clone)]
pub struct BatchNormalizationConfig {
    /// The feature axis (default -1).
    pub axis: i64,
    /// Of the moving statistics (default 0.99).
    pub momentum: f64,
    /// Added to the variance (default 1e-3).
    pub epsilon: f64,
    /// Whether there is a `beta` (default true).
    pub center: bool,
    /// Whether there is a `gamma` (default true).
    pub scale: bool,
    common: Common,
}

impl BatchNormalization {
    /// Keras's defaults: axis -1, momentum 0.99, epsilon 1e-3.
    ///
    /// Errors: none with the defaults (see the config's `build`).
    pub fn new() -> Result<BatchNormalization> {
        BatchNormalization::config().build()
    }

    /// Keras's defaults, to change with the setters.
    pub fn config() -> BatchNormalizationConfig {
        BatchNormalizationConfig {
            axis: -1,
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            common: Common::default(),
        }
    }
}

impl BatchNormalizationConfig {
    field_setters! {
        /// The feature axis (negative from the end).
        axis: i64,
        /// The momentum of the moving statistics.
        momentum: f64,
        /// Added to the variance.
        epsilon: f64,
        /// Whether there is a `beta`.
        center: bool,
        /// Whether there is a `gamma`.
        scale: bool,
    }

    common_setters!();

    /// Creates the layer.
    ///
    /// Errors: `momentum` outside `[0, 1]`; a negative or non-finite
    /// `epsilon`. An axis out of range for the inputs fails at build.
    pub fn build(self) -> Result<BatchNormalization> {
        const NAME: &str = "BatchNormalization";
        let (axis, momentum, eps) = (self.axis, self.momentum, self.epsilon);
        let (center, scale) = (self.center, self.scale);
        check_epsilon(NAME, eps)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::InvalidSetting {
                what: NAME.into(),
                field: "momentum",
                value: momentum.to_string(),
                reason: "must be in [0, 1]",
            });
        }
        let call = move |Params(p): Params, State(s): State, Inputs(x): Inputs, t: Training| {
            let x = x.into_leaf()?;
            let a = resolve_axis(NAME, axis, &x)?;
            let moving_mean = weight(&s, NAME, "moving_mean")?;
            let moving_var = weight(&s, NAME, "moving_variance")?;
            let (mean, var, new_state) = if t.is_yes() {
                let axes: Vec<usize> = (0..x.rank()).filter(|&i| i != a).collect();
                let (mean, var) = moments(&x, &axes)?;
                let n = x.dims()[a];
                let flat = |v: &Value| v.reshape(&[n]);
                let update = |moving: &Value, batch: &Value| -> Result<Value> {
                    let batch = flat(batch)?.convert(moving.dtype())?;
                    (moving * momentum)? + (batch * (1.0 - momentum))?
                };
                let state = Tree::map([
                    ("moving_mean", Tree::leaf(update(moving_mean, &mean)?)),
                    ("moving_variance", Tree::leaf(update(moving_var, &var)?)),
                ]);
                (mean, var, state)
            } else {
                let m = along(moving_mean, a, &x)?.convert(x.dtype())?;
                let v = along(moving_var, a, &x)?.convert(x.dtype())?;
                (m, v, s.clone())
            };
            let gamma = scale
                .then(|| along(weight(&p, NAME, "gamma")?, a, &x))
                .transpose()?;
            let beta = center
                .then(|| along(weight(&p, NAME, "beta")?, a, &x))
                .transpose()?;
            let y = normalize(&x, &mean, &var, gamma.as_ref(), beta.as_ref(), eps)?;
            Ok(OutState(Tree::leaf(y), new_state))
        };
        let init_fn = move |Inputs(x): Inputs| {
            let x = x.into_leaf()?;
            let a = resolve_axis(NAME, axis, &x)?;
            let (n, b) = (x.dims()[a], x.builder());
            let params = scale_and_offset(&x, a, scale, center)?;
            let state = Tree::map([
                ("moving_mean", Tree::leaf(b.zeros(DType::F32, &[n])?)),
                ("moving_variance", Tree::leaf(b.ones(DType::F32, &[n])?)),
            ]);
            Ok(InitState(params, state))
        };
        let b = self.common.apply(
            "batch_normalization",
            JaxLayer::builder(call).init_fn(init_fn),
        );
        Ok(BatchNormalization { inner: b.build()? })
    }
}
