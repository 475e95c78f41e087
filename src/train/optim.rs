//! Optimizers as pure update rules over param trees (the optax idea),
//! traced into the builder so that a whole train step is one program:
//! SGD (momentum, Nesterov), Adam, AdamW, RMSProp; learning-rate
//! schedules; gradient clipping by global norm.
//!
//! Each rule follows optax's formulas operation for operation (same
//! rounding order), so trajectories match optax's to float rounding.

use crate::builder::{Tree, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// A learning-rate schedule, evaluated in the graph at the step count
/// (number of updates already applied, as optax's `scale_by_schedule`).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The same rate at every step.
    Constant(f64),
    /// `optax.cosine_decay_schedule(init, decay_steps, alpha)`.
    CosineDecay {
        /// Initial rate.
        init: f64,
        /// Steps over which to decay.
        decay_steps: usize,
        /// Final rate as a fraction of `init`.
        alpha: f64,
    },
    /// `optax.warmup_cosine_decay_schedule(init, peak, warmup_steps, decay_steps, end)`:
    /// linear warm-up from `init` to `peak`, then cosine decay to `end` at `decay_steps`.
    WarmupCosine {
        /// Rate at step 0.
        init: f64,
        /// Rate at the end of the warm-up.
        peak: f64,
        /// Warm-up length.
        warmup_steps: usize,
        /// Total length (warm-up included).
        decay_steps: usize,
        /// Final rate.
        end: f64,
    },
}

impl From<f64> for Schedule {
    fn from(lr: f64) -> Self {
        Schedule::Constant(lr)
    }
}

fn cosine(
    b: &crate::builder::Builder,
    step: &Value,
    init: f64,
    steps: usize,
    alpha: f64,
) -> Result<Value> {
    // optax: count = min(count, decay_steps); cos = 0.5 (1 + cos(pi count / decay_steps));
    // decayed = (1 - alpha) * cos + alpha; return init * decayed
    let steps = steps.max(1) as f64;
    let count = step.minimum(&b.full(steps, DType::F32, &[])?)?;
    let c = (((count * (std::f64::consts::PI / steps))?.cos()? + 1.0)? * 0.5)?;
    let decayed = ((c * (1.0 - alpha))? + alpha)?;
    decayed * init
}

impl Schedule {
    /// The rate at `step` (an f32 scalar in the graph).
    pub fn at(&self, step: &Value) -> Result<Value> {
        let b = step.builder();
        match self {
            Schedule::Constant(lr) => b.full(*lr, DType::F32, &[]),
            Schedule::CosineDecay {
                init,
                decay_steps,
                alpha,
            } => cosine(b, step, *init, *decay_steps, *alpha),
            Schedule::WarmupCosine {
                init,
                peak,
                warmup_steps,
                decay_steps,
                end,
            } => {
                let w = (*warmup_steps).max(1) as f64;
                let warm = ((step * ((peak - init) / w))? + *init)?;
                let after = (step - w)?;
                let alpha = if *peak == 0.0 { 0.0 } else { end / peak };
                let cos = cosine(
                    b,
                    &after,
                    *peak,
                    decay_steps.saturating_sub(*warmup_steps),
                    alpha,
                )?;
                step.lt(&b.full(w, DType::F32, &[])?)?.select(&warm, &cos)
            }
        }
    }
}

/// An update rule over param trees. `init` gives the optimizer state for
/// some params; `update` gives the new params and state from the gradients.
pub trait Optimizer: Send + Sync {
    /// A short name for messages (`adam`).
    fn name(&self) -> &'static str;
    /// The initial state for `params`.
    fn init(&self, params: &Tree<Value>) -> Result<Tree<Value>>;
    /// `(new params, new state)` after one step with `grads`.
    fn update(
        &self,
        params: &Tree<Value>,
        grads: &Tree<Value>,
        state: &Tree<Value>,
    ) -> Result<(Tree<Value>, Tree<Value>)>;
}

