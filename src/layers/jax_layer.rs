//! `JaxLayer`: a layer from a call function (and optionally an init
//! function, or ready params/state), as Keras's `keras.layers.JaxLayer`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::builder::{Builder, Tree, Value};
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::jit::Layout;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

use super::layer::sealed::{LayerHooks, Seal, Sealed};
use super::layer::{DTypePolicy, Layer, Weights};
use super::runner::Runner;
use super::signature::{CallArgs, DynFn, IntoCallFn, IntoInitFn, Needs, Training};

struct Store {
    weights: Option<Weights>,
    /// Cached for the call fast path: params in flatten order, and the
    /// layout; refreshed whenever `weights` is replaced.
    flat_params: Vec<Arc<Buffer>>,
    layout: Option<(Layout, bool)>,
    counter: u32,
    /// Fixed at build (or by ready weights' buffers).
    client: Option<Client>,
}

impl Store {
    fn set(&mut self, w: Weights) {
        if self.client.is_none() {
            self.client = w
                .params
                .leaves()
                .into_iter()
                .chain(w.state.leaves())
                .next()
                .map(|b| b.client().clone());
        }
        self.flat_params = w.params.leaves().into_iter().cloned().collect();
        self.layout = Some((w.layout(), !w.state.is_empty()));
        self.weights = Some(w);
    }
}

struct Inner {
    name: String,
    call_fn: Box<DynFn>,
    call_needs: Needs,
    init_fn: Option<Box<DynFn>>,
    seed: u32,
    policy: DTypePolicy,
    store: Mutex<Store>,
    runner: Runner,
}

/// A layer wrapping a call function over the builder, as Keras's `JaxLayer`.
///
/// `call_fn` takes any of [`Params`](super::Params), [`State`](super::State),
/// [`Rng`](super::Rng), [`Inputs`](super::Inputs) (required),
/// [`Training`](super::Training), in any order, and returns
/// [`Out`](super::Out) or, when it takes `State`, [`OutState`](super::OutState).
/// `init_fn` takes any of `Rng`, `Inputs`, `Training` and returns
/// [`Init`](super::Init) or [`InitState`](super::InitState); it runs once at
/// build with placeholder inputs shaped (and typed) like the first real input
/// and [`Training::Yes`]. Params and state live on the device as buffers,
/// on the client the layer is built on (see [`Layer`]).
///
/// Cloning gives the same layer (shared weights).
///
/// ```
/// use xlayer::builder::{nn, Tree};
/// use xlayer::layers::{Init, Inputs, JaxLayer, Layer, Out, Params, Rng, Training};
/// use xlayer::{ArraySpec, Client, DType};
/// let client = Client::cpu()?;
/// // Keras: def call(params, inputs) / def init(rng, inputs)
/// let layer = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
///     let x = x.into_leaf()?;
///     let y = x.matmul(p.get("w")?)?;
///     Ok(Out::from(nn::relu(&(y + p.get("b")?)?)?))
/// })
/// .init_fn(|Inputs(x): Inputs| {
///     let x = x.into_leaf()?;
///     let b = x.builder();
///     let n = x.dims()[1];
///     Ok(Init(Tree::map([
///         ("w", Tree::leaf(b.ones(DType::F32, &[n, 4])?)),
///         ("b", Tree::leaf(b.zeros(DType::F32, &[4])?)),
///     ])))
/// })
/// .build()?;
/// let x = client.buffer_from_host(&[1f32, 2.0, 3.0, -1.0, -2.0, -3.0], &[2, 3])?;
/// let y = layer.call1(&x, Training::No)?;
/// assert_eq!(y.to_vec::<f32>()?, vec![6.0, 6.0, 6.0, 6.0, 0.0, 0.0, 0.0, 0.0]);
/// assert_eq!(layer.trainable_weight_count()?, 2);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Clone)]
pub struct JaxLayer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JaxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JaxLayer({})", self.inner.name)
    }
}

