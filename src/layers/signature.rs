//! Which of `params`, `state`, `rng`, `inputs`, `training` a function takes,
//! carried by types instead of argument names.
//!
//! Keras inspects the *names* of `call_fn`'s arguments. Rust closures have
//! no names to inspect, so each argument is a small wrapper type:
//! [`Params`], [`State`], [`Rng`], [`Inputs`], [`Training`]. A closure taking
//! any of them, in any order, is a call function; an argument of another
//! type does not compile. What a call function returns says whether it is
//! stateful: [`Out`] for outputs only, [`OutState`] for `(outputs, new_state)`.
//!
//! ```
//! use xlayer::layers::{Inputs, Out, Params, JaxLayer};
//! // Keras: def stateless_call(params, inputs): ...
//! let layer = JaxLayer::new(|Params(p): Params, Inputs(x): Inputs| {
//!     let x = x.into_leaf()?;
//!     Ok(Out(x.matmul(p.get("w")?)?.into()))
//! });
//! # let _ = layer;
//! ```

use crate::builder::{Tree, Value};
use crate::error::{Error, Result};
pub use crate::mode::Training;

/// The model's trainable parameters, as symbolic values.
#[derive(Debug, Clone)]
pub struct Params(pub Tree<Value>);

/// The model's non-trainable state, as symbolic values.
#[derive(Debug, Clone)]
pub struct State(pub Tree<Value>);

/// A `u32[2]` random key (Keras passes `[seed, counter]` as a raw key), fresh
/// for every training call.
#[derive(Debug, Clone)]
pub struct Rng(pub Value);

/// The model's inputs: one tree (several inputs go in a tuple or map).
#[derive(Debug, Clone)]
pub struct Inputs(pub Tree<Value>);

/// What a stateless call function returns: the outputs.
#[derive(Debug, Clone)]
pub struct Out(pub Tree<Value>);

/// What a stateful call function returns: the outputs and the new state.
#[derive(Debug, Clone)]
pub struct OutState(pub Tree<Value>, pub Tree<Value>);

/// What an init function returns: the initial params (stateless model).
#[derive(Debug, Clone)]
pub struct Init(pub Tree<Value>);

/// What an init function of a stateful model returns: `(params, state)`.
#[derive(Debug, Clone)]
pub struct InitState(pub Tree<Value>, pub Tree<Value>);

/// Which arguments a function takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Takes [`Params`].
    pub params: bool,
    /// Takes [`State`].
    pub state: bool,
    /// Takes [`Rng`].
    pub rng: bool,
    /// Takes [`Inputs`].
    pub inputs: bool,
    /// Takes [`Training`].
    pub training: bool,
}

impl Needs {
    fn union(self, o: Needs) -> Needs {
        Needs {
            params: self.params || o.params,
            state: self.state || o.state,
            rng: self.rng || o.rng,
            inputs: self.inputs || o.inputs,
            training: self.training || o.training,
        }
    }
}

/// The values a call or init function is invoked with.
#[derive(Debug, Clone)]
pub struct CallArgs {
    /// Parameters (empty tree when the model has none).
    pub params: Tree<Value>,
    /// State (empty tree when the model has none).
    pub state: Tree<Value>,
    /// The random key, when one is available.
    pub rng: Option<Value>,
    /// Inputs.
    pub inputs: Tree<Value>,
    /// Training or inference.
    pub training: Training,
}

/// One argument of a call or init function: built from [`CallArgs`].
pub trait Arg: Sized {
    /// What this argument requires.
    const NEEDS: Needs;
    /// Extracts the argument.
    fn extract(args: &CallArgs, function: &str) -> Result<Self>;
}

impl Arg for Params {
    const NEEDS: Needs = Needs {
        params: true,
        state: false,
        rng: false,
        inputs: false,
        training: false,
    };
    fn extract(a: &CallArgs, _: &str) -> Result<Self> {
        Ok(Params(a.params.clone()))
    }
}
impl Arg for State {
    const NEEDS: Needs = Needs {
        params: false,
        state: true,
        rng: false,
        inputs: false,
        training: false,
    };
    fn extract(a: &CallArgs, _: &str) -> Result<Self> {
        Ok(State(a.state.clone()))
    }
}
impl Arg for Rng {
    const NEEDS: Needs = Needs {
        params: false,
        state: false,
        rng: true,
        inputs: false,
        training: false,
    };
    fn extract(a: &CallArgs, function: &str) -> Result<Self> {
        a.rng.clone().map(Rng).ok_or_else(|| Error::MissingRng {
            function: function.to_string(),
        })
    }
}
impl Arg for Option<Rng> {
    const NEEDS: Needs = Needs {
        params: false,
        state: false,
        rng: true,
        inputs: false,
        training: false,
    };
    fn extract(a: &CallArgs, _: &str) -> Result<Self> {
        Ok(a.rng.clone().map(Rng))
    }
}
impl Arg for Inputs {
    const NEEDS: Needs = Needs {
        params: false,
        state: false,
        rng: false,
        inputs: true,
        training: false,
    };
    fn extract(a: &CallArgs, _: &str) -> Result<Self> {
        Ok(Inputs(a.inputs.clone()))
    }
}
impl Arg for Training {
    const NEEDS: Needs = Needs {
        params: false,
        state: false,
        rng: false,
        inputs: false,
        training: true,
    };
    fn extract(a: &CallArgs, _: &str) -> Result<Self> {
        Ok(a.training)
    }
}

