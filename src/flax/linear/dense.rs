//! `nn.Dense` and `nn.DenseGeneral`: `lax.dot_general` of the input with a
//! kernel, plus a bias.

use crate::builder::init::{self, Initializer};
use crate::builder::{DotDims, ParamSource, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::super::scope::Scope;
use super::{
    add_bias, default_kernel_init, features_bias, flax_err, one_input_module, promote_with_bias,
};

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