/// Configures a [`JaxLayer`]; [`JaxLayerBuilder::build`] checks the Keras
/// rules and creates it.
pub struct JaxLayerBuilder {
    name: Option<String>,
    call: (Box<DynFn>, Needs, bool),
    init: Option<(Box<DynFn>, Needs, bool)>,
    params: Option<Tree<Buffer>>,
    state: Option<Tree<Buffer>>,
    seed: Option<u32>,
    policy: DTypePolicy,
}

static LAYER_COUNT: AtomicU64 = AtomicU64::new(0);

impl JaxLayer {
    /// Starts configuring a layer around `call_fn`.
    pub fn builder<M>(call_fn: impl IntoCallFn<M>) -> JaxLayerBuilder {
        JaxLayerBuilder {
            name: None,
            call: call_fn.into_call_fn(),
            init: None,
            params: None,
            state: None,
            seed: None,
            policy: DTypePolicy::Float32,
        }
    }

    /// A layer from `call_fn` alone (a parameter-free layer, or one whose
    /// call fails the Keras rules with a clear error).
    pub fn new<M>(call_fn: impl IntoCallFn<M>) -> Result<JaxLayer> {
        JaxLayer::builder(call_fn).build()
    }

    /// Number of trainable weight arrays.
    pub fn trainable_weight_count(&self) -> Result<usize> {
        Ok(self.weights()?.params.len())
    }

    /// Number of non-trainable weight arrays.
    pub fn non_trainable_weight_count(&self) -> Result<usize> {
        Ok(self.weights()?.state.len())
    }

    /// Which arguments the call function takes (whether it takes an `Rng`,
    /// `State`, ...).
    pub fn call_needs(&self) -> Needs {
        self.inner.call_needs
    }

    /// Number of compiles this layer's standalone calls have done.
    pub fn compile_count(&self) -> usize {
        self.inner.runner.compiles()
    }

    fn run_init(&self, client: &Client, input: &Tree<ArraySpec>) -> Result<Weights> {
        let init = self.inner.init_fn.as_ref().ok_or_else(|| Error::Misuse {
            what: format!("layer `{}`", self.inner.name),
            reason: "it has neither init_fn nor params/state",
        })?;
        let rng = self.next_rng();
        let mut state_tree = Tree::Empty;
        let mut params_tree = Tree::Empty;
        let policy = self.inner.policy;
        let c = crate::builder::trace(
            &format!("{}_init", self.inner.name),
            &Tree::Leaf(ArraySpec::of::<u32>([2])),
            |b, t| {
                let key = t.into_leaf()?;
                // Placeholder inputs: zeros shaped and typed like the real input.
                let inputs = input.try_map(&mut |s| b.zeros(s.dtype, &s.dims))?;
                let args = CallArgs {
                    params: Tree::Empty,
                    state: Tree::Empty,
                    rng: Some(key),
                    inputs,
                    training: Training::Yes,
                };
                let (params, state) = init(&args)?;
                let state = state.unwrap_or(Tree::Empty);
                let var = policy.variable_dtype();
                let params = DTypePolicy::cast_floats(&params, var)?;
                let state = DTypePolicy::cast_floats(&state, var)?;
                params_tree = params.structure();
                state_tree = state.structure();
                let mut leaves: Vec<Value> = params.leaves().into_iter().cloned().collect();
                leaves.extend(state.leaves().into_iter().cloned());
                Ok(Tree::List(leaves.into_iter().map(Tree::Leaf).collect()))
            },
        )?;
        let exe = c.compile(client)?;
        let key = client.buffer_from_host(&rng, &[2])?;
        let mut outs = exe.execute(&[&key])?;
        let state = outs.split_off(params_tree.len());
        Ok(Weights {
            params: params_tree.unflatten(outs.into_iter().map(Arc::new).collect())?,
            state: state_tree.unflatten(state.into_iter().map(Arc::new).collect())?,
        })
    }
}

impl JaxLayerBuilder {
    /// The function that creates params (and state) at build.
    pub fn init_fn<M>(mut self, init_fn: impl IntoInitFn<M>) -> Self {
        self.init = Some(init_fn.into_init_fn());
        self
    }

    /// Ready-made params (a tree of buffers); skips `init_fn`.
    pub fn params(mut self, params: Tree<Buffer>) -> Self {
        self.params = Some(params);
        self
    }

