//! `nn.Conv` (`lax.conv_general_dilated` in NHWC/HWIO layout), its
//! [`ConvPadding`] and the batch and padding helpers `ConvTranspose` shares.

use crate::builder::init::{self, Initializer};
use crate::builder::{ConvAttrs, ConvDims, Padding, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::super::scope::Scope;
use super::{
    add_bias, default_kernel_init, features_bias, flax_err, one_input_module, promote_with_bias,
};

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

pub(super) fn broadcast(v: &[usize], n: usize) -> Vec<usize> {
    match v.len() {
        0 => vec![1; n],
        1 => vec![v[0]; n],
        _ => v.to_vec(),
    }
}

/// The kernel size per spatial dimension after `kernel_dilation`.
pub(super) fn dilated_kernel(kernel_size: &[usize], kernel_dilation: &[usize]) -> Vec<usize> {
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
pub(super) fn flatten_batch(
    x: &Value,
    n_spatial: usize,
    path: &str,
) -> Result<(Value, Option<Vec<usize>>)> {
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

pub(super) fn restore_batch(y: Value, batch: Option<Vec<usize>>) -> Result<Value> {
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
