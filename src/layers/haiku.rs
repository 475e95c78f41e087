//! Haiku-style `transform`: a module function that asks for its parameters
//! (and state) by name becomes an `(init, apply)` pair usable as a
//! [`JaxLayer`](super::JaxLayer)'s `init_fn`/`call_fn`, as
//! `hk.transform`, `hk.transform_with_state` and `hk.without_apply_rng` do.
//!
//! ```
//! use xlayer::builder::{init, nn};
//! use xlayer::layers::{haiku, JaxLayer, Layer, Training};
//! use xlayer::{Client, DType};
//! // hk.Linear(4) followed by relu, written as a module function.
//! let t = haiku::transform(|hk: &mut haiku::Hk, x| {
//!     let x = x.into_leaf()?;
//!     let w = hk.get_parameter("linear/w", &[x.dims()[1], 4], DType::F32, &init::lecun_normal())?;
//!     let b = hk.get_parameter("linear/b", &[4], DType::F32, &init::zeros())?;
//!     Ok(nn::relu(&(x.matmul(&w)? + b)?)?.into())
//! });
//! let layer = JaxLayer::builder(t.apply()).init_fn(t.init()).seed(0).build()?;
//! let client = Client::cpu()?;
//! let x = client.buffer_from_host(&[1f32; 6], &[2, 3])?;
//! assert_eq!(layer.call1(&x, Training::No)?.dims(), &[2, 4]);
//! assert_eq!(layer.weights()?.params.paths(), vec!["linear/b", "linear/w"]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::builder::init::Initializer;
use crate::builder::{random, Builder, Tree, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::signature::{Init, InitState, Inputs, Out, OutState, Params, Rng, State, Training};

enum Mode {
    Init,
    Apply,
}

/// The context a module function runs in (Haiku's frame): parameters and
/// state by name, the random key sequence, the training flag.
pub struct Hk {
    mode: Mode,
    builder: Builder,
    params: BTreeMap<String, Value>,
    state: BTreeMap<String, Value>,
    rng: Option<Value>,
    rng_count: u32,
    training: Training,
}

fn tree_of(m: &BTreeMap<String, Value>) -> Result<Tree<Value>> {
    let mut root: BTreeMap<String, Tree<Value>> = BTreeMap::new();
    for (path, v) in m {
        insert(&mut root, path, v.clone())?;
    }
    Ok(if root.is_empty() {
        Tree::Empty
    } else {
        Tree::Map(root)
    })
}

fn insert(map: &mut BTreeMap<String, Tree<Value>>, path: &str, v: Value) -> Result<()> {
    match path.split_once('/') {
        None => {
            map.insert(path.to_string(), Tree::Leaf(v));
            Ok(())
        }
        Some((head, rest)) => {
            let entry = map
                .entry(head.to_string())
                .or_insert_with(|| Tree::Map(BTreeMap::new()));
            match entry {
                Tree::Map(m) => insert(m, rest, v),
                _ => Err(Error::PathConflict {
                    path: crate::builder::Path::from(head.to_string()),
                }),
            }
        }
    }
}

fn flat(t: &Tree<Value>) -> BTreeMap<String, Value> {
    t.entries()
        .into_iter()
        .map(|(p, v)| (p, v.clone()))
        .collect()
}

impl Hk {
    /// The builder values are recorded into.
    pub fn builder(&self) -> &Builder {
        &self.builder
    }

    /// The mode of the call ([`Training::Yes`] in training).
    pub fn training(&self) -> Training {
        self.training
    }

    /// `hk.running_init()`: true while the init function runs. As in Haiku,
    /// the state returned by init is the state after this run (including
    /// `set_state` calls), so modules that update state guard with it.
    pub fn running_init(&self) -> bool {
        matches!(self.mode, Mode::Init)
    }

    fn check(&self, what: &str, name: &str, v: &Value, dims: &[usize], dtype: DType) -> Result<()> {
        let want = ArraySpec::new(dtype, dims);
        if v.spec() != &want {
            return Err(Error::ValueSpecMismatch {
                what: format!("haiku {what}"),
                path: name.to_string(),
                expected: Box::new(want),
                found: Box::new(v.spec().clone()),
            });
        }
        Ok(())
    }

    /// `hk.get_parameter`: creates the parameter with `init` at init time,
    /// reads it (checking its shape and dtype) at apply time.
    pub fn get_parameter(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DType,
        init: &Initializer,
    ) -> Result<Value> {
        if let Some(v) = self.params.get(name) {
            self.check("parameter", name, v, dims, dtype)?;
            return Ok(v.clone());
        }
        match self.mode {
            Mode::Apply => Err(Error::UnknownName {
                what: "haiku params".into(),
                kind: "parameter",
                name: name.to_string(),
                known: self.params.keys().cloned().collect(),
            }),
            Mode::Init => {
                let key = self.next_rng_key()?;
                let v = init.init(&key, dims, dtype)?;
                self.params.insert(name.to_string(), v.clone());
                Ok(v)
            }
        }
    }

    /// `hk.get_state`: creates the state with `init` at init time, reads the
    /// current value (as last set) otherwise.
    pub fn get_state(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DType,
        init: &Initializer,
    ) -> Result<Value> {
        if let Some(v) = self.state.get(name) {
            self.check("state", name, v, dims, dtype)?;
            return Ok(v.clone());
        }
        match self.mode {
            Mode::Apply => Err(Error::UnknownName {
                what: "haiku state".into(),
                kind: "state",
                name: name.to_string(),
                known: self.state.keys().cloned().collect(),
            }),
            Mode::Init => {
                let key = self.builder.zeros(DType::U32, &[2])?;
                let v = init.init(&key, dims, dtype)?;
                self.state.insert(name.to_string(), v.clone());
                Ok(v)
            }
        }
    }

    /// `hk.set_state`: the new value of a state entry (same shape and dtype).
    pub fn set_state(&mut self, name: &str, value: Value) -> Result<()> {
        if let Some(old) = self.state.get(name) {
            if old.spec() != value.spec() {
                return Err(Error::ValueSpecMismatch {
                    what: "haiku set_state".into(),
                    path: name.to_string(),
                    expected: Box::new(old.spec().clone()),
                    found: Box::new(value.spec().clone()),
                });
            }
        }
        self.state.insert(name.to_string(), value);
        Ok(())
    }

    /// `hk.next_rng_key`: a fresh key from the sequence of this call.
    ///
    /// Errors: no rng given (inference, or a `without_apply_rng` transform).
    pub fn next_rng_key(&mut self) -> Result<Value> {
        let key = self.rng.as_ref().ok_or_else(|| Error::MissingRng {
            function: "haiku next_rng_key".into(),
        })?;
        self.rng_count += 1;
        random::fold_in(key, self.rng_count)
    }
}

type ModuleFn = dyn Fn(&mut Hk, Tree<Value>) -> Result<Tree<Value>> + Send + Sync;

/// A transformed module function: [`Transformed::init`] and
/// [`Transformed::apply`] give closures for a `JaxLayer`.
#[derive(Clone)]
pub struct Transformed {
    f: Arc<ModuleFn>,
}

/// Like [`Transformed`], for modules with state (`hk.transform_with_state`).
#[derive(Clone)]
pub struct TransformedWithState {
    f: Arc<ModuleFn>,
}

/// `hk.transform(f)`: `f(hk, inputs)` returns the outputs; parameters come
/// from [`Hk::get_parameter`].
pub fn transform(
    f: impl Fn(&mut Hk, Tree<Value>) -> Result<Tree<Value>> + Send + Sync + 'static,
) -> Transformed {
    Transformed { f: Arc::new(f) }
}

/// `hk.transform_with_state(f)`: like [`transform`], with [`Hk::get_state`]
/// and [`Hk::set_state`].
pub fn transform_with_state(
    f: impl Fn(&mut Hk, Tree<Value>) -> Result<Tree<Value>> + Send + Sync + 'static,
) -> TransformedWithState {
    TransformedWithState { f: Arc::new(f) }
}

fn run(
    f: &ModuleFn,
    mode: Mode,
    params: Tree<Value>,
    state: Tree<Value>,
    rng: Option<Value>,
    inputs: Tree<Value>,
    training: Training,
) -> Result<(Tree<Value>, Hk)> {
    let builder = inputs
        .leaves()
        .first()
        .map(|v| v.builder().clone())
        .or_else(|| rng.as_ref().map(|r| r.builder().clone()))
        .ok_or_else(|| Error::Empty {
            what: "haiku module function".into(),
            reason: "it needs at least one input or an rng",
        })?;
    let mut hk = Hk {
        mode,
        builder,
        params: flat(&params),
        state: flat(&state),
        rng,
        rng_count: 0,
        training,
    };
    let out = f(&mut hk, inputs)?;
    Ok((out, hk))
}

impl Transformed {
    /// The init function: `(rng, inputs, training) -> params`.
    pub fn init(&self) -> impl Fn(Rng, Inputs, Training) -> Result<Init> + Send + Sync + 'static {
        let f = self.f.clone();
        move |Rng(key), Inputs(x), t: Training| {
            let (_, hk) = run(
                f.as_ref(),
                Mode::Init,
                Tree::Empty,
                Tree::Empty,
                Some(key),
                x,
                t,
            )?;
            Ok(Init(tree_of(&hk.params)?))
        }
    }

    /// The apply function: `(params, rng, inputs, training) -> outputs`; the
    /// rng is present in training mode only.
    pub fn apply(
        &self,
    ) -> impl Fn(Params, Option<Rng>, Inputs, Training) -> Result<Out> + Send + Sync + 'static {
        let f = self.f.clone();
        move |Params(p), rng: Option<Rng>, Inputs(x), t: Training| {
            let (out, _) = run(
                f.as_ref(),
                Mode::Apply,
                p,
                Tree::Empty,
                rng.map(|r| r.0),
                x,
                t,
            )?;
            Ok(Out(out))
        }
    }

    /// `hk.without_apply_rng`: an apply function that takes no rng.
    pub fn apply_without_rng(
        &self,
    ) -> impl Fn(Params, Inputs, Training) -> Result<Out> + Send + Sync + 'static {
        let f = self.f.clone();
        move |Params(p), Inputs(x), t: Training| {
            let (out, _) = run(f.as_ref(), Mode::Apply, p, Tree::Empty, None, x, t)?;
            Ok(Out(out))
        }
    }
}

