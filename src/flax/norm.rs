//! `flax.linen.normalization`: `BatchNorm`, `LayerNorm`, `RMSNorm`,
//! `GroupNorm`, following `_compute_stats` and `_normalize` formula for
//! formula: statistics in (at least) f32, the fast variance
//! `max(0, mean(x²) - mean(x)²)`, `y = (x - mean) * (rsqrt(var + eps) * scale) + bias`.

use crate::builder::init::{self, Initializer};
use crate::builder::{normalize_axis, promote_types, ParamSource, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::linear::{flax_err, one_input_module};
use super::module::{merge_param, promote_dtype};
use super::scope::Scope;

/// Flax's `_canonicalize_axes`: each axis normalized (negative from the
/// end), duplicates dropped, sorted.
///
/// Errors: [`crate::Error::Flax`] naming the module's path, the axis and
/// the rank (as `DenseGeneral`'s axes).
fn canon_axes(axes: &[isize], rank: usize, s: &impl ParamSource) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = Vec::new();
    for &a in axes {
        let n = normalize_axis("norm", a, rank).map_err(|_| {
            flax_err(
                s.path_text(),
                format!("axis {a} is out of range for rank {rank}"),
            )
        })?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn convert(v: &Value, d: DType) -> Result<Value> {
    if v.dtype() == d {
        Ok(v.clone())
    } else {
        v.convert(d)
    }
}

/// Binary op with JAX's dtype promotion.
fn promoted(a: &Value, b: &Value) -> Result<(Value, Value)> {
    let d = promote_types(a.dtype(), b.dtype());
    Ok((convert(a, d)?, convert(b, d)?))
}

/// Flax's `_compute_stats` (no cross-device axis): mean and variance of `x`
/// over `axes`, in `promote(dtype or x.dtype, f32)`.
pub fn compute_stats(
    x: &Value,
    axes: &[usize],
    dtype: Option<DType>,
    use_mean: bool,
    use_fast_variance: bool,
) -> Result<(Value, Value)> {
    let d = promote_types(dtype.unwrap_or(x.dtype()), DType::F32);
    let x = convert(x, d)?;
    if !use_mean {
        let var = x.square()?.mean(axes, false)?;
        let mu = var.builder().zeros(var.dtype(), var.dims())?;
        return Ok((mu, var));
    }
    if use_fast_variance {
        let mu = x.mean(axes, false)?;
        let mu2 = x.square()?.mean(axes, false)?;
        let var = (mu2 - mu.square()?)?;
        let var = var.scalar_like(0.0)?.maximum(&var)?;
        Ok((mu, var))
    } else {
        let mu = x.mean(axes, false)?;
        let var = (&x - &mu.reshape(&keep_dims(x.dims(), axes))?)?
            .square()?
            .mean(axes, false)?;
        Ok((mu, var))
    }
}

fn keep_dims(dims: &[usize], reduced: &[usize]) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .map(|(i, &d)| if reduced.contains(&i) { 1 } else { d })
        .collect()
}

/// What `_normalize` takes of a module's attributes.
struct Affine<'a> {
    epsilon: f64,
    dtype: Option<DType>,
    param_dtype: DType,
    use_bias: bool,
    use_scale: bool,
    bias_init: &'a Initializer,
    scale_init: &'a Initializer,
}

/// The [`Affine`] of a module with fields of those names.
macro_rules! affine {
    ($m:expr) => {
        Affine {
            epsilon: $m.epsilon,
            dtype: $m.dtype,
            param_dtype: $m.param_dtype,
            use_bias: $m.use_bias,
            use_scale: $m.use_scale,
            bias_init: &$m.bias_init,
            scale_init: &$m.scale_init,
        }
    };
}