    /// Ready-made state; skips `init_fn`.
    pub fn state(mut self, state: Tree<Buffer>) -> Self {
        self.state = Some(state);
        self
    }

    /// Seed of the layer's random keys (default: random).
    pub fn seed(mut self, seed: u32) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The layer's name (default `jax_layer`, `jax_layer_1`, ...).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The dtype policy (default float32).
    pub fn dtype_policy(mut self, policy: DTypePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Checks the Keras rules and creates the layer.
    ///
    /// Errors ([`Error::Misuse`], naming the layer):
    /// `call_fn` without `Inputs`; `call_fn` taking `State` but returning
    /// `Out` (or the reverse); an `init_fn` taking `Params` or `State`, or
    /// whose statefulness differs from `call_fn`'s; `call_fn` taking params
    /// or state with neither `init_fn` nor params/state given.
    pub fn build(self) -> Result<JaxLayer> {
        let (call_fn, needs, stateful) = self.call;
        let n = LAYER_COUNT.fetch_add(1, Ordering::Relaxed);
        let name = self.name.unwrap_or_else(|| {
            if n == 0 {
                "jax_layer".into()
            } else {
                format!("jax_layer_{n}")
            }
        });
        let bad = |reason: &'static str| {
            Err(Error::Misuse {
                what: format!("JaxLayer `{name}`"),
                reason,
            })
        };
        if !needs.inputs {
            return bad("call_fn must take `Inputs` (the model's inputs, one tree)");
        }
        if needs.state && !stateful {
            return bad("call_fn takes `State`, so it must return `OutState(outputs, new_state)`");
        }
        if stateful && !needs.state {
            return bad("call_fn returns `OutState` but does not take `State`");
        }
        let given = self.params.is_some() || self.state.is_some();
        if (needs.params || needs.state) && self.init.is_none() && !given {
            return bad(
                "call_fn takes `Params`/`State`, but neither init_fn nor params/state were given",
            );
        }
        if let Some((_, init_needs, init_stateful)) = &self.init {
            if init_needs.params || init_needs.state {
                return bad("init_fn may take only `Rng`, `Inputs` and `Training`");
            }
            if *init_stateful != needs.state {
                return bad(if needs.state {
                    "call_fn takes `State`, so init_fn must return `InitState(params, state)`"
                } else {
                    "init_fn returns `InitState`, but call_fn does not take `State`"
                });
            }
        }
        let weights = if given {
            let wrap = |t: Option<Tree<Buffer>>| t.unwrap_or(Tree::Empty).into_arcs();
            Some(Weights {
                params: wrap(self.params),
                state: wrap(self.state),
            })
        } else {
            None
        };
        let built = weights.is_some() || !(needs.params || needs.state) && self.init.is_none();
        let weights = if built {
            Some(weights.unwrap_or_default())
        } else {
            None
        };
        Ok(JaxLayer {
            inner: Arc::new(Inner {
                name,
                call_fn,
                call_needs: needs,
                init_fn: self.init.map(|(f, _, _)| f),
                seed: self.seed.unwrap_or_else(rand::random),
                policy: self.policy,
                store: Mutex::new({
                    let mut store = Store {
                        weights: None,
                        flat_params: Vec::new(),
                        layout: None,
                        counter: 0,
                        client: None,
                    };
                    if let Some(w) = weights {
                        store.set(w);
                    }
                    store
                }),
                runner: Runner::default(),
            }),
        })
    }
}

impl Tree<Buffer> {
    /// Wraps every buffer in an `Arc` (shared device handles).
    pub fn into_arcs(self) -> Tree<Arc<Buffer>> {
        let structure = self.structure();
        let leaves: Vec<Arc<Buffer>> = self.into_leaves().into_iter().map(Arc::new).collect();
        structure.unflatten(leaves).unwrap_or(Tree::Empty)
    }
}