/// What a call function may return.
pub trait CallOutput {
    /// True for `(outputs, new_state)`.
    const STATEFUL: bool;
    /// Splits into outputs and (for stateful functions) the new state.
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>);
}
impl CallOutput for Out {
    const STATEFUL: bool = false;
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>) {
        (self.0, None)
    }
}
impl CallOutput for OutState {
    const STATEFUL: bool = true;
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>) {
        (self.0, Some(self.1))
    }
}

/// What an init function may return.
pub trait InitOutput {
    /// True for `(params, state)`.
    const STATEFUL: bool;
    /// Splits into params and (for stateful models) state.
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>);
}
impl InitOutput for Init {
    const STATEFUL: bool = false;
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>) {
        (self.0, None)
    }
}
impl InitOutput for InitState {
    const STATEFUL: bool = true;
    fn split(self) -> (Tree<Value>, Option<Tree<Value>>) {
        (self.0, Some(self.1))
    }
}

/// A type-erased call function: `(args) -> (outputs, new state if stateful)`.
pub type DynFn = dyn Fn(&CallArgs) -> Result<(Tree<Value>, Option<Tree<Value>>)> + Send + Sync;

/// A closure usable as `call_fn`: any of the argument wrappers, in any order,
/// returning [`Out`] or [`OutState`].
pub trait IntoCallFn<Marker> {
    /// Erases the closure's type, recording what it takes and returns.
    fn into_call_fn(self) -> (Box<DynFn>, Needs, bool);
}

/// A closure usable as `init_fn`: takes [`Rng`], [`Inputs`], [`Training`] in
/// any order, returning [`Init`] or [`InitState`].
pub trait IntoInitFn<Marker> {
    /// Erases the closure's type, recording what it takes and returns.
    fn into_init_fn(self) -> (Box<DynFn>, Needs, bool);
}

macro_rules! impl_fns {
    ($($a:ident),+) => {
        impl<F, R, $($a),+> IntoCallFn<(R, $($a,)+)> for F
        where
            F: Fn($($a),+) -> Result<R> + Send + Sync + 'static,
            R: CallOutput,
            $($a: Arg,)+
        {
            #[allow(non_snake_case)]
            fn into_call_fn(self) -> (Box<DynFn>, Needs, bool) {
                let needs = Needs::default()$(.union($a::NEEDS))+;
                let f = move |args: &CallArgs| {
                    $(let $a = $a::extract(args, "call_fn")?;)+
                    Ok(self($($a),+)?.split())
                };
                (Box::new(f), needs, R::STATEFUL)
            }
        }

        impl<F, R, $($a),+> IntoInitFn<(R, $($a,)+)> for F
        where
            F: Fn($($a),+) -> Result<R> + Send + Sync + 'static,
            R: InitOutput,
            $($a: Arg,)+
        {
            #[allow(non_snake_case)]
            fn into_init_fn(self) -> (Box<DynFn>, Needs, bool) {
                let needs = Needs::default()$(.union($a::NEEDS))+;
                let f = move |args: &CallArgs| {
                    $(let $a = $a::extract(args, "init_fn")?;)+
                    Ok(self($($a),+)?.split())
                };
                (Box::new(f), needs, R::STATEFUL)
            }
        }
    };
}

impl_fns!(A1);
impl_fns!(A1, A2);
impl_fns!(A1, A2, A3);
impl_fns!(A1, A2, A3, A4);
impl_fns!(A1, A2, A3, A4, A5);

impl Tree<Value> {
    /// The single leaf of a one-leaf tree (e.g. the one input array).
    ///
    /// Errors: [`Error::NotALeaf`] naming the structure otherwise.
    pub fn into_leaf(self) -> Result<Value> {
        match self {
            Tree::Leaf(v) => Ok(v),
            other => Err(Error::NotALeaf {
                what: "into_leaf".into(),
                paths: other.paths(),
            }),
        }
    }
}

impl From<Value> for Out {
    fn from(v: Value) -> Self {
        Out(Tree::Leaf(v))
    }
}