/// Flax's `_normalize`: creates `scale` then `bias` (shaped like the
/// feature axes) and returns `(x - mean) * rsqrt(var + eps) * scale + bias`
/// in the promoted dtype of `x` and the params (or `dtype`).
fn normalize(
    s: &impl ParamSource,
    x: &Value,
    mean: &Value,
    var: &Value,
    reduction_axes: &[usize],
    feature_axes: &[usize],
    a: &Affine,
) -> Result<Value> {
    let Affine {
        epsilon,
        dtype,
        param_dtype,
        use_bias,
        use_scale,
        bias_init,
        scale_init,
    } = *a;
    let nd = x.rank();
    let mut feature_shape = vec![1; nd];
    let mut reduced_feature_shape = vec![];
    for &a in feature_axes {
        feature_shape[a] = x.dims()[a];
        reduced_feature_shape.push(x.dims()[a]);
    }
    let kd = keep_dims(x.dims(), reduction_axes);
    let mean = mean.reshape(&kd)?;
    let var = var.reshape(&kd)?;
    let (xa, m) = promoted(x, &mean)?;
    let mut y = (xa - m)?;
    let mut mul = (var + epsilon)?.rsqrt()?;
    let mut out_args: Vec<Value> = vec![x.clone()];
    if use_scale {
        let scale = s
            .param("scale", scale_init, &reduced_feature_shape, param_dtype)?
            .reshape(&feature_shape)?;
        let (a, b) = promoted(&mul, &scale)?;
        mul = (a * b)?;
        out_args.push(scale);
    }
    let (a, b) = promoted(&y, &mul)?;
    y = (a * b)?;
    if use_bias {
        let bias = s
            .param("bias", bias_init, &reduced_feature_shape, param_dtype)?
            .reshape(&feature_shape)?;
        let (a, b) = promoted(&y, &bias)?;
        y = (a + b)?;
        out_args.push(bias);
    }
    let refs: Vec<&Value> = out_args.iter().collect();
    let d = promote_dtype(&refs, dtype, true)?[0].dtype();
    convert(&y, d)
}

/// The body of `LayerNorm`/`RMSNorm`: statistics over the reduction axes,
/// `scale`/`bias` over the feature axes (both as the attributes give them).
fn normalize_over(
    s: &impl ParamSource,
    x: &Value,
    (reduction_axes, feature_axes): (&[isize], &[isize]),
    use_mean: bool,
    use_fast_variance: bool,
    a: &Affine,
) -> Result<Value> {
    let red = canon_axes(reduction_axes, x.rank(), s)?;
    let feat = canon_axes(feature_axes, x.rank(), s)?;
    let (mean, var) = compute_stats(x, &red, a.dtype, use_mean, use_fast_variance)?;
    normalize(s, x, &mean, &var, &red, &feat, a)
}

/// `nn.BatchNorm`: batch statistics in training (running averages updated
/// in `batch_stats` with `momentum`), running averages otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Use `batch_stats` instead of batch statistics (else given per call).
    pub use_running_average: Option<bool>,
    /// Feature axes (default `[-1]`).
    pub axis: Vec<isize>,
    /// Running-average momentum (default 0.99).
    pub momentum: f64,
    /// Added to the variance (default 1e-5).
    pub epsilon: f64,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Whether to add `bias`.
    pub use_bias: bool,
    /// Whether to multiply by `scale`.
    pub use_scale: bool,
    /// Bias initializer (zeros).
    pub bias_init: Initializer,
    /// Scale initializer (ones).
    pub scale_init: Initializer,
    /// `mean(x²) - mean(x)²` (default) or `mean((x - mean)²)`.
    pub use_fast_variance: bool,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm::new()
    }
}

