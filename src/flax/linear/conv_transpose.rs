//! `nn.ConvTranspose`: `lax.conv_transpose`, a convolution with input
//! dilation = strides.

use crate::builder::init::{self, Initializer};
use crate::builder::{ConvAttrs, ConvDims, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::super::scope::Scope;
use super::conv::{broadcast, dilated_kernel, flatten_batch, restore_batch, ConvPadding};
use super::{
    add_bias, default_kernel_init, features_bias, flax_err, one_input_module, promote_with_bias,
};

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
