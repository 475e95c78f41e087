//! `flax.linen.linear`: `Dense`, `DenseGeneral`, `Conv`, `ConvTranspose`,
//! `Embed`, formula for formula (`lax.dot_general`, `lax.conv_general_dilated`,
//! `lax.conv_transpose`), with Flax's defaults and parameter names.

use crate::builder::init::{self, Distribution, Initializer, Mode};
use crate::builder::{ConvAttrs, ConvDims, DotDims, Padding, ParamSource, Tree, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

use super::module::{promote_dtype, MethodSig, Module, CALL};
use super::scope::Scope;

/// Flax's default kernel initializer, `lecun_normal()`.
pub fn default_kernel_init() -> Initializer {
    init::lecun_normal()
}

/// Flax's default `Embed` initializer: `variance_scaling(1.0, "fan_in",
/// "normal", out_axis=0)`.
pub fn default_embed_init() -> Initializer {
    init::variance_scaling(1.0, Mode::FanIn, Distribution::Normal, &[-2], &[0])
}

pub(crate) fn flax_err(path: String, message: impl Into<String>) -> Error {
    Error::Flax {
        path,
        message: message.into(),
    }
}

pub(crate) fn check_call(module: &str, method: &str) -> Result<()> {
    if method == CALL {
        Ok(())
    } else {
        Err(flax_err(
            module.to_string(),
            format!("module has no method `{method}` (methods: [\"{CALL}\"])"),
        ))
    }
}

/// Implements [`Module`] for a one-input, one-output module with a
/// `call_in(&Scope, &Value)`; with `not_training: flag`, a
/// `call_in(&Scope, &Value, Option<bool>)` whose flag (`deterministic`,
/// `use_running_average`) is `!training` unless the attribute `flag` is set.
macro_rules! one_input_module {
    ($t:ty, $name:expr $(, not_training: $flag:ident)?) => {
        impl $crate::flax::Module for $t {
            fn type_name(&self) -> String {
                $name.to_string()
            }
            $(
                fn methods(&self) -> Vec<$crate::flax::MethodSig> {
                    vec![$crate::flax::MethodSig::new(
                        $crate::flax::CALL,
                        self.$flag.is_none(),
                    )]
                }
            )?
            fn call_method(
                &self,
                scope: &$crate::flax::Scope,
                method: &str,
                inputs: &$crate::builder::Tree<$crate::builder::Value>,
                _training: Option<bool>,
            ) -> $crate::error::Result<$crate::builder::Tree<$crate::builder::Value>> {
                $crate::flax::linear::check_call($name, method)?;
                Ok($crate::builder::Tree::Leaf(self.call_in(
                    scope,
                    &inputs.clone().into_leaf()?,
                    $(if self.$flag.is_some() {
                        None
                    } else {
                        _training.map(|t| !t)
                    },)?
                )?))
            }
        }
    };
}
pub(crate) use one_input_module;

fn reshape_bias(bias: &Value, rank: usize) -> Result<Value> {
    let mut dims = vec![1; rank.saturating_sub(bias.rank())];
    dims.extend_from_slice(bias.dims());
    bias.reshape(&dims)
}

/// The `bias` param of shape `[features]` when `use_bias`, for a module
/// with fields of those names (`Dense`, `Conv`, `ConvTranspose`).
macro_rules! features_bias {
    ($s:expr, $m:expr) => {
        if $m.use_bias {
            Some($s.param("bias", &$m.bias_init, &[$m.features], $m.param_dtype)?)
        } else {
            None
        }
    };
}

/// `promote_dtype(x, kernel[, bias])`.
fn promote_with_bias(
    x: &Value,
    kernel: &Value,
    bias: Option<Value>,
    dtype: Option<DType>,
) -> Result<Vec<Value>> {
    let mut args = vec![x, kernel];
    if let Some(b) = &bias {
        args.push(b);
    }
    promote_dtype(&args, dtype, true)
}

/// `y + bias`, the bias broadcast over the leading axes of `y`; `y` when
/// there is no bias.
fn add_bias(y: Value, bias: Option<&Value>) -> Result<Value> {
    match bias {
        Some(b) => {
            let b = reshape_bias(b, y.rank())?;
            y + b
        }
        None => Ok(y),
    }
}

/// `nn.Dense`: `y = lax.dot_general(x, kernel) + bias`, kernel `(in, features)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Output features.
    pub features: usize,
    /// Whether to add a bias (default true).
    pub use_bias: bool,
    /// Computation dtype (default: promoted from inputs and params).
    pub dtype: Option<DType>,
    /// Parameter dtype (default f32).
    pub param_dtype: DType,
    /// Kernel initializer (default lecun_normal).
    pub kernel_init: Initializer,
    /// Bias initializer (default zeros).
    pub bias_init: Initializer,
    /// Explicit submodule name (default `Dense_{n}`).
    pub name: Option<String>,
}