impl TransformedWithState {
    /// The init function: `(rng, inputs, training) -> (params, state)`.
    pub fn init(
        &self,
    ) -> impl Fn(Rng, Inputs, Training) -> Result<InitState> + Send + Sync + 'static {
        let f = self.f.clone();
        move |Rng(key), Inputs(x), t: Training| {
            let (_, hk) = run(
                f.as_ref(),
                Mode::Init,
                Tree::Empty,
                Tree::Empty,
                Some(key),
                x,
                t,
            )?;
            Ok(InitState(tree_of(&hk.params)?, tree_of(&hk.state)?))
        }
    }

    /// The apply function: `(params, state, rng, inputs, training) -> (outputs, new state)`.
    pub fn apply(
        &self,
    ) -> impl Fn(Params, State, Option<Rng>, Inputs, Training) -> Result<OutState> + Send + Sync + 'static
    {
        let f = self.f.clone();
        move |Params(p), State(s), rng: Option<Rng>, Inputs(x), t: Training| {
            let structure = s.structure();
            let (out, hk) = run(f.as_ref(), Mode::Apply, p, s, rng.map(|r| r.0), x, t)?;
            let new_state = tree_of(&hk.state)?;
            let new_state = if new_state.structure() == structure {
                new_state
            } else {
                Tree::Empty
            };
            Ok(OutState(out, new_state))
        }
    }
}