fn zeros_like(t: &Tree<Value>) -> Result<Tree<Value>> {
    t.try_map(&mut |v| v.builder().zeros(v.dtype(), v.dims()))
}

/// `{count: 0i32, slot: zeros like params, ..}`: an optimizer's initial state.
fn init_state(params: &Tree<Value>, slots: &[&str]) -> Result<Tree<Value>> {
    let b = params
        .leaves()
        .first()
        .map(|v| v.builder().clone())
        .unwrap_or_default();
    let mut state = vec![("count", Tree::leaf(b.scalar(0i32)?))];
    for &slot in slots {
        state.push((slot, zeros_like(params)?));
    }
    Ok(Tree::map(state))
}

/// The state's `key` subtree (empty when absent, which [`zip_leaves`] then
/// reports as a structure mismatch).
fn slot(state: &Tree<Value>, key: &str) -> Tree<Value> {
    match state {
        Tree::Map(m) => m.get(key).cloned().unwrap_or(Tree::Empty),
        _ => Tree::Empty,
    }
}

/// The leaves of `trees` (params, grads, state slots: all of one
/// structure), zipped leaf by leaf.
fn zip_leaves<const N: usize>(trees: [&Tree<Value>; N], what: &str) -> Result<Vec<[Value; N]>> {
    let [first, rest @ ..] = trees.as_slice() else {
        return Ok(Vec::new());
    };
    if let Some(other) = rest.iter().find(|t| t.structure() != first.structure()) {
        return Err(Error::StructureMismatch {
            what: format!("{what}: params, grads and state"),
            expected: first.paths(),
            found: other.paths(),
        });
    }
    let leaves = trees.map(|t| t.leaves());
    Ok((0..leaves[0].len())
        .map(|i| std::array::from_fn(|k| leaves[k][i].clone()))
        .collect())
}

/// `p - lr * u`, the rate converted to the param's dtype.
fn descend(p: &Value, u: Value, lr: &Value) -> Result<Value> {
    p + (u * &lr.convert(p.dtype())?)?.neg()?
}

/// `(new params, {count, slot: new slot leaves, ..})`, the leaves arranged
/// as `params`.
fn updated(
    params: &Tree<Value>,
    new_params: Vec<Value>,
    count: Value,
    slots: Vec<(&str, Vec<Value>)>,
) -> Result<(Tree<Value>, Tree<Value>)> {
    let st = params.structure();
    let new_params = st.unflatten(new_params)?;
    let mut state = vec![("count", Tree::leaf(count))];
    for (slot, leaves) in slots {
        state.push((slot, st.unflatten(leaves)?));
    }
    Ok((new_params, Tree::map(state)))
}

fn count_of(state: &Tree<Value>, opt: &str) -> Result<Value> {
    state
        .get("count")
        .cloned()
        .map_err(|_| Error::StructureMismatch {
            what: format!("{opt}: optimizer state"),
            expected: vec!["count".into()],
            found: state.paths(),
        })
}

fn step_f32(count: &Value) -> Result<Value> {
    count.convert(DType::F32)
}

/// `(1 - decay) * g + decay * t` (optax's `update_moment`).
fn moment(g: &Value, t: &Value, decay: f64) -> Result<Value> {
    (g * (1.0 - decay))? + (t * decay)?
}

