//! `FlaxLayer`: a [`Module`] (and a method) as a Keras layer, as Keras's
//! `keras.layers.FlaxLayer`: `params` trainable, every other collection
//! non-trainable state updated by training calls, `init` at build.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::builder::{random, Builder, Tree, Value};
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::layers::layer::sealed::{LayerHooks, Seal, Sealed};
use crate::layers::{
    CallArgs, DTypePolicy, Inputs, JaxLayer, Layer, OutState, Params, Rng, State, Training, Weights,
};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

use super::checkpoint::{load_variables, save_variables};
use super::module::{apply_traced, init_traced, Method, Module};
use super::scope::Mutable;

static FLAX_COUNT: AtomicU64 = AtomicU64::new(0);

/// Splits Flax variables `{params, other collections...}` into Keras's
/// params (the `params` collection) and state (every other collection, by
/// collection name).
pub fn split_variables<T>(variables: Tree<T>) -> Result<(Tree<T>, Tree<T>)> {
    match variables {
        Tree::Empty => Ok((Tree::Empty, Tree::Empty)),
        Tree::Map(mut m) => {
            let params = m.remove("params").unwrap_or(Tree::Empty);
            let state = if m.values().all(|t| t.is_empty()) {
                Tree::Empty
            } else {
                m.retain(|_, t| !t.is_empty());
                Tree::Map(m)
            };
            Ok((params, state))
        }
        other => Err(Error::NotAMap {
            what: "flax variables (a map of collections)".into(),
            paths: other.paths(),
        }),
    }
}

/// Joins params and state back into Flax variables.
pub fn join_variables<T: Clone>(params: &Tree<T>, state: &Tree<T>) -> Tree<T> {
    let mut m = BTreeMap::new();
    if !params.is_empty() {
        m.insert("params".to_string(), params.clone());
    }
    if let Tree::Map(s) = state {
        for (k, v) in s {
            m.insert(k.clone(), v.clone());
        }
    }
    Tree::Map(m)
}

/// A Flax module as a Keras layer (Keras's `FlaxLayer`).
///
/// - `method`: [`Method::Call`] (default), [`Method::Named`], or
///   [`Method::Free`] (a function taking the module first); `training` is
///   passed only when the method takes it.
/// - `variables` (as `module.init` returns them): `params` become the
///   trainable weights, every other collection non-trainable state; without
///   them `init` runs at build with rngs `params` and `dropout` (two keys
///   split from the layer's key) and `training = true`.
/// - Calls: `apply` with `mutable` = every collection but `params`; a
///   training call gets a fresh `dropout` rng and keeps the updated state,
///   an inference call gets no rng and keeps the old state.
///
/// It is a [`Layer`]: it goes into `Sequential` and functional `Model`s.
///
/// ```
/// use xlayer::builder::{nn, Tree};
/// use xlayer::flax::{Dense, FlaxLayer, FnModule};
/// use xlayer::layers::{Layer, Training};
/// use xlayer::Client;
/// let client = Client::cpu()?;
/// let module = FnModule::new("MLP").call(|s, x, _| {
///     let x = x.clone().into_leaf()?;
///     let h = nn::relu(&Dense::new(4).apply(s, &x)?)?;
///     Ok(Tree::leaf(Dense::new(2).apply(s, &h)?))
/// });
/// let layer = FlaxLayer::builder(module).seed(0).build()?;
/// let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?;
/// assert_eq!(layer.call1(&x, Training::No)?.dims(), &[1, 2]);
/// assert_eq!(layer.trainable_weight_count()?, 4); // Dense_0/1 kernel and bias
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Clone)]
pub struct FlaxLayer {
    inner: JaxLayer,
    module_name: String,
}

impl std::fmt::Debug for FlaxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlaxLayer({}, {})", self.inner.name(), self.module_name)
    }
}

/// Configures a [`FlaxLayer`].
pub struct FlaxLayerBuilder {
    module: Arc<dyn Module>,
    method: Method,
    variables: Option<Tree<Buffer>>,
    name: Option<String>,
    seed: Option<u32>,
    policy: DTypePolicy,
}

fn builder_of(x: &Tree<Value>, p: &Tree<Value>, s: &Tree<Value>) -> Builder {
    x.leaves()
        .first()
        .copied()
        .or_else(|| p.leaves().first().copied())
        .or_else(|| s.leaves().first().copied())
        .map(|v| v.builder().clone())
        .unwrap_or_default()
}

impl FlaxLayerBuilder {
    /// The method to run (default: the call).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// Ready variables `{params: ..., batch_stats: ...}` (skips `init`).
    pub fn variables(mut self, variables: Tree<Buffer>) -> Self {
        self.variables = Some(variables);
        self
    }

