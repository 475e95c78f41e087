//! Losses and metrics with Keras's semantics: per-example losses averaged
//! over the batch (`sum_over_batch_size`), probabilities clipped to
//! `[1e-7, 1 - 1e-7]` when not from logits.

use crate::builder::{nn, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// Keras's `backend.epsilon()`.
pub const EPSILON: f64 = 1e-7;

/// A loss function of Keras's catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// One-hot targets; `from_logits` or probabilities.
    CategoricalCrossentropy {
        /// Predictions are logits.
        from_logits: bool,
    },
    /// Integer class targets.
    SparseCategoricalCrossentropy {
        /// Predictions are logits.
        from_logits: bool,
    },
    /// Targets in {0, 1} (or probabilities).
    BinaryCrossentropy {
        /// Predictions are logits.
        from_logits: bool,
    },
    /// Mean squared error over the last axis.
    MeanSquaredError,
    /// Mean absolute error over the last axis.
    MeanAbsoluteError,
}

fn last(v: &Value) -> usize {
    v.rank().saturating_sub(1)
}

fn check(loss: &str, y_true: &Value, y_pred: &Value, same_shape: bool) -> Result<()> {
    if !y_pred.dtype().is_float() || y_pred.rank() == 0 {
        return Err(Error::Op {
            op: "loss",
            message: format!(
                "{loss}: predictions must be a float array, got {}",
                y_pred.spec()
            ),
        });
    }
    if same_shape && y_true.dims() != y_pred.dims() {
        return Err(Error::Op {
            op: "loss",
            message: format!(
                "{loss}: targets {} and predictions {} differ in shape",
                y_true.spec(),
                y_pred.spec()
            ),
        });
    }
    Ok(())
}

impl Loss {
    /// The name Keras prints.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CategoricalCrossentropy { .. } => "categorical_crossentropy",
            Loss::SparseCategoricalCrossentropy { .. } => "sparse_categorical_crossentropy",
            Loss::BinaryCrossentropy { .. } => "binary_crossentropy",
            Loss::MeanSquaredError => "mean_squared_error",
            Loss::MeanAbsoluteError => "mean_absolute_error",
        }
    }

    /// Per-example losses (batch shape).
    pub fn per_example(&self, y_true: &Value, y_pred: &Value) -> Result<Value> {
        let name = self.name();
        match *self {
            Loss::CategoricalCrossentropy { from_logits } => {
                check(name, y_true, y_pred, true)?;
                let t = y_true.convert(y_pred.dtype())?;
                let ax = last(y_pred);
                let logp = if from_logits {
                    nn::log_softmax(y_pred, ax)?
                } else {
                    let p = (y_pred / &y_pred.sum(&[ax], true)?)?;
                    p.clamp(&p.scalar_like(EPSILON)?, &p.scalar_like(1.0 - EPSILON)?)?
                        .log()?
                };
                (t * logp)?.sum(&[ax], false)?.neg()
            }
            Loss::SparseCategoricalCrossentropy { from_logits } => {
                check(name, y_true, y_pred, false)?;
                if !y_true.dtype().is_int() || y_true.rank() + 1 != y_pred.rank() {
                    return Err(Error::Op {
                        op: "loss",
                        message: format!(
                            "{name}: targets must be integer class ids of shape {:?}, got {}",
                            &y_pred.dims()[..y_pred.rank() - 1],
                            y_true.spec()
                        ),
                    });
                }
                let classes = y_pred.dims()[last(y_pred)];
                let one_hot = nn::one_hot(y_true, classes, y_pred.dtype())?;
                Loss::CategoricalCrossentropy { from_logits }.per_example(&one_hot, y_pred)
            }
            Loss::BinaryCrossentropy { from_logits } => {
                check(name, y_true, y_pred, true)?;
                let z = y_true.convert(y_pred.dtype())?;
                let ax = last(y_pred);
                let per = if from_logits {
                    // max(x, 0) - x z + log(1 + exp(-|x|))
                    let x = y_pred;
                    ((nn::relu(x)? - (x * &z)?)? + x.abs()?.neg()?.exp()?.log1p()?)?
                } else {
                    let p = y_pred.clamp(
                        &y_pred.scalar_like(EPSILON)?,
                        &y_pred.scalar_like(1.0 - EPSILON)?,
                    )?;
                    let a = (&z * (&p + EPSILON)?.log()?)?;
                    let b = ((z.neg()? + 1.0)? * ((p.neg()? + 1.0)? + EPSILON)?.log()?)?;
                    (a + b)?.neg()?
                };
                per.mean(&[ax], false)
            }
            Loss::MeanSquaredError => {
                check(name, y_true, y_pred, true)?;
                (y_pred - &y_true.convert(y_pred.dtype())?)?
                    .square()?
                    .mean(&[last(y_pred)], false)
            }
            Loss::MeanAbsoluteError => {
                check(name, y_true, y_pred, true)?;
                (y_pred - &y_true.convert(y_pred.dtype())?)?
                    .abs()?
                    .mean(&[last(y_pred)], false)
            }
        }
    }

    /// The batch loss: per-example losses averaged (an f32 scalar).
    pub fn compute(&self, y_true: &Value, y_pred: &Value) -> Result<Value> {
        let per = self.per_example(y_true, y_pred)?;
        let axes: Vec<usize> = (0..per.rank()).collect();
        per.convert(DType::F32)?.mean(&axes, false)
    }
}

/// Fraction of examples whose arg-max prediction equals the target: integer
/// class ids, or one-hot targets (same shape as the predictions).
pub fn accuracy(y_true: &Value, y_pred: &Value) -> Result<Value> {
    let ax = last(y_pred);
    let pred = y_pred.argmax(ax, DType::I32)?;
    let truth = if y_true.dims() == y_pred.dims() {
        y_true.argmax(ax, DType::I32)?
    } else {
        y_true.convert(DType::I32)?
    };
    if truth.dims() != pred.dims() {
        return Err(Error::Op {
            op: "accuracy",
            message: format!(
                "targets {} do not match predictions {}",
                y_true.spec(),
                y_pred.spec()
            ),
        });
    }
    let axes: Vec<usize> = (0..pred.rank()).collect();
    truth.eq(&pred)?.convert(DType::F32)?.mean(&axes, false)
}
