//! The `Layer` trait: build from an input spec, weights on the device,
//! and a symbolic call that traces into a builder (so that a whole model
//! compiles into one executable).

use std::fmt;
use std::sync::Arc;

use crate::builder::{Builder, Tree, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::jit::Layout;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

use super::runner::LayerValues;
use super::signature::{CallArgs, Training};

/// A dtype policy (Keras's `DTypePolicy`): the dtype weights are kept in
/// and the dtype computations run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypePolicy {
    /// Weights and computation in f32.
    #[default]
    Float32,
    /// Weights in f32, computation in f16.
    MixedFloat16,
    /// Weights in f32, computation in bf16.
    MixedBFloat16,
    /// Weights and computation in bf16.
    BFloat16,
}

impl DTypePolicy {
    /// The dtype float weights are stored in.
    pub fn variable_dtype(self) -> DType {
        match self {
            DTypePolicy::BFloat16 => DType::BF16,
            _ => DType::F32,
        }
    }

    /// The dtype float computations run in.
    pub fn compute_dtype(self) -> DType {
        match self {
            DTypePolicy::Float32 => DType::F32,
            DTypePolicy::MixedFloat16 => DType::F16,
            DTypePolicy::MixedBFloat16 | DTypePolicy::BFloat16 => DType::BF16,
        }
    }

    /// Keras's name (`float32`, `mixed_float16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DTypePolicy::Float32 => "float32",
            DTypePolicy::MixedFloat16 => "mixed_float16",
            DTypePolicy::MixedBFloat16 => "mixed_bfloat16",
            DTypePolicy::BFloat16 => "bfloat16",
        }
    }

    /// Casts float leaves of `t` to `dtype` (integer and bool leaves are kept).
    pub(crate) fn cast_floats(t: &Tree<Value>, dtype: DType) -> Result<Tree<Value>> {
        t.try_map(&mut |v: &Value| {
            if v.dtype().is_float() {
                v.convert(dtype)
            } else {
                Ok(v.clone())
            }
        })
    }
}

/// A layer's weights on the device: trainable params, non-trainable state.
#[derive(Clone, Default)]
pub struct Weights {
    /// Trainable parameters.
    pub params: Tree<Arc<Buffer>>,
    /// Non-trainable state.
    pub state: Tree<Arc<Buffer>>,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let specs = |t: &Tree<Arc<Buffer>>| {
            t.entries()
                .into_iter()
                .map(|(p, b)| format!("{p}: {}", b.spec()))
                .collect::<Vec<_>>()
        };
        f.debug_struct("Weights")
            .field("params", &specs(&self.params))
            .field("state", &specs(&self.state))
            .finish()
    }
}

impl Weights {
    /// Specs of the params.
    pub fn param_specs(&self) -> Tree<ArraySpec> {
        self.params.map_leaves(&mut |b| b.spec().clone())
    }

    /// Specs of the state.
    pub fn state_specs(&self) -> Tree<ArraySpec> {
        self.state.map_leaves(&mut |b| b.spec().clone())
    }

    /// The layout (structure, dtypes, shapes of params and state), for jit
    /// keys.
    pub(crate) fn layout(&self) -> Layout {
        Layout::new(Tree::tuple([self.param_specs(), self.state_specs()]))
    }

    /// Number of scalars in the params.
    pub fn param_count(&self) -> usize {
        self.params.leaves().iter().map(|b| b.element_count()).sum()
    }

    /// Number of scalars in the state.
    pub fn state_count(&self) -> usize {
        self.state.leaves().iter().map(|b| b.element_count()).sum()
    }