impl BatchNorm {
    /// `nn.BatchNorm()` with Flax's defaults.
    pub fn new() -> BatchNorm {
        BatchNorm {
            use_running_average: None,
            axis: vec![-1],
            momentum: 0.99,
            epsilon: 1e-5,
            dtype: None,
            param_dtype: DType::F32,
            use_bias: true,
            use_scale: true,
            bias_init: init::zeros(),
            scale_init: init::ones(),
            use_fast_variance: true,
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> BatchNorm {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`; `use_running_average` is
    /// merged with the field (exactly one must be set).
    pub fn apply(
        &self,
        parent: &Scope,
        x: &Value,
        use_running_average: Option<bool>,
    ) -> Result<Value> {
        parent.child("BatchNorm", self.name.as_deref(), |s| {
            self.call_in(s, x, use_running_average)
        })
    }

    /// The module's body in its own scope.
    pub fn call_in(
        &self,
        s: &Scope,
        x: &Value,
        use_running_average: Option<bool>,
    ) -> Result<Value> {
        let ura = merge_param(
            s,
            "use_running_average",
            self.use_running_average,
            use_running_average,
        )?;
        let nd = x.rank();
        let feature_axes = canon_axes(&self.axis, nd, s)?;
        let reduction_axes: Vec<usize> = (0..nd).filter(|a| !feature_axes.contains(a)).collect();
        let fshape: Vec<usize> = feature_axes.iter().map(|&a| x.dims()[a]).collect();
        let f2 = fshape.clone();
        let ra_mean = s.variable("batch_stats", "mean", |b| b.zeros(DType::F32, &fshape))?;
        let ra_var = s.variable("batch_stats", "var", |b| b.ones(DType::F32, &f2))?;
        let (mean, var) = if ura {
            (ra_mean.value()?, ra_var.value()?)
        } else {
            let (mean, var) =
                compute_stats(x, &reduction_axes, self.dtype, true, self.use_fast_variance)?;
            if !s.is_initializing() {
                let m = self.momentum;
                let upd = |old: &Value, new: &Value| -> Result<Value> {
                    let (a, b) = promoted(&(old * m)?, &(new * (1.0 - m))?)?;
                    a + b
                };
                ra_mean.set(upd(&ra_mean.value()?, &mean)?)?;
                ra_var.set(upd(&ra_var.value()?, &var)?)?;
            }
            (mean, var)
        };
        normalize(
            s,
            x,
            &mean,
            &var,
            &reduction_axes,
            &feature_axes,
            &affine!(self),
        )
    }
}

one_input_module!(BatchNorm, "BatchNorm", not_training: use_running_average);

/// `nn.LayerNorm`: statistics over `reduction_axes` (default last).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Added to the variance (default 1e-6).
    pub epsilon: f64,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Whether to add `bias`.
    pub use_bias: bool,
    /// Whether to multiply by `scale`.
    pub use_scale: bool,
    /// Bias initializer.
    pub bias_init: Initializer,
    /// Scale initializer.
    pub scale_init: Initializer,
    /// Axes of the statistics (default `[-1]`).
    pub reduction_axes: Vec<isize>,
    /// Axes of `scale`/`bias` (default `[-1]`).
    pub feature_axes: Vec<isize>,
    /// Fast variance (default true).
    pub use_fast_variance: bool,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Default for LayerNorm {
    fn default() -> Self {
        LayerNorm::new()
    }
}

impl LayerNorm {
    /// `nn.LayerNorm()` with Flax's defaults.
    pub fn new() -> LayerNorm {
        LayerNorm {
            epsilon: 1e-6,
            dtype: None,
            param_dtype: DType::F32,
            use_bias: true,
            use_scale: true,
            bias_init: init::zeros(),
            scale_init: init::ones(),
            reduction_axes: vec![-1],
            feature_axes: vec![-1],
            use_fast_variance: true,
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> LayerNorm {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("LayerNorm", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope: a Flax [`Scope`], or a
    /// [`crate::builder::VarBuilder`] at the module's path (weights `scale`
    /// and `bias`).
    pub fn call_in(&self, s: &impl ParamSource, x: &Value) -> Result<Value> {
        normalize_over(
            s,
            x,
            (&self.reduction_axes, &self.feature_axes),
            true,
            self.use_fast_variance,
            &affine!(self),
        )
    }
}
one_input_module!(LayerNorm, "LayerNorm");

/// `nn.RMSNorm`: `x * rsqrt(mean(x²) + eps) * scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct RMSNorm {
    /// Added to the mean square (default 1e-6).
    pub epsilon: f64,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Whether to multiply by `scale`.
    pub use_scale: bool,
    /// Scale initializer.
    pub scale_init: Initializer,
    /// Axes of the statistics (default `[-1]`).
    pub reduction_axes: Vec<isize>,
    /// Axes of `scale` (default `[-1]`).
    pub feature_axes: Vec<isize>,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Default for RMSNorm {
    fn default() -> Self {
        RMSNorm::new()
    }
}

impl RMSNorm {
    /// `nn.RMSNorm()` with Flax's defaults.
    pub fn new() -> RMSNorm {
        RMSNorm {
            epsilon: 1e-6,
            dtype: None,
            param_dtype: DType::F32,
            use_scale: true,
            scale_init: init::ones(),
            reduction_axes: vec![-1],
            feature_axes: vec![-1],
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> RMSNorm {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("RMSNorm", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope: a Flax [`Scope`], or a
    /// [`crate::builder::VarBuilder`] at the module's path (weights `scale`
    /// and `bias`).
    pub fn call_in(&self, s: &impl ParamSource, x: &Value) -> Result<Value> {
        normalize_over(
            s,
            x,
            (&self.reduction_axes, &self.feature_axes),
            false,
            true,
            &Affine {
                epsilon: self.epsilon,
                dtype: self.dtype,
                param_dtype: self.param_dtype,
                use_bias: false,
                use_scale: self.use_scale,
                bias_init: &init::zeros(),
                scale_init: &self.scale_init,
            },
        )
    }
}
one_input_module!(RMSNorm, "RMSNorm");

/// `nn.GroupNorm`: statistics per group of channels (last axis) over the
/// non-batch axes.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNorm {
    /// Number of groups (default 32); exactly one of this and `group_size`.
    pub num_groups: Option<usize>,
    /// Channels per group.
    pub group_size: Option<usize>,
    /// Added to the variance (default 1e-6).
    pub epsilon: f64,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Whether to add `bias`.
    pub use_bias: bool,
    /// Whether to multiply by `scale`.
    pub use_scale: bool,
    /// Bias initializer.
    pub bias_init: Initializer,
    /// Scale initializer.
    pub scale_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl GroupNorm {
    /// `nn.GroupNorm(num_groups)`.
    pub fn new(num_groups: usize) -> GroupNorm {
        GroupNorm {
            num_groups: Some(num_groups),
            group_size: None,
            epsilon: 1e-6,
            dtype: None,
            param_dtype: DType::F32,
            use_bias: true,
            use_scale: true,
            bias_init: init::zeros(),
            scale_init: init::ones(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> GroupNorm {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("GroupNorm", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value) -> Result<Value> {
        let nd = x.rank();
        if nd < 2 {
            return Err(flax_err(
                s.path_text(),
                "GroupNorm needs inputs of rank >= 2",
            ));
        }
        let channels = x.dims()[nd - 1];
        let num_groups = match (self.num_groups, self.group_size) {
            (Some(g), None) => g,
            (None, Some(gs)) if gs > 0 && channels.is_multiple_of(gs) => channels / gs,
            (None, Some(gs)) => {
                return Err(flax_err(
                    s.path_text(),
                    format!(
                    "number of channels ({channels}) is not a multiple of the group size ({gs})"
                ),
                ))
            }
            _ => {
                return Err(flax_err(
                    s.path_text(),
                    "either `num_groups` or `group_size` should be specified",
                ))
            }
        };
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            return Err(flax_err(
                s.path_text(),
                format!("number of groups ({num_groups}) does not divide the number of channels ({channels})"),
            ));
        }
        let gs = channels / num_groups;
        let mut gshape = x.dims()[..nd - 1].to_vec();
        gshape.extend([num_groups, gs]);
        let mut axes: Vec<usize> = (1..nd - 1).collect();
        axes.push(nd);
        let (mean, var) = compute_stats(&x.reshape(&gshape)?, &axes, self.dtype, true, true)?;
        // jnp.repeat(., group_size, axis=-1)
        let rep = |v: &Value| -> Result<Value> {
            let n = v.dims()[0];
            v.reshape(&[n, num_groups, 1])?
                .broadcast_to(&[n, num_groups, gs])?
                .reshape(&[n, channels])
        };
        let red: Vec<usize> = (1..nd - 1).collect();
        normalize(
            s,
            x,
            &rep(&mean)?,
            &rep(&var)?,
            &red,
            &[nd - 1],
            &affine!(self),
        )
    }
}
one_input_module!(GroupNorm, "GroupNorm");