/// Stochastic gradient descent, optionally with (Nesterov) momentum
/// (`optax.sgd`).
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub lr: Schedule,
    /// Momentum (`None`: plain SGD).
    pub momentum: Option<f64>,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Sgd {
    /// Plain SGD with rate `lr`.
    pub fn new(lr: impl Into<Schedule>) -> Self {
        Sgd {
            lr: lr.into(),
            momentum: None,
            nesterov: false,
        }
    }

    /// With momentum.
    pub fn momentum(mut self, m: f64, nesterov: bool) -> Self {
        self.momentum = Some(m);
        self.nesterov = nesterov;
        self
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn init(&self, params: &Tree<Value>) -> Result<Tree<Value>> {
        init_state(params, &["trace"])
    }

    fn update(
        &self,
        params: &Tree<Value>,
        grads: &Tree<Value>,
        state: &Tree<Value>,
    ) -> Result<(Tree<Value>, Tree<Value>)> {
        let count = count_of(state, "sgd")?;
        let lr = self.lr.at(&step_f32(&count)?)?;
        let trace = slot(state, "trace");
        let mut new_params = Vec::new();
        let mut new_trace = Vec::new();
        for [p, g, t] in zip_leaves([params, grads, &trace], "sgd")? {
            let update = match self.momentum {
                None => {
                    new_trace.push(t);
                    g
                }
                Some(m) => {
                    let nt = (&g + (&t * m)?)?;
                    let u = if self.nesterov {
                        (&g + (&nt * m)?)?
                    } else {
                        nt.clone()
                    };
                    new_trace.push(nt);
                    u
                }
            };
            new_params.push(descend(&p, update, &lr)?);
        }
        updated(
            params,
            new_params,
            (count + 1.0)?,
            vec![("trace", new_trace)],
        )
    }
}

/// Adam (`optax.adam`), and AdamW with `weight_decay` (`optax.adamw`).
#[derive(Debug, Clone)]
pub struct Adam {
    /// Learning rate.
    pub lr: Schedule,
    /// First-moment decay.
    pub b1: f64,
    /// Second-moment decay.
    pub b2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Added inside the square root.
    pub eps_root: f64,
    /// Decoupled weight decay (AdamW); `None` for Adam.
    pub weight_decay: Option<f64>,
}

impl Adam {
    /// Adam with optax's defaults (b1 0.9, b2 0.999, eps 1e-8).
    pub fn new(lr: impl Into<Schedule>) -> Self {
        Adam {
            lr: lr.into(),
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: None,
        }
    }

    /// AdamW with optax's default weight decay 1e-4.
    pub fn adamw(lr: impl Into<Schedule>, weight_decay: f64) -> Self {
        Adam {
            weight_decay: Some(weight_decay),
            ..Adam::new(lr)
        }
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &'static str {
        if self.weight_decay.is_some() {
            "adamw"
        } else {
            "adam"
        }
    }

    fn init(&self, params: &Tree<Value>) -> Result<Tree<Value>> {
        init_state(params, &["mu", "nu"])
    }

    fn update(
        &self,
        params: &Tree<Value>,
        grads: &Tree<Value>,
        state: &Tree<Value>,
    ) -> Result<(Tree<Value>, Tree<Value>)> {
        let name = self.name();
        let count = count_of(state, name)?;
        let get = |k: &str| {
            state
                .subtree(k)
                .cloned()
                .map_err(|_| Error::StructureMismatch {
                    what: format!("{name}: optimizer state"),
                    expected: vec![format!("{k}/...")],
                    found: state.paths(),
                })
        };
        let (mu, nu) = (get("mu")?, get("nu")?);
        let lr = self.lr.at(&step_f32(&count)?)?;
        let count_inc = (&count + 1.0)?;
        let t = step_f32(&count_inc)?;
        let b = count.builder();
        // Bias corrections 1 - b^t, computed in f32 as optax does.
        let c1 = (b.full(self.b1, DType::F32, &[])?.pow(&t)?.neg()? + 1.0)?;
        let c2 = (b.full(self.b2, DType::F32, &[])?.pow(&t)?.neg()? + 1.0)?;
        let (mut new_p, mut new_mu, mut new_nu) = (Vec::new(), Vec::new(), Vec::new());
        for [p, g, m, v] in zip_leaves([params, grads, &mu, &nu], name)? {
            let m1 = moment(&g, &m, self.b1)?;
            let v1 = moment(&g.square()?, &v, self.b2)?;
            let m_hat = (&m1 / &c1.convert(g.dtype())?)?;
            let v_hat = (&v1 / &c2.convert(g.dtype())?)?;
            let mut u = (m_hat / ((v_hat + self.eps_root)?.sqrt()? + self.eps)?)?;
            if let Some(wd) = self.weight_decay {
                u = (u + (&p * wd)?)?;
            }
            new_p.push(descend(&p, u, &lr)?);
            new_mu.push(m1);
            new_nu.push(v1);
        }
        updated(
            params,
            new_p,
            count_inc.convert(DType::I32)?,
            vec![("mu", new_mu), ("nu", new_nu)],
        )
    }
}

/// RMSProp (`optax.rmsprop`): `g * rsqrt(nu + eps)` with `nu` the decayed
/// mean of squared gradients (starting at 0).
#[derive(Debug, Clone)]
pub struct RmsProp {
    /// Learning rate.
    pub lr: Schedule,
    /// Decay of the squared-gradient average.
    pub decay: f64,
    /// Added inside the square root.
    pub eps: f64,
}

impl RmsProp {
    /// RMSProp with optax's defaults (decay 0.9, eps 1e-8).
    pub fn new(lr: impl Into<Schedule>) -> Self {
        RmsProp {
            lr: lr.into(),
            decay: 0.9,
            eps: 1e-8,
        }
    }
}

impl Optimizer for RmsProp {
    fn name(&self) -> &'static str {
        "rmsprop"
    }

    fn init(&self, params: &Tree<Value>) -> Result<Tree<Value>> {
        init_state(params, &["nu"])
    }

    fn update(
        &self,
        params: &Tree<Value>,
        grads: &Tree<Value>,
        state: &Tree<Value>,
    ) -> Result<(Tree<Value>, Tree<Value>)> {
        let count = count_of(state, "rmsprop")?;
        let nu = slot(state, "nu");
        let lr = self.lr.at(&step_f32(&count)?)?;
        let (mut new_p, mut new_nu) = (Vec::new(), Vec::new());
        for [p, g, v] in zip_leaves([params, grads, &nu], "rmsprop")? {
            let v1 = moment(&g.square()?, &v, self.decay)?;
            let u = (&g * (&v1 + self.eps)?.rsqrt()?)?;
            new_p.push(descend(&p, u, &lr)?);
            new_nu.push(v1);
        }
        updated(params, new_p, (count + 1.0)?, vec![("nu", new_nu)])
    }
}

