//! Keras-style layers and models over the builder: `JaxLayer` (a call
//! function as a layer), with params and state held as device buffers.
//!
//! - [`JaxLayer`]: Keras's `JaxLayer`; which of params/state/rng/inputs/
//!   training a function takes is carried by the argument types of
//!   [`signature`].
//! - [`Layer`]: the trait every layer implements; [`Weights`] and
//!   [`DTypePolicy`].

mod jax_layer;
mod layer;
mod model;
mod runner;
pub mod signature;

pub use jax_layer::{JaxLayer, JaxLayerBuilder};
pub use layer::{output_specs, DTypePolicy, Layer, Weights};
pub use model::{apply_layer, Apply, HostArray, Input, Model, Sequential, Symbolic};
pub use signature::{
    CallArgs, Init, InitState, Inputs, Needs, Out, OutState, Params, Rng, State, Training,
};