impl Dense {
    /// `nn.Dense(features)` with Flax's defaults.
    pub fn new(features: usize) -> Dense {
        Dense {
            features,
            use_bias: true,
            dtype: None,
            param_dtype: DType::F32,
            kernel_init: default_kernel_init(),
            bias_init: init::zeros(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Dense {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent` (`nn.Dense(...)(x)` inside a
    /// compact method).
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("Dense", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope: a Flax [`Scope`], or a
    /// [`crate::builder::VarBuilder`] at the module's path (weights `kernel`
    /// `(in, features)` and `bias`).
    pub fn call_in(&self, s: &impl ParamSource, x: &Value) -> Result<Value> {
        if x.rank() == 0 {
            return Err(flax_err(s.path_text(), "Dense needs inputs of rank >= 1"));
        }
        let n_in = x.dims()[x.rank() - 1];
        let kernel = s.param(
            "kernel",
            &self.kernel_init,
            &[n_in, self.features],
            self.param_dtype,
        )?;
        let bias = features_bias!(s, self);
        let p = promote_with_bias(x, &kernel, bias, self.dtype)?;
        let y = p[0].dot_general(
            &p[1],
            &DotDims {
                lhs_contract: vec![x.rank() - 1],
                rhs_contract: vec![0],
                ..Default::default()
            },
        )?;
        add_bias(y, p.get(2))
    }
}
one_input_module!(Dense, "Dense");

fn normalize_axes(axes: &[isize], rank: usize, what: &str, path: &Scope) -> Result<Vec<usize>> {
    axes.iter()
        .map(|&a| {
            let r = rank as isize;
            let n = if a < 0 { a + r } else { a };
            if n < 0 || n >= r {
                Err(flax_err(
                    path.path_text(),
                    format!("{what} axis {a} out of range for rank {rank}"),
                ))
            } else {
                Ok(n as usize)
            }
        })
        .collect()
}

/// `nn.DenseGeneral`: contracts `axis` of the input with the leading kernel
/// dimensions; `batch_dims` are shared by input and kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseGeneral {
    /// Output features (one or more trailing dimensions).
    pub features: Vec<usize>,
    /// Input axes to contract (default `[-1]`).
    pub axis: Vec<isize>,
    /// Leading batch axes shared with the kernel (default none).
    pub batch_dims: Vec<usize>,
    /// Whether to add a bias.
    pub use_bias: bool,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Kernel initializer (applied to the flattened `(fan_in, fan_out)` kernel, as Flax).
    pub kernel_init: Initializer,
    /// Bias initializer.
    pub bias_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl DenseGeneral {
    /// `nn.DenseGeneral(features, axis=-1)`.
    pub fn new(features: &[usize]) -> DenseGeneral {
        DenseGeneral {
            features: features.to_vec(),
            axis: vec![-1],
            batch_dims: vec![],
            use_bias: true,
            dtype: None,
            param_dtype: DType::F32,
            kernel_init: default_kernel_init(),
            bias_init: init::zeros(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> DenseGeneral {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("DenseGeneral", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value) -> Result<Value> {
        let nd = x.rank();
        let nb = self.batch_dims.len();
        if self.batch_dims.iter().enumerate().any(|(i, &d)| i != d) || nb > nd {
            return Err(flax_err(
                s.path_text(),
                format!(
                    "batch_dims {:?} must be consecutive leading dimensions starting from 0, within the rank of the input {}",
                    self.batch_dims,
                    x.spec()
                ),
            ));
        }
        let axis = normalize_axes(&self.axis, nd, "DenseGeneral", s)?;
        let (na, nf) = (axis.len(), self.features.len());
        let batch_shape: Vec<usize> = self.batch_dims.iter().map(|&a| x.dims()[a]).collect();
        let expanded_batch: Vec<usize> = (0..nd)
            .filter(|a| !axis.contains(a))
            .map(|a| {
                if self.batch_dims.contains(&a) {
                    x.dims()[a]
                } else {
                    1
                }
            })
            .collect();
        let mut kshape = batch_shape.clone();
        kshape.extend(axis.iter().map(|&a| x.dims()[a]));
        kshape.extend_from_slice(&self.features);
        // Checked first: `features` come from the caller, and the products
        // below must not overflow.
        let mut bshape = batch_shape.clone();
        bshape.extend_from_slice(&self.features);
        for (name, shape) in [("kernel", &kshape), ("bias", &bshape)] {
            crate::ArraySpec::new(self.param_dtype, shape.clone())
                .check_size(|| format!("flax `{}` {name}", s.path_text()))?;
        }
        let flat_k = [
            kshape[..nb].iter().product::<usize>() * kshape[nb..nb + na].iter().product::<usize>(),
            kshape[kshape.len() - nf..].iter().product::<usize>(),
        ];
        let (ki, pd) = (&self.kernel_init, self.param_dtype);
        let kernel = s.param_with("kernel", &kshape, |key| {
            ki.init(key, &flat_k, pd)?.reshape(&kshape)
        })?;
        let bias = if self.use_bias {
            let flat_b = [bshape.iter().product::<usize>()];
            let bi = &self.bias_init;
            Some(s.param_with("bias", &bshape, |key| {
                bi.init(key, &flat_b, pd)?.reshape(&bshape)
            })?)
        } else {
            None
        };
        let p = promote_with_bias(x, &kernel, bias, self.dtype)?;
        let out = p[0].dot_general(
            &p[1],
            &DotDims {
                lhs_batch: self.batch_dims.clone(),
                rhs_batch: (0..nb).collect(),
                lhs_contract: axis.clone(),
                rhs_contract: (nb..nb + na).collect(),
            },
        )?;
        match p.get(2) {
            Some(b) => {
                let mut bd = expanded_batch;
                bd.extend_from_slice(&self.features);
                out + b.reshape(&bd)?
            }
            None => Ok(out),
        }
    }
}
one_input_module!(DenseGeneral, "DenseGeneral");

/// Padding of `Conv`/`ConvTranspose` (Flax's `PaddingLike`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvPadding {
    /// `"SAME"` (the default).
    Same,
    /// `"VALID"`.
    Valid,
    /// `"CIRCULAR"`: periodic boundary (the input is wrapped around).
    Circular,
    /// `"CAUSAL"` (1-D only): left padding by the dilated kernel size - 1.
    Causal,
    /// Explicit `(low, high)` per spatial dimension.
    Explicit(Vec<(i64, i64)>),
}

fn broadcast(v: &[usize], n: usize) -> Vec<usize> {
    match v.len() {
        0 => vec![1; n],
        1 => vec![v[0]; n],
        _ => v.to_vec(),
    }
}

/// The kernel size per spatial dimension after `kernel_dilation`.
fn dilated_kernel(kernel_size: &[usize], kernel_dilation: &[usize]) -> Vec<usize> {
    kernel_size
        .iter()
        .zip(kernel_dilation)
        .map(|(&k, &d)| (k.max(1) - 1).saturating_mul(d).saturating_add(1))
        .collect()
}

/// `jnp.pad(x, pads, mode="wrap")` for pads no larger than the axis.
pub(crate) fn wrap_pad(x: &Value, pads: &[(usize, usize)], path: &str) -> Result<Value> {
    let mut y = x.clone();
    for (axis, &(lo, hi)) in pads.iter().enumerate() {
        if lo == 0 && hi == 0 {
            continue;
        }
        let n = y.dims()[axis];
        if lo > n || hi > n {
            return Err(flax_err(
                path.to_string(),
                format!("circular padding ({lo}, {hi}) is larger than the axis ({n})"),
            ));
        }
        let mut parts = vec![];
        if lo > 0 {
            parts.push(y.slice_axis(axis, n - lo, n)?);
        }
        parts.push(y.clone());
        if hi > 0 {
            parts.push(y.slice_axis(axis, 0, hi)?);
        }
        y = Value::concatenate(&parts, axis)?;
    }
    Ok(y)
}

/// Flattens leading batch dimensions to one (Flax's `num_batch_dimensions`
/// handling); returns the flat input and the batch shape to restore.
fn flatten_batch(x: &Value, n_spatial: usize, path: &str) -> Result<(Value, Option<Vec<usize>>)> {
    if x.rank() < n_spatial + 1 {
        return Err(flax_err(
            path.to_string(),
            format!(
                "input {} has too few dimensions for a {n_spatial}-D kernel",
                x.spec()
            ),
        ));
    }
    let nb = x.rank() - (n_spatial + 1);
    if nb == 1 {
        return Ok((x.clone(), None));
    }
    let batch: Vec<usize> = x.dims()[..nb].to_vec();
    let mut flat = vec![batch.iter().product()];
    flat.extend_from_slice(&x.dims()[nb..]);
    Ok((x.reshape(&flat)?, Some(batch)))
}

fn restore_batch(y: Value, batch: Option<Vec<usize>>) -> Result<Value> {
    match batch {
        None => Ok(y),
        Some(mut b) => {
            b.extend_from_slice(&y.dims()[1..]);
            y.reshape(&b)
        }
    }
}

/// `nn.Conv`: `lax.conv_general_dilated` in NHWC/HWIO layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    /// Output features.
    pub features: usize,
    /// Kernel size per spatial dimension.
    pub kernel_size: Vec<usize>,
    /// Strides (empty: 1; one value: for every dimension).
    pub strides: Vec<usize>,
    /// Padding (default SAME).
    pub padding: ConvPadding,
    /// Input (lhs) dilation (empty: 1).
    pub input_dilation: Vec<usize>,
    /// Kernel (rhs) dilation (empty: 1).
    pub kernel_dilation: Vec<usize>,
    /// Feature groups (default 1).
    pub feature_group_count: usize,
    /// Whether to add a bias.
    pub use_bias: bool,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Kernel initializer.
    pub kernel_init: Initializer,
    /// Bias initializer.
    pub bias_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Conv {
    /// `nn.Conv(features, kernel_size)` with Flax's defaults.
    pub fn new(features: usize, kernel_size: &[usize]) -> Conv {
        Conv {
            features,
            kernel_size: kernel_size.to_vec(),
            strides: vec![],
            padding: ConvPadding::Same,
            input_dilation: vec![],
            kernel_dilation: vec![],
            feature_group_count: 1,
            use_bias: true,
            dtype: None,
            param_dtype: DType::F32,
            kernel_init: default_kernel_init(),
            bias_init: init::zeros(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Conv {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("Conv", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value) -> Result<Value> {
        let path = s.path_text();
        let ks = &self.kernel_size;
        let n = ks.len();
        if n == 0 {
            return Err(flax_err(path, "Conv needs a kernel_size"));
        }
        let (mut x, batch) = flatten_batch(x, n, &path)?;
        let strides = broadcast(&self.strides, n);
        let in_dil = broadcast(&self.input_dilation, n);
        let k_dil = broadcast(&self.kernel_dilation, n);
        let kd = dilated_kernel(ks, &k_dil);
        let mut pad = self.padding.clone();
        match &self.padding {
            ConvPadding::Circular => {
                let mut pads = vec![(0, 0)];
                pads.extend(kd.iter().map(|&k| ((k - 1) / 2, k / 2)));
                pads.push((0, 0));
                x = wrap_pad(&x, &pads, &path)?;
                pad = ConvPadding::Valid;
            }
            ConvPadding::Causal => {
                if n != 1 {
                    return Err(flax_err(
                        path,
                        "causal padding is only implemented for 1D convolutions",
                    ));
                }
                let left = k_dil[0]
                    .checked_mul(ks[0].saturating_sub(1))
                    .and_then(|l| i64::try_from(l).ok())
                    .ok_or_else(|| {
                        flax_err(
                            path.clone(),
                            format!(
                                "causal padding of kernel size {} with dilation {} overflows",
                                ks[0], k_dil[0]
                            ),
                        )
                    })?;
                x = x.pad(&x.scalar_like(0.0)?, &[0, left, 0], &[0, 0, 0], &[0, 0, 0])?;
                pad = ConvPadding::Valid;
            }
            _ => {}
        }
        let in_f = x.dims()[x.rank() - 1];
        let g = self.feature_group_count.max(1);
        if !in_f.is_multiple_of(g) {
            return Err(flax_err(
                path,
                format!("input features {in_f} are not divisible by feature_group_count {g}"),
            ));
        }
        let mut kshape = ks.clone();
        kshape.extend([in_f / g, self.features]);
        let kernel = s.param("kernel", &self.kernel_init, &kshape, self.param_dtype)?;
        let bias = features_bias!(s, self);
        let p = promote_with_bias(&x, &kernel, bias, self.dtype)?;
        let spatial = &p[0].dims()[1..=n];
        let padding = match pad {
            ConvPadding::Explicit(v) => v,
            ConvPadding::Valid => vec![(0, 0); n],
            _ => {
                if in_dil.iter().any(|&d| d != 1) {
                    return Err(flax_err(
                        path,
                        "string padding is not implemented for input dilation (lax.conv_general_dilated); give explicit padding",
                    ));
                }
                Padding::Same.resolve(spatial, &kd, &strides)
            }
        };
        let y = p[0].conv_general(
            &p[1],
            &ConvAttrs {
                dims: ConvDims::nhwc(n),
                strides,
                padding,
                lhs_dilation: in_dil,
                rhs_dilation: k_dil,
                feature_group_count: g,
                batch_group_count: 1,
            },
        )?;
        restore_batch(add_bias(y, p.get(2))?, batch)
    }
}
one_input_module!(Conv, "Conv");

/// `lax._conv_transpose_padding`.
fn conv_transpose_padding(k: usize, s: usize, same: bool) -> (i64, i64) {
    let (k, s) = (k as i64, s as i64);
    let (pad_len, pad_a) = if same {
        let pad_len = k + s - 2;
        let pad_a = if s > k - 1 { k - 1 } else { (pad_len + 1) / 2 };
        (pad_len, pad_a)
    } else {
        (k + s - 2 + (k - s).max(0), k - 1)
    };
    (pad_a, pad_len - pad_a)
}

/// `nn.ConvTranspose`: `lax.conv_transpose` (a convolution with input
/// dilation = strides).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvTranspose {
    /// Output features.
    pub features: usize,
    /// Kernel size per spatial dimension.
    pub kernel_size: Vec<usize>,
    /// Strides (empty: 1).
    pub strides: Vec<usize>,
    /// Padding (SAME, VALID, CIRCULAR or explicit).
    pub padding: ConvPadding,
    /// Kernel dilation (empty: 1).
    pub kernel_dilation: Vec<usize>,
    /// Whether to add a bias.
    pub use_bias: bool,
    /// Flip the kernel and swap its feature axes (gradient-of-conv form).
    pub transpose_kernel: bool,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Kernel initializer.
    pub kernel_init: Initializer,
    /// Bias initializer.
    pub bias_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl ConvTranspose {
    /// `nn.ConvTranspose(features, kernel_size)` with Flax's defaults.
    pub fn new(features: usize, kernel_size: &[usize]) -> ConvTranspose {
        ConvTranspose {
            features,
            kernel_size: kernel_size.to_vec(),
            strides: vec![],
            padding: ConvPadding::Same,
            kernel_dilation: vec![],
            use_bias: true,
            transpose_kernel: false,
            dtype: None,
            param_dtype: DType::F32,
            kernel_init: default_kernel_init(),
            bias_init: init::zeros(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> ConvTranspose {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("ConvTranspose", self.name.as_deref(), |s| {
            self.call_in(s, x)
        })
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value) -> Result<Value> {
        let path = s.path_text();
        let ks = &self.kernel_size;
        let n = ks.len();
        if n == 0 {
            return Err(flax_err(path, "ConvTranspose needs a kernel_size"));
        }
        let (x, batch) = flatten_batch(x, n, &path)?;
        let strides = broadcast(&self.strides, n);
        let k_dil = broadcast(&self.kernel_dilation, n);
        let in_f = x.dims()[x.rank() - 1];
        let mut kshape = ks.clone();
        if self.transpose_kernel {
            kshape.extend([self.features, in_f]);
        } else {
            kshape.extend([in_f, self.features]);
        }
        let kernel = s.param("kernel", &self.kernel_init, &kshape, self.param_dtype)?;
        let bias = features_bias!(s, self);
        let p = promote_with_bias(&x, &kernel, bias, self.dtype)?;
        let kd = dilated_kernel(ks, &k_dil);
        let pads: Vec<(i64, i64)> = match &self.padding {
            ConvPadding::Explicit(v) => v.clone(),
            ConvPadding::Same => kd
                .iter()
                .zip(&strides)
                .map(|(&k, &s)| conv_transpose_padding(k, s, true))
                .collect(),
            ConvPadding::Valid | ConvPadding::Circular => kd
                .iter()
                .zip(&strides)
                .map(|(&k, &s)| conv_transpose_padding(k, s, false))
                .collect(),
            ConvPadding::Causal => {
                return Err(flax_err(
                    path,
                    "ConvTranspose does not support CAUSAL padding",
                ))
            }
        };
        let mut k = p[1].clone();
        if self.transpose_kernel {
            k = k.reverse(&(0..n).collect::<Vec<_>>())?;
            let mut perm: Vec<usize> = (0..n + 2).collect();
            perm.swap(n, n + 1);
            k = k.transpose(&perm)?;
        }
        let mut y = p[0].conv_general(
            &k,
            &ConvAttrs {
                dims: ConvDims::nhwc(n),
                strides: vec![1; n],
                padding: pads,
                lhs_dilation: strides.clone(),
                rhs_dilation: k_dil,
                feature_group_count: 1,
                batch_group_count: 1,
            },
        )?;
        if self.padding == ConvPadding::Circular {
            let scaled: Vec<usize> = (0..n).map(|i| p[0].dims()[i + 1] * strides[i]).collect();
            let mut total = vec![(0i64, 0i64)];
            for (i, &sx) in scaled.iter().enumerate() {
                let (yd, xd) = (y.dims()[i + 1] as i64, sx as i64);
                let diff = (-(yd - xd)).rem_euclid(2 * xd);
                total.push(if self.transpose_kernel {
                    (diff / 2, (diff + 1) / 2)
                } else {
                    ((diff + 1) / 2, diff / 2)
                });
            }
            total.push((0, 0));
            let lo: Vec<i64> = total.iter().map(|p| p.0).collect();
            let hi: Vec<i64> = total.iter().map(|p| p.1).collect();
            y = y.pad(&y.scalar_like(0.0)?, &lo, &hi, &vec![0; lo.len()])?;
            for i in 1..=n {
                let d = y.dims().to_vec();
                let sx = scaled[i - 1];
                let mut nd = d[..i].to_vec();
                nd.push(d[i] / sx);
                nd.push(sx);
                nd.extend_from_slice(&d[i + 1..]);
                y = y.reshape(&nd)?.sum(&[i], false)?;
            }
        }
        restore_batch(add_bias(y, p.get(2))?, batch)
    }
}
one_input_module!(ConvTranspose, "ConvTranspose");

/// `nn.Embed`: an `embedding` table `(num_embeddings, features)`; the call
/// takes integer indices, `attend` computes `query @ embedding.T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    /// Table rows.
    pub num_embeddings: usize,
    /// Embedding size.
    pub features: usize,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// Table initializer (default `variance_scaling(1, fan_in, normal, out_axis=0)`).
    pub embedding_init: Initializer,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Embed {
    /// `nn.Embed(num_embeddings, features)`.
    pub fn new(num_embeddings: usize, features: usize) -> Embed {
        Embed {
            num_embeddings,
            features,
            dtype: None,
            param_dtype: DType::F32,
            embedding_init: default_embed_init(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Embed {
        self.name = Some(name.to_string());
        self
    }

    fn table(&self, s: &impl ParamSource) -> Result<Value> {
        s.param(
            "embedding",
            &self.embedding_init,
            &[self.num_embeddings, self.features],
            self.param_dtype,
        )
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, ids: &Value) -> Result<Value> {
        parent.child("Embed", self.name.as_deref(), |s| self.call_in(s, ids))
    }

    /// The lookup in the module's own scope (a Flax [`Scope`], or a
    /// [`crate::builder::VarBuilder`] at the module's path: weight `embedding`).
    pub fn call_in(&self, s: &impl ParamSource, ids: &Value) -> Result<Value> {
        if !ids.dtype().is_int() {
            return Err(flax_err(
                s.path_text(),
                format!(
                    "input type must be an integer or unsigned integer, got {}",
                    ids.spec()
                ),
            ));
        }
        let table = self.table(s)?;
        let e = promote_dtype(&[&table], self.dtype, false)?.remove(0);
        if self.num_embeddings == 1 {
            let mut d = ids.dims().to_vec();
            d.push(self.features);
            return e.broadcast_to(&d);
        }
        e.take(ids, 0)
    }

    /// `attend(query)`: `query @ embedding.T` in the module's own scope.
    pub fn attend_in(&self, s: &impl ParamSource, query: &Value) -> Result<Value> {
        if query.rank() == 0 {
            return Err(flax_err(s.path_text(), "attend needs a query of rank >= 1"));
        }
        let table = self.table(s)?;
        let p = promote_dtype(&[query, &table], self.dtype, true)?;
        p[0].dot_general(
            &p[1],
            &DotDims {
                lhs_contract: vec![query.rank() - 1],
                rhs_contract: vec![1],
                ..Default::default()
            },
        )
    }
}

impl Module for Embed {
    fn type_name(&self) -> String {
        "Embed".into()
    }
    fn methods(&self) -> Vec<MethodSig> {
        vec![MethodSig::new(CALL, false), MethodSig::new("attend", false)]
    }
    fn call_method(
        &self,
        scope: &Scope,
        method: &str,
        inputs: &Tree<Value>,
        _training: Option<bool>,
    ) -> Result<Tree<Value>> {
        let x = inputs.clone().into_leaf()?;
        match method {
            CALL => Ok(Tree::Leaf(self.call_in(scope, &x)?)),
            "attend" => Ok(Tree::Leaf(self.attend_in(scope, &x)?)),
            other => Err(flax_err(
                "Embed".into(),
                format!("module has no method `{other}` (methods: [\"__call__\", \"attend\"])"),
            )),
        }
    }
}