/// Scales gradients so that their global norm is at most `max_norm`
/// (`optax.clip_by_global_norm`), then applies `inner`.
pub struct ClipByGlobalNorm<O> {
    /// The largest allowed global norm.
    pub max_norm: f64,
    /// The optimizer applied to the clipped gradients.
    pub inner: O,
}

/// The global L2 norm of a tree of gradients.
pub fn global_norm(grads: &Tree<Value>) -> Result<Value> {
    let leaves = grads.leaves();
    let first = leaves.first().ok_or_else(|| Error::OutOfRange {
        function: "global_norm",
        what: "leaves of the tree".into(),
        value: "0".into(),
        expected: "at least 1".into(),
    })?;
    let mut total = first.builder().scalar(0f32)?;
    for g in leaves {
        let axes: Vec<usize> = (0..g.rank()).collect();
        total = (total + g.square()?.sum(&axes, false)?.convert(DType::F32)?)?;
    }
    total.sqrt()
}

impl<O: Optimizer> Optimizer for ClipByGlobalNorm<O> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn init(&self, params: &Tree<Value>) -> Result<Tree<Value>> {
        self.inner.init(params)
    }

    fn update(
        &self,
        params: &Tree<Value>,
        grads: &Tree<Value>,
        state: &Tree<Value>,
    ) -> Result<(Tree<Value>, Tree<Value>)> {
        let norm = global_norm(grads)?;
        let max = norm.builder().full(self.max_norm, DType::F32, &[])?;
        let keep = norm.lt(&max)?;
        let clipped = grads.try_map(&mut |g| {
            let scaled = ((g / &norm.convert(g.dtype())?)? * self.max_norm)?;
            keep.select(g, &scaled)
        })?;
        self.inner.update(params, &clipped, state)
    }
}