impl Layer for JaxLayer {
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn kind(&self) -> &'static str {
        "JaxLayer"
    }

    fn is_built(&self) -> bool {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .weights
            .is_some()
    }

    fn build(&self, client: &Client, input: &Tree<ArraySpec>) -> Result<()> {
        {
            let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
            if s.weights.is_some() {
                s.client.get_or_insert_with(|| client.clone());
                return Ok(());
            }
        }
        let weights = self.run_init(client, input)?;
        let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        if s.weights.is_none() {
            s.client = Some(client.clone());
            s.set(weights);
        }
        Ok(())
    }

    fn weights(&self) -> Result<Weights> {
        let s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        s.weights.clone().ok_or_else(|| Error::NotBuilt {
            layer: self.inner.name.clone(),
        })
    }

    fn set_weights(&self, weights: Weights) -> Result<()> {
        let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = &s.weights {
            old.check_same_layout(
                &weights,
                &format!("set_weights of layer `{}`", self.inner.name),
            )?;
        }
        s.set(weights);
        Ok(())
    }

    fn trace_call(&self, _b: &Builder, args: CallArgs) -> Result<(Tree<Value>, Tree<Value>)> {
        let policy = self.inner.policy;
        let compute = policy.compute_dtype();
        let state_specs = args.state.map_leaves(&mut |v| v.dtype());
        let cast = |t: &Tree<Value>| -> Result<Tree<Value>> {
            if policy == DTypePolicy::Float32 {
                Ok(t.clone())
            } else {
                DTypePolicy::cast_floats(t, compute)
            }
        };
        let args = CallArgs {
            params: cast(&args.params)?,
            state: cast(&args.state)?,
            rng: args.rng,
            inputs: cast(&args.inputs)?,
            training: args.training,
        };
        let had_state = args.state.clone();
        let (out, new_state) = (self.inner.call_fn)(&args)?;
        let new_state = match new_state {
            None => had_state,
            Some(ns) => ns,
        };
        // New state goes back to the variables' dtypes (Keras assigns with a cast).
        let new_state = if new_state.structure() == state_specs.structure() {
            let dtypes: Vec<_> = state_specs.leaves().into_iter().copied().collect();
            let leaves: Vec<Value> = new_state
                .leaves()
                .into_iter()
                .zip(dtypes)
                .map(|(v, d)| {
                    if v.dtype().is_float() && d.is_float() {
                        v.convert(d)
                    } else {
                        Ok(v.clone())
                    }
                })
                .collect::<Result<_>>()?;
            new_state.structure().unflatten(leaves)?
        } else {
            new_state
        };
        Ok((out, new_state))
    }

    fn dtype_policy(&self) -> DTypePolicy {
        self.inner.policy
    }
}

impl Sealed for JaxLayer {
    fn hooks(&self, _: Seal) -> &dyn LayerHooks {
        self
    }
}

impl LayerHooks for JaxLayer {
    fn as_dyn(&self) -> &dyn Layer {
        self
    }

    fn client(&self) -> Option<Client> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    fn swap_weights(&self, weights: Option<Weights>) -> Option<Weights> {
        let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        let old = s.weights.take();
        match weights {
            Some(w) => s.set(w),
            None => s.flat_params.clear(),
        }
        old
    }

    fn replace_state(&self, state: Tree<Arc<Buffer>>) -> Tree<Arc<Buffer>> {
        let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        match &mut s.weights {
            Some(w) => std::mem::replace(&mut w.state, state),
            None => Tree::Empty,
        }
    }

    fn flat_params(&self) -> Result<Vec<Arc<Buffer>>> {
        let s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        match s.weights {
            Some(_) => Ok(s.flat_params.clone()),
            None => Err(Error::NotBuilt {
                layer: self.inner.name.clone(),
            }),
        }
    }

    fn layout(&self) -> Result<(Layout, bool)> {
        let s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        match (&s.weights, &s.layout) {
            (Some(_), Some(layout)) => Ok(layout.clone()),
            _ => Err(Error::NotBuilt {
                layer: self.inner.name.clone(),
            }),
        }
    }

    fn uses_rng(&self) -> bool {
        self.inner.call_needs.rng
    }

    fn next_rng(&self) -> [u32; 2] {
        let mut s = self.inner.store.lock().unwrap_or_else(|p| p.into_inner());
        let key = [self.inner.seed, s.counter];
        s.counter = s.counter.wrapping_add(1);
        key
    }
}
