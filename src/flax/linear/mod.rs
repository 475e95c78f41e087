//! `flax.linen.linear`: `Dense`, `DenseGeneral` (`dense.rs`), `Conv`
//! (`conv.rs`), `ConvTranspose` (`conv_transpose.rs`), `Embed` (`embed.rs`),
//! formula for formula (`lax.dot_general`, `lax.conv_general_dilated`,
//! `lax.conv_transpose`), with Flax's defaults and parameter names. This file
//! holds what they share: default initializers, the error and method checks
//! every Flax module uses, and the bias helpers.

mod conv;
mod conv_transpose;
mod dense;
mod embed;

use crate::builder::init::{self, Distribution, Initializer, Mode};
use crate::builder::Value;
use crate::dtype::DType;
use crate::error::{Error, Result};

use super::module::{promote_dtype, CALL};

pub use conv::{Conv, ConvPadding};
pub use conv_transpose::ConvTranspose;
pub use dense::{Dense, DenseGeneral};
pub use embed::Embed;

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

/// Implements [`Module`](super::Module) for a one-input, one-output module with a
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
pub(crate) use features_bias;

/// `promote_dtype(x, kernel[, bias])`.
pub(super) fn promote_with_bias(
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
pub(super) fn add_bias(y: Value, bias: Option<&Value>) -> Result<Value> {
    match bias {
        Some(b) => {
            let b = reshape_bias(b, y.rank())?;
            y + b
        }
        None => Ok(y),
    }
}