    /// Checks that `other` has the same structure, dtypes and shapes as
    /// `self`; errors name the first differing path.
    pub fn check_same_layout(&self, other: &Weights, what: &str) -> Result<()> {
        for (kind, a, b) in [
            ("params", &self.params, &other.params),
            ("state", &self.state, &other.state),
        ] {
            let (ea, eb) = (a.entries(), b.entries());
            if a.structure() != b.structure() {
                return Err(Error::StructureMismatch {
                    what: format!("{what}: {kind}"),
                    expected: ea.iter().map(|(p, _)| p.to_string()).collect(),
                    found: eb.iter().map(|(p, _)| p.to_string()).collect(),
                });
            }
            for ((p, x), (_, y)) in ea.iter().zip(&eb) {
                if x.spec() != y.spec() {
                    return Err(Error::ValueSpecMismatch {
                        what: format!("{what}: {kind}"),
                        path: p.to_string(),
                        expected: Box::new(x.spec().clone()),
                        found: Box::new(y.spec().clone()),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A Keras-style layer: weights on the device, a symbolic call that traces
/// into a builder (so that a whole model compiles into one executable), and
/// [`Layer::call`]/[`Layer::call1`] to run it alone.
///
/// Implementations are shared handles (cloning one gives the same layer),
/// so one layer value can be called alone, added to a
/// [`super::Sequential`], or applied to symbolic inputs of a
/// [`super::Model`]. The trait is sealed: layers are [`super::JaxLayer`]s,
/// [`crate::flax::FlaxLayer`]s or the Keras layers of this module, all of
/// which wrap a call function.
///
/// The client is fixed when the layer is built ([`Layer::build`], the first
/// [`Layer::call`] on that call's inputs' client, or the buffers of ready
/// weights); later calls run there.
///
/// The hooks runners use to donate state and draw keys are not reachable
/// from outside the crate:
/// ```compile_fail
/// use xlayer::layers::{Inputs, JaxLayer, Layer, Out};
/// let layer = JaxLayer::new(|Inputs(x): Inputs| Ok(Out(x)))?;
/// let l: &dyn Layer = &layer;
/// let _key = l.next_rng();
/// # Ok::<(), xlayer::Error>(())
/// ```
pub trait Layer: Send + Sync + sealed::Sealed {
    /// The layer's name (unique within a model).
    fn name(&self) -> String;

    /// A short type name for summaries (`JaxLayer`, `Dense`).
    fn kind(&self) -> &'static str;

    /// Creates the weights on `client` for inputs of `input` specs (the
    /// batch dimension included), and fixes the client of later calls. A
    /// no-op when built.
    ///
    /// Errors: those of the layer's init function, or its compile.
    fn build(&self, client: &Client, input: &Tree<ArraySpec>) -> Result<()>;

    /// The current weights (shared handles to the device buffers).
    ///
    /// Errors: [`Error::NotBuilt`] if the layer is not built.
    fn weights(&self) -> Result<Weights>;

    /// Replaces the weights; they must have the current layout (when built).
    ///
    /// Errors: [`Error::StructureMismatch`] or [`Error::ValueSpecMismatch`] naming the
    /// first path whose structure,
    /// dtype or shape differs.
    fn set_weights(&self, weights: Weights) -> Result<()>;

    /// Traces the forward pass into `b`: returns the outputs and the new
    /// state (same structure as `args.state`).
    ///
    /// Errors: those of the call function.
    fn trace_call(&self, b: &Builder, args: CallArgs) -> Result<(Tree<Value>, Tree<Value>)>;

    /// Whether weights exist.
    fn is_built(&self) -> bool {
        self.weights().is_ok()
    }

    /// The dtype policy.
    fn dtype_policy(&self) -> DTypePolicy {
        DTypePolicy::Float32
    }

    /// Calls the layer on a tree of input buffers (building it first, on the
    /// inputs' client, if needed) and returns the outputs. With
    /// [`Training::Yes`] a stateful layer's state is replaced by the new
    /// state and a layer that takes an `Rng` gets a fresh key.
    ///
    /// Errors: an unbuilt layer called without inputs; inputs of another
    /// client than the layer's ([`Error::ForeignClient`]); those of the call
    /// function and its compile.
    fn call(&self, inputs: &Tree<&Buffer>, training: Training) -> Result<Tree<Buffer>> {
        let hooks = sealed::hooks(self);
        // A layer has a client once it is built (weights and client are set
        // together), so a built layer's call skips `build` and its input
        // specs tree.
        let client = match hooks.client() {
            Some(c) => c,
            None => {
                let client = inputs
                    .leaves()
                    .first()
                    .map(|b| b.client().clone())
                    .ok_or_else(|| Error::NotBuilt {
                        layer: self.name().to_string(),
                    })?;
                self.build(&client, &inputs.map_leaves(&mut |b| b.spec().clone()))?;
                client
            }
        };
        let me = hooks.as_dyn();
        hooks.runner().run(
            &client,
            &self.name(),
            &[me],
            inputs,
            training,
            &|b, mut lv, ins, training| {
                let LayerValues { params, state, rng } = lv.remove(0);
                let (out, new_state) = me.trace_call(
                    b,
                    CallArgs {
                        params,
                        state,
                        rng,
                        inputs: ins,
                        training,
                    },
                )?;
                Ok((out, vec![new_state]))
            },
        )
    }

    /// [`Layer::call`] for one input array and one output array.
    ///
    /// Errors: those of [`Layer::call`]; a layer returning several arrays.
    fn call1(&self, input: &Buffer, training: Training) -> Result<Buffer> {
        match self.call(&Tree::Leaf(input), training)? {
            Tree::Leaf(b) => Ok(b),
            other => Err(Error::NotALeaf {
                what: format!("call1: layer `{}` output", self.name()),
                paths: other.paths(),
            }),
        }
    }
}

/// The hooks runners use, crate-private: only the crate's layers implement
/// [`Layer`] (its supertrait [`sealed::Sealed`] cannot be named outside),
/// and only the crate can reach a layer's hooks (a [`sealed::Seal`] cannot be
/// made outside).
pub(crate) mod sealed {
    use std::sync::Arc;

    use crate::builder::Tree;
    use crate::error::Result;
    use crate::jit::Layout;
    use crate::pjrt::buffer::Buffer;
    use crate::pjrt::client::Client;

    use super::super::runner::Runner;
    use super::{Layer, Weights};

    /// The proof of being inside the crate.
    pub struct Seal(pub(crate) ());

    /// [`Layer`]'s supertrait: the way to a layer's hooks.
    pub trait Sealed {
        /// The layer's hooks.
        fn hooks(&self, seal: Seal) -> &dyn LayerHooks;
    }

    /// The hooks of `layer`.
    pub(crate) fn hooks<L: Layer + ?Sized>(layer: &L) -> &dyn LayerHooks {
        layer.hooks(Seal(()))
    }

    /// What runners and train steps need of a layer beyond [`Layer`].
    pub trait LayerHooks {
        /// `self` as a trait object.
        fn as_dyn(&self) -> &dyn Layer;

        /// The client the layer was built on (`None` before).
        fn client(&self) -> Option<Client>;

        /// The runner of standalone calls.
        fn runner(&self) -> &Runner;

        /// The params' buffers in flatten order (cheap: no tree is built).
        fn flat_params(&self) -> Result<Vec<Arc<Buffer>>>;

        /// The weights' layout (structure, dtypes, shapes of params and
        /// state) and whether the layer has state.
        fn layout(&self) -> Result<(Layout, bool)>;

        /// Swaps the state for `state` without checks and returns the old
        /// one (runners hand state buffers to an executable, donated, and
        /// put the new state back).
        fn replace_state(&self, state: Tree<Arc<Buffer>>) -> Tree<Arc<Buffer>>;

        /// Swaps all weights without checks and returns the old ones
        /// (`None` leaves the layer unbuilt); train steps donate params.
        fn swap_weights(&self, weights: Option<Weights>) -> Option<Weights>;

        /// Whether calls in training mode take a random key.
        fn uses_rng(&self) -> bool;

        /// The `u32[2]` key for the next training call (Keras: `[seed,
        /// counter]`), advancing the counter.
        fn next_rng(&self) -> [u32; 2];
    }
}

/// Output specs of `layer` for `input` specs, found by tracing (no compile).
///
/// Errors: an unbuilt layer; those of its call function.
pub fn output_specs(
    layer: &dyn Layer,
    input: &Tree<ArraySpec>,
    training: Training,
) -> Result<Tree<ArraySpec>> {
    let w = layer.weights()?;
    let b = Builder::new();
    let params = w
        .param_specs()
        .try_map(&mut |s| b.parameter(s.clone(), "param"))?;
    let state = w
        .state_specs()
        .try_map(&mut |s| b.parameter(s.clone(), "state"))?;
    let rng = if training.is_yes() && sealed::hooks(layer).uses_rng() {
        Some(b.parameter(ArraySpec::of::<u32>([2]), "rng")?)
    } else {
        None
    };
    let inputs = input.try_map(&mut |s| b.parameter(s.clone(), "input"))?;
    let (out, _) = layer.trace_call(
        &b,
        CallArgs {
            params,
            state,
            rng,
            inputs,
            training,
        },
    )?;
    Ok(out.map_leaves(&mut |v| v.spec().clone()))
}
