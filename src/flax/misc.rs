//! `nn.Dropout`, `nn.Sequential`, pooling (`avg_pool`, `max_pool`,
//! `min_pool`) as in `flax/linen/stochastic.py`, `combinators.py` and
//! `pooling.py`.

use std::sync::Arc;

use crate::builder::{random, Padding, Pool, Tree, Value};
use crate::error::Result;

use super::linear::{flax_err, one_input_module};
use super::module::{merge_param, Module, CALL};
use super::scope::Scope;

/// `nn.Dropout`: in non-deterministic mode keeps each element with
/// probability `1 - rate` (a `bernoulli` mask from the `dropout` stream)
/// and scales kept ones by `1 / (1 - rate)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropout {
    /// Drop probability.
    pub rate: f64,
    /// Axes sharing one mask value.
    pub broadcast_dims: Vec<usize>,
    /// Deterministic (no dropout), unless given per call.
    pub deterministic: Option<bool>,
    /// The rng stream (default `dropout`).
    pub rng_collection: String,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl Dropout {
    /// `nn.Dropout(rate)`.
    pub fn new(rate: f64) -> Dropout {
        Dropout {
            rate,
            broadcast_dims: vec![],
            deterministic: None,
            rng_collection: "dropout".into(),
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Dropout {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`; `deterministic` is merged
    /// with the field (exactly one must be set).
    pub fn apply(&self, parent: &Scope, x: &Value, deterministic: Option<bool>) -> Result<Value> {
        parent.child("Dropout", self.name.as_deref(), |s| {
            self.call_in(s, x, deterministic)
        })
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value, deterministic: Option<bool>) -> Result<Value> {
        let det = merge_param(s, "deterministic", self.deterministic, deterministic)?;
        if self.rate == 0.0 || det {
            return Ok(x.clone());
        }
        if self.rate == 1.0 {
            return x.builder().zeros(x.dtype(), x.dims());
        }
        let keep_prob = 1.0 - self.rate;
        let rng = s.make_rng(&self.rng_collection)?;
        let mut shape = x.dims().to_vec();
        for &d in &self.broadcast_dims {
            if d >= shape.len() {
                return Err(flax_err(
                    s.path_text(),
                    format!("broadcast dim {d} out of range for {}", x.spec()),
                ));
            }
            shape[d] = 1;
        }
        let mask = random::bernoulli(&rng, keep_prob, &shape)?.broadcast_to(x.dims())?;
        let scaled = (x / keep_prob)?;
        mask.select(&scaled, &x.builder().zeros(x.dtype(), x.dims())?)
    }
}

one_input_module!(Dropout, "Dropout", not_training: deterministic);

/// A function step of a [`Sequential`].
pub type StepFn = dyn Fn(&Value) -> Result<Value> + Send + Sync;

/// One step of a [`Sequential`]: a module (a submodule `layers_{i}`) or a
/// function (an activation, a reshape).
#[derive(Clone)]
pub enum Step {
    /// A submodule, called with its `__call__`.
    Module(Arc<dyn Module>),
    /// A function of the previous output.
    Fn(Arc<StepFn>),
}

/// `nn.Sequential([...])`: submodules are named `layers_{i}` by their
/// position in the list, as Flax names list attributes.
#[derive(Clone, Default)]
pub struct Sequential {
    /// The steps.
    pub layers: Vec<Step>,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sequential({} layers)", self.layers.len())
    }
}

impl Sequential {
    /// An empty sequence.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a module.
    pub fn module(mut self, m: impl Module + 'static) -> Sequential {
        self.layers.push(Step::Module(Arc::new(m)));
        self
    }

    /// Appends a function.
    pub fn func(
        mut self,
        f: impl Fn(&Value) -> Result<Value> + Send + Sync + 'static,
    ) -> Sequential {
        self.layers.push(Step::Fn(Arc::new(f)));
        self
    }

    /// Calls the module as a child of `parent`.
    pub fn apply(&self, parent: &Scope, x: &Value) -> Result<Value> {
        parent.child("Sequential", self.name.as_deref(), |s| self.call_in(s, x))
    }

    /// The module's body in its own scope.
    pub fn call_in(&self, s: &Scope, x: &Value) -> Result<Value> {
        if self.layers.is_empty() {
            return Err(flax_err(s.path_text(), "empty Sequential"));
        }
        let mut y = x.clone();
        for (i, step) in self.layers.iter().enumerate() {
            y = match step {
                Step::Fn(f) => f(&y)?,
                Step::Module(m) => {
                    let c = s.push(&m.type_name(), Some(&format!("layers_{i}")))?;
                    m.call_method(&c, CALL, &Tree::Leaf(y), None)?.into_leaf()?
                }
            };
        }
        Ok(y)
    }
}

one_input_module!(Sequential, "Sequential");

/// Padding of the pooling functions.
fn pool_padding(padding: &Padding, x: &Value, nw: usize) -> Padding {
    match padding {
        Padding::Explicit(p) => {
            let nb = x.rank() - nw - 1;
            let mut full = vec![(0, 0); nb];
            full.extend_from_slice(p);
            full.push((0, 0));
            Padding::Explicit(full)
        }
        other => other.clone(),
    }
}

fn full_window(x: &Value, window: &[usize], strides: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
    if x.rank() < window.len() + 1 {
        return Err(flax_err(
            "pool".into(),
            format!(
                "input {} has too few dimensions for window {window:?}",
                x.spec()
            ),
        ));
    }
    let strides = if strides.is_empty() {
        vec![1; window.len()]
    } else {
        strides.to_vec()
    };
    if strides.len() != window.len() {
        return Err(flax_err(
            "pool".into(),
            format!("strides {strides:?} do not match window {window:?}"),
        ));
    }
    let nb = x.rank() - window.len() - 1;
    let mut w = vec![1; nb];
    w.extend_from_slice(window);
    w.push(1);
    let mut s = vec![1; nb];
    s.extend_from_slice(&strides);
    s.push(1);
    Ok((w, s))
}

/// `nn.avg_pool(x, window_shape, strides, padding, count_include_pad)`:
/// windows over the spatial axes of `[batch..., spatial..., features]`.
pub fn avg_pool(
    x: &Value,
    window: &[usize],
    strides: &[usize],
    padding: &Padding,
    count_include_pad: bool,
) -> Result<Value> {
    let (w, s) = full_window(x, window, strides)?;
    let p = pool_padding(padding, x, window.len());
    let pool = Pool::new(&w).strides(&s).padding(p);
    let y = x.sum_pool(&pool)?;
    if count_include_pad {
        y / window.iter().product::<usize>() as f64
    } else {
        let ones = x.builder().ones(x.dtype(), x.dims())?;
        y / ones.sum_pool(&pool)?
    }
}

/// `nn.max_pool(x, window_shape, strides, padding)`.
pub fn max_pool(
    x: &Value,
    window: &[usize],
    strides: &[usize],
    padding: &Padding,
) -> Result<Value> {
    let (w, s) = full_window(x, window, strides)?;
    x.max_pool(
        &Pool::new(&w)
            .strides(&s)
            .padding(pool_padding(padding, x, window.len())),
    )
}

/// `nn.min_pool(x, window_shape, strides, padding)`.
pub fn min_pool(
    x: &Value,
    window: &[usize],
    strides: &[usize],
    padding: &Padding,
) -> Result<Value> {
    let (w, s) = full_window(x, window, strides)?;
    x.min_pool(
        &Pool::new(&w)
            .strides(&s)
            .padding(pool_padding(padding, x, window.len())),
    )
}