    /// The layer's name (default `flax_layer`, `flax_layer_1`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Seed of the layer's keys (default: random).
    pub fn seed(mut self, seed: u32) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The dtype policy (default float32).
    pub fn dtype_policy(mut self, policy: DTypePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Checks the method and creates the layer.
    ///
    /// Errors: [`Error::Flax`] for a named method the module does not have;
    /// [`Error::NotAMap`] for variables that are not a map of collections.
    pub fn build(self) -> Result<FlaxLayer> {
        let takes_training = self.method.takes_training(self.module.as_ref())?;
        let module_name = self.module.type_name();
        let n = FLAX_COUNT.fetch_add(1, Ordering::Relaxed);
        let name = self.name.unwrap_or_else(|| {
            if n == 0 {
                "flax_layer".into()
            } else {
                format!("flax_layer_{n}")
            }
        });
        let training_arg = move |t: Training| takes_training.then_some(t.is_yes());
        let (m1, me1) = (self.module.clone(), self.method.clone());
        let call = move |Params(p): Params,
                         State(st): State,
                         rng: Option<Rng>,
                         Inputs(x): Inputs,
                         t: Training| {
            let b = builder_of(&x, &p, &st);
            let vars = join_variables(&p, &st);
            let mut rngs = BTreeMap::new();
            if let Some(Rng(k)) = rng {
                rngs.insert("dropout".to_string(), k);
            }
            let (y, mutated) = apply_traced(
                &b,
                m1.as_ref(),
                &me1,
                &vars,
                rngs,
                Mutable::all_but_params(),
                &x,
                training_arg(t),
            )?;
            let new_state = if t.is_yes() && !st.is_empty() {
                split_variables(mutated)?.1
            } else {
                st
            };
            Ok(OutState(y, new_state))
        };
        let (m2, me2) = (self.module.clone(), self.method.clone());
        let init = move |Rng(k): Rng, Inputs(x): Inputs, t: Training| {
            let b = k.builder().clone();
            let keys = random::split_keys(&k, 2)?;
            let rngs = BTreeMap::from([
                ("params".to_string(), keys[0].clone()),
                ("dropout".to_string(), keys[1].clone()),
            ]);
            let (_, vars) = init_traced(&b, m2.as_ref(), &me2, rngs, &x, training_arg(t))?;
            let (p, s) = split_variables(vars)?;
            Ok(crate::layers::InitState(p, s))
        };
        let mut jb = JaxLayer::builder(call)
            .init_fn(init)
            .name(&name)
            .dtype_policy(self.policy);
        if let Some(seed) = self.seed {
            jb = jb.seed(seed);
        }
        if let Some(vars) = self.variables {
            let (p, s) = split_variables(vars)?;
            jb = jb.params(p).state(s);
        }
        Ok(FlaxLayer {
            inner: jb.build()?,
            module_name,
        })
    }
}

impl FlaxLayer {
    /// Starts configuring a layer around `module`.
    pub fn builder(module: impl Module + 'static) -> FlaxLayerBuilder {
        FlaxLayer::builder_shared(Arc::new(module))
    }

    /// [`FlaxLayer::builder`] for a shared module.
    pub fn builder_shared(module: Arc<dyn Module>) -> FlaxLayerBuilder {
        FlaxLayerBuilder {
            module,
            method: Method::Call,
            variables: None,
            name: None,
            seed: None,
            policy: DTypePolicy::Float32,
        }
    }

    /// A layer running `module`'s call, initialized at build.
    pub fn new(module: impl Module + 'static) -> Result<FlaxLayer> {
        FlaxLayer::builder(module).build()
    }

    /// The wrapped module's class name.
    pub fn module_name(&self) -> &str {
        &self.module_name
    }

    /// Number of trainable weight arrays (the `params` leaves).
    pub fn trainable_weight_count(&self) -> Result<usize> {
        self.inner.trainable_weight_count()
    }

    /// Number of non-trainable weight arrays (leaves of other collections).
    pub fn non_trainable_weight_count(&self) -> Result<usize> {
        self.inner.non_trainable_weight_count()
    }

    /// The variables in Flax's form `{params: ..., batch_stats: ...}`.
    pub fn variables(&self) -> Result<Tree<Arc<Buffer>>> {
        let w = self.inner.weights()?;
        Ok(join_variables(&w.params, &w.state))
    }

    /// Saves the variables as a Flax-style safetensors checkpoint
    /// (`params.Dense_0.kernel`, `batch_stats.BatchNorm_0.mean`).
    pub fn save_variables(&self, path: impl AsRef<Path>) -> Result<()> {
        save_variables(path, &self.variables()?)
    }

    /// Loads a Flax-style checkpoint into the (built) layer: every tensor is
    /// checked against the current variables before anything changes. The
    /// variables go to the layer's client.
    ///
    /// Errors: an unbuilt layer; those of [`super::load_variables`].
    pub fn load_variables(&self, path: impl AsRef<Path>) -> Result<()> {
        let client = &self.inner.client().ok_or_else(|| Error::NotBuilt {
            layer: self.inner.name().to_string(),
        })?;
        let current = self.inner.weights()?;
        let wanted = join_variables(&current.param_specs(), &current.state_specs());
        let vars = load_variables(client, path, Some(&wanted))?;
        let (p, s) = split_variables(vars.into_arcs())?;
        self.inner.set_weights(Weights {
            params: p,
            state: s,
        })
    }
}

impl Layer for FlaxLayer {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn kind(&self) -> &'static str {
        "FlaxLayer"
    }
    fn is_built(&self) -> bool {
        self.inner.is_built()
    }
    fn build(&self, client: &Client, input: &Tree<ArraySpec>) -> Result<()> {
        self.inner.build(client, input)
    }
    fn weights(&self) -> Result<Weights> {
        self.inner.weights()
    }
    fn set_weights(&self, weights: Weights) -> Result<()> {
        self.inner.set_weights(weights)
    }
    fn trace_call(&self, b: &Builder, args: CallArgs) -> Result<(Tree<Value>, Tree<Value>)> {
        self.inner.trace_call(b, args)
    }
    fn dtype_policy(&self) -> DTypePolicy {
        self.inner.dtype_policy()
    }
}

impl Sealed for FlaxLayer {
    fn hooks(&self, _: Seal) -> &dyn LayerHooks {
        &self.inner
    }
}
