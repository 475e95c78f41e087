//! Keras-style layers and models over the builder: [`JaxLayer`] (a call
//! function as a layer) with params and state held as device buffers,
//! Keras's built-in layers ([`Dense`], [`Conv2D`], [`Embedding`],
//! [`LayerNormalization`], [`Dropout`], [`BatchNormalization`], with Keras's
//! names, defaults and weight names), [`Sequential`] and functional
//! [`Model`]s compiled into one executable.
//!
//! Keras inspects argument *names*; here which of params/state/rng/inputs/
//! training a function takes is carried by the argument *types* of
//! [`signature`] ([`Params`], [`State`], [`Rng`], [`Inputs`], [`Training`]),
//! in any order. Every variant of Keras's `JaxLayer` documentation:
//!
//! **Stateless** — `def stateless_call(params, inputs)` and
//! `def stateless_init(rng, inputs)`:
//! ```
//! use xlayer::builder::{init, Tree};
//! use xlayer::layers::{Init, Inputs, JaxLayer, Layer, Out, Params, Rng, Training};
//! use xlayer::{Client, DType};
//! fn stateless_call(Params(p): Params, Inputs(x): Inputs) -> xlayer::Result<Out> {
//!     Ok(Out::from(x.into_leaf()?.matmul(p.get("w")?)?))
//! }
//! fn stateless_init(Rng(key): Rng, Inputs(x): Inputs) -> xlayer::Result<Init> {
//!     let n = x.into_leaf()?.dims()[1];
//!     Ok(Init(Tree::map([("w", Tree::leaf(init::lecun_normal().init(&key, &[n, 8], DType::F32)?))])))
//! }
//! let layer = JaxLayer::builder(stateless_call).init_fn(stateless_init).seed(0).build()?;
//! let client = Client::cpu()?;
//! let y = layer.call1(&client.buffer_from_host(&[1f32; 12], &[3, 4])?, Training::No)?;
//! assert_eq!(y.dims(), &[3, 8]);
//! # Ok::<(), xlayer::Error>(())
//! ```
//!
//! **Stateful, with rng and training** — `def stateful_call(params, state,
//! rng, inputs, training)` returning `(outputs, new_state)`, and
//! `def stateful_init(rng, inputs)` returning `(params, state)`:
//! ```
//! use xlayer::builder::{random, Tree};
//! use xlayer::layers::{InitState, Inputs, JaxLayer, Layer, OutState, Params, Rng, State, Training};
//! use xlayer::{Client, DType};
//! fn stateful_call(Params(p): Params, State(s): State, rng: Option<Rng>, Inputs(x): Inputs, t: Training)
//!     -> xlayer::Result<OutState> {
//!     let mut y = (x.into_leaf()? * p.get("scale")?)?;
//!     if let (Training::Yes, Some(Rng(key))) = (t, rng) {
//!         let keep = random::bernoulli(&key, 0.9, y.dims())?;
//!         y = keep.select(&(&y / 0.9)?, &y.scalar_like(0.0)?)?;
//!     }
//!     let calls = s.into_leaf()?;
//!     let calls = if t.is_yes() { (calls + 1.0)? } else { calls };
//!     Ok(OutState(y.into(), calls.into()))
//! }
//! fn stateful_init(Rng(key): Rng, Inputs(_x): Inputs) -> xlayer::Result<InitState> {
//!     let b = key.builder();
//!     Ok(InitState(Tree::map([("scale", Tree::leaf(b.scalar(2f32)?))]), Tree::leaf(b.scalar(0f32)?)))
//! }
//! let layer = JaxLayer::builder(stateful_call).init_fn(stateful_init).seed(42).build()?;
//! let client = Client::cpu()?;
//! let x = client.buffer_from_host(&[1f32; 4], &[4])?;
//! layer.call1(&x, Training::Yes)?;
//! assert_eq!(layer.weights()?.state.leaves()[0].to_scalar::<f32>()?, 1.0);
//! # Ok::<(), xlayer::Error>(())
//! ```
//!
//! **Inputs only, no init** — `def call_fn(inputs)`:
//! ```
//! use xlayer::layers::{Inputs, JaxLayer, Out};
//! let layer = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from(x.into_leaf()?.tanh()?)))?;
//! # let _ = layer;
//! # Ok::<(), xlayer::Error>(())
//! ```
//!
//! **A wrapper adapting another signature** — Keras's
//! `my_model_wrapper_fn(params, rng, inputs, training)` around
//! `my_model_fn(params, rngs, input1, input2, deterministic)`: inputs in one
//! tuple, the rng split into named keys, `deterministic = !training`:
//! ```
//! use std::collections::BTreeMap;
//! use xlayer::builder::{random, Tree, Value};
//! use xlayer::layers::{Inputs, JaxLayer, Layer, Out, Params, Rng, Training};
//! use xlayer::Client;
//! fn my_model_fn(params: &Tree<Value>, rngs: &BTreeMap<&str, Value>, input1: &Value, input2: &Value,
//!     deterministic: bool) -> xlayer::Result<Value> {
//!     let mut x = ((input1 + input2)? * params.get("w")?)?;
//!     if !deterministic {
//!         let keep = random::bernoulli(&rngs["dropout"], 0.5, x.dims())?;
//!         x = keep.select(&(&x / 0.5)?, &x.scalar_like(0.0)?)?;
//!     }
//!     Ok(x)
//! }
//! fn my_model_wrapper_fn(Params(p): Params, rng: Option<Rng>, Inputs(inputs): Inputs, t: Training)
//!     -> xlayer::Result<Out> {
//!     let (input1, input2) = (inputs.get("0")?, inputs.get("1")?);
//!     let mut rngs = BTreeMap::new();
//!     if let Some(Rng(key)) = rng {
//!         let keys = random::split_keys(&key, 2)?;
//!         rngs.insert("dropout", keys[0].clone());
//!         rngs.insert("preprocessing", keys[1].clone());
//!     }
//!     Ok(Out::from(my_model_fn(&p, &rngs, input1, input2, !t.is_yes())?))
//! }
//! let client = Client::cpu()?;
//! let params = Tree::map([("w", Tree::leaf(client.scalar(3f32)?))]);
//! let layer = JaxLayer::builder(my_model_wrapper_fn).params(params).build()?;
//! let (a, b) = (client.buffer_from_host(&[1f32, 2.0], &[2])?, client.buffer_from_host(&[1f32, 1.0], &[2])?);
//! let y = layer.call(&Tree::tuple([Tree::leaf(&a), Tree::leaf(&b)]), Training::No)?;
//! assert_eq!(y.leaves()[0].to_vec::<f32>()?, vec![6.0, 9.0]);
//! # Ok::<(), xlayer::Error>(())
//! ```
//!
//! **Haiku modules** go through [`haiku::transform`],
//! [`haiku::transform_with_state`] and `apply_without_rng`.
//!
//! **Three ways to use one layer** (R keras3's `layer_jax_model_wrapper`):
//! add it to a [`Sequential`], apply it to a symbolic [`Input`], or call it
//! alone — the same layer value, with the same weights, in all three. The
//! client is fixed when the layer is built (here: by the symbolic input's
//! client); calls take no client:
//! ```
//! use xlayer::layers::{Apply, Input, Inputs, JaxLayer, Layer, Model, Out, Sequential, Training};
//! use xlayer::{Client, DType};
//! let square = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from(x.into_leaf()?.square()?)))?;
//! let client = Client::cpu()?;
//! let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[1, 3])?;
//! let seq = Sequential::new().add(square.clone());                 // 1. Sequential
//! let inp = Input::new(&client, &[3], DType::F32);
//! let model = Model::new(inp.clone(), square.apply(&inp)?)?;       // 2. symbolic input
//! let alone = square.call1(&x, Training::No)?;                   // 3. standalone
//! assert_eq!(seq.call1(&x, Training::No)?.to_vec::<f32>()?, alone.to_vec::<f32>()?);
//! assert_eq!(model.call1(&x, Training::No)?.to_vec::<f32>()?, vec![1.0, 4.0, 9.0]);
//! # Ok::<(), xlayer::Error>(())
//! ```

pub mod haiku;
mod jax_layer;
mod keras;
mod keras_norm;
pub(crate) mod layer;
mod model;
mod model_weights;
pub(crate) mod runner;
mod sequential;
pub mod signature;
mod symbolic;

pub use crate::host_array::HostArray;
pub use jax_layer::{JaxLayer, JaxLayerBuilder};
pub use keras::{
    Activation, Conv2D, Conv2DConfig, Dense, DenseConfig, Dropout, DropoutConfig, Embedding,
    EmbeddingConfig,
};
pub use keras_norm::{
    BatchNormalization, BatchNormalizationConfig, LayerNormalization, LayerNormalizationConfig,
};
pub use layer::{output_specs, DTypePolicy, Layer, Weights};
pub use model::Model;
pub use sequential::Sequential;
pub use signature::{
    CallArgs, Init, InitState, Inputs, Needs, Out, OutState, Params, Rng, State, Training,
};
pub use symbolic::{apply_layer, Apply, Input, Symbolic};
