//! Compiling and running a forward pass over a set of layers: one trace and
//! one compile per distinct [`JitKey`] (weights layouts, input specs,
//! training, rng use), kept in the runner's [`JitCache`]; state buffers
//! donated and replaced.

use std::sync::{Arc, Mutex};

use crate::builder::{trace, Builder, Computation, Tree, Value};
use crate::cache::CompileCache;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::jit::{JitCache, JitKey, Jitted};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::executable::Arg;

use super::layer::sealed::hooks;
use super::layer::Layer;
use super::signature::Training;

/// What a traced forward receives for one layer.
pub struct LayerValues {
    /// The layer's params.
    pub params: Tree<Value>,
    /// The layer's state.
    pub state: Tree<Value>,
    /// Its random key, in training mode when it takes one.
    pub rng: Option<Value>,
}

/// Traces the forward: per-layer values and the inputs → outputs and the
/// new state of every layer (in `layers` order).
pub(crate) type TraceFn<'a> = dyn Fn(&Builder, Vec<LayerValues>, Tree<Value>, Training) -> Result<(Tree<Value>, Vec<Tree<Value>>)>
    + 'a;

/// Buffers handed to an executable: each one whose only handle we hold is
/// donated (its memory may be reused for an output); the others, still
/// shared elsewhere, are borrowed.
pub(crate) struct Handover {
    owned: Vec<Option<Buffer>>,
    kept: Vec<Arc<Buffer>>,
}

impl Handover {
    pub(crate) fn new(handles: Vec<Arc<Buffer>>) -> Handover {
        let mut owned = Vec::with_capacity(handles.len());
        let mut kept = Vec::new();
        for h in handles {
            match Arc::try_unwrap(h) {
                Ok(buffer) => owned.push(Some(buffer)),
                Err(shared) => {
                    kept.push(shared);
                    owned.push(None);
                }
            }
        }
        Handover { owned, kept }
    }

    /// The arguments, in the order the handles were given.
    pub(crate) fn args(&mut self) -> Vec<Arg<'_>> {
        let mut kept = self.kept.iter();
        let mut args = Vec::with_capacity(self.owned.len());
        for slot in self.owned.iter_mut() {
            match slot.take() {
                Some(buffer) => args.push(Arg::Donated(buffer)),
                None => args.extend(kept.next().map(|b| Arg::Borrowed(b.as_ref()))),
            }
        }
        args
    }
}

/// Runs forwards through a [`JitCache`]: one trace and compile per
/// [`JitKey`] (weights layouts, input specs, training, rng use).
#[derive(Default)]
pub struct Runner {
    jit: JitCache,
    /// Serialises runs (state is handed to the executable during a run)
    /// and holds the last run's key and program: a call like the last one
    /// (the common case) is matched against it without building a key.
    running: Mutex<Option<LastRun>>,
}

/// The key and program of a runner's last run.
struct LastRun {
    key: JitKey,
    jitted: Arc<Jitted>,
}

/// Whether the input buffers `a` have the structure and specs of `b`.
fn same_layout(a: &Tree<&Buffer>, b: &Tree<ArraySpec>) -> bool {
    match (a, b) {
        (Tree::Leaf(x), Tree::Leaf(s)) => x.spec() == s,
        (Tree::Tuple(x), Tree::Tuple(y)) | (Tree::List(x), Tree::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_layout(a, b))
        }
        (Tree::Map(x), Tree::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka == kb && same_layout(a, b))
        }
        (Tree::Empty, Tree::Empty) => true,
        _ => false,
    }
}

impl Runner {
    /// A runner compiling through `cache`.
    pub(crate) fn new(cache: CompileCache) -> Runner {
        Runner {
            jit: JitCache::new(cache),
            running: Mutex::new(None),
        }
    }

    /// The persistent cache behind the runner's programs.
    pub(crate) fn compile_cache(&self) -> &CompileCache {
        self.jit.disk()
    }

    /// How many programs this runner has traced and compiled.
    pub(crate) fn compiles(&self) -> usize {
        self.jit.traced()
    }

    /// Runs the forward of `layers` on `inputs`.
    pub(crate) fn run(
        &self,
        client: &Client,
        name: &str,
        layers: &[&dyn Layer],
        inputs: &Tree<&Buffer>,
        training: Training,
        trace_fn: &TraceFn<'_>,
    ) -> Result<Tree<Buffer>> {
        let mut last = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let input_leaves = inputs.leaves();
        let mut has_state = false;
        // The last run's program when this call has its key (the layers'
        // layouts compare by hash and pointer: cheap).
        let mut hit = None;
        if let Some(prev) = last.as_ref().filter(|prev| {
            prev.key.client == client.id()
                && prev.key.training == training
                && prev.key.weights.len() == layers.len()
                && same_layout(inputs, prev.key.inputs.specs())
        }) {
            let mut same = true;
            for (i, l) in layers.iter().enumerate() {
                let (layout, state) = hooks(*l).layout()?;
                has_state |= state;
                same &= layout == prev.key.weights[i]
                    && prev.key.rngs[i] == (training.is_yes() && hooks(*l).uses_rng());
            }
            if same {
                hit = Some(prev.jitted.clone());
            }
        }
        let compiled = match hit {
            Some(jitted) => jitted,
            None => {
                let mut key = JitKey::new(
                    "forward",
                    client,
                    inputs.map_leaves(&mut |b| b.spec().clone()),
                    training,
                );
                has_state = false;
                for l in layers {
                    let (layout, state) = hooks(*l).layout()?;
                    has_state |= state;
                    key.weights.push(layout);
                    key.rngs.push(training.is_yes() && hooks(*l).uses_rng());
                }
                let rng_used = key.rngs.clone();
                let jitted = self.jit.get_or_compile(client, key.clone(), || {
                    let weights = layers
                        .iter()
                        .map(|l| l.weights())
                        .collect::<Result<Vec<_>>>()?;
                    trace_forward(
                        name, layers, &weights, &rng_used, inputs, training, trace_fn,
                    )
                })?;
                *last = Some(LastRun {
                    key,
                    jitted: jitted.clone(),
                });
                jitted
            }
        };
        let mut rng_buffers: Vec<Buffer> = Vec::new();
        if training.is_yes() {
            for l in layers.iter().filter(|l| hooks(**l).uses_rng()) {
                rng_buffers.push(client.buffer_from_host(&hooks(*l).next_rng(), &[2])?);
            }
        }
        if !has_state {
            // Fast path: no state to hand over; params and inputs borrowed.
            let params: Vec<Arc<Buffer>> = layers
                .iter()
                .map(|l| hooks(*l).flat_params())
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect();
            let mut args: Vec<Arg<'_>> =
                Vec::with_capacity(params.len() + rng_buffers.len() + input_leaves.len());
            args.extend(params.iter().map(|b| Arg::Borrowed(b.as_ref())));
            args.extend(rng_buffers.iter().map(Arg::Borrowed));
            args.extend(input_leaves.iter().map(|b| Arg::Borrowed(b)));
            let outs = compiled.exe.execute_args(args)?;
            return compiled.outputs[0].unflatten(outs);
        }
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;

        // Arguments: params (borrowed), state (donated when we hold the only
        // handle), rng keys, inputs.
        let mut args: Vec<Arg<'_>> = Vec::with_capacity(compiled.exe.signature().inputs.len());
        for w in &weights {
            args.extend(
                w.params
                    .leaves()
                    .into_iter()
                    .map(|b| Arg::Borrowed(b.as_ref())),
            );
        }
        {
            let mut all: Vec<&Buffer> = args.iter().map(|a| a.buffer()).collect();
            all.extend(
                weights
                    .iter()
                    .flat_map(|w| w.state.leaves().into_iter().map(|b| b.as_ref())),
            );
            all.extend(rng_buffers.iter());
            all.extend(input_leaves.iter().copied());
            compiled.exe.check_arguments(&all)?;
        }
        let params: Vec<Arc<Buffer>> = weights
            .iter()
            .flat_map(|w| w.params.leaves().into_iter().cloned())
            .collect();
        drop(args);
        drop(weights);
        // Take the state out of the layers so that our handles are the only ones.
        let state_leaves: Vec<Arc<Buffer>> = layers
            .iter()
            .flat_map(|l| hooks(*l).replace_state(Tree::Empty).into_leaves())
            .collect();
        let mut args: Vec<Arg<'_>> = params.iter().map(|b| Arg::Borrowed(b.as_ref())).collect();
        let mut handover = Handover::new(state_leaves);
        args.extend(handover.args());
        args.extend(rng_buffers.iter().map(Arg::Borrowed));
        args.extend(input_leaves.iter().map(|b| Arg::Borrowed(b)));
        let mut outs = compiled.exe.execute_args(args)?;

        // Split outputs from the new state of each layer, and put the state back.
        let n_out = compiled.outputs[0].len();
        let state_out = outs.split_off(n_out);
        let mut state_out = state_out.into_iter();
        for (layer, tree) in layers.iter().zip(&compiled.outputs[1..]) {
            let leaves: Vec<Arc<Buffer>> =
                state_out.by_ref().take(tree.len()).map(Arc::new).collect();
            hooks(*layer).replace_state(tree.unflatten(leaves)?);
        }
        compiled.outputs[0].unflatten(outs)
    }
}

/// Traces the forward of `layers`: the computation, then its output
/// structures (the outputs, then each layer's new state).
#[allow(clippy::too_many_arguments)]
fn trace_forward(
    name: &str,
    layers: &[&dyn Layer],
    weights: &[super::layer::Weights],
    rng_used: &[bool],
    inputs: &Tree<&Buffer>,
    training: Training,
    trace_fn: &TraceFn<'_>,
) -> Result<(Computation, Vec<Tree<()>>)> {
    // Parameters, in order: every layer's params, every layer's state,
    // the rng keys of layers that use one, the inputs.
    let mut specs: Vec<(String, ArraySpec)> = Vec::new();
    for (l, w) in layers.iter().zip(weights) {
        for (p, b) in w.params.entries() {
            specs.push((format!("{}/params/{p}", l.name()), b.spec().clone()));
        }
    }
    let mut donors = vec![false; specs.len()];
    for (l, w) in layers.iter().zip(weights) {
        for (p, b) in w.state.entries() {
            specs.push((format!("{}/state/{p}", l.name()), b.spec().clone()));
            donors.push(true);
        }
    }
    for (l, _) in layers.iter().zip(rng_used).filter(|(_, &u)| u) {
        specs.push((format!("{}/rng", l.name()), ArraySpec::of::<u32>([2])));
        donors.push(false);
    }
    for (p, b) in inputs.entries() {
        specs.push((
            if p.is_empty() {
                "inputs".into()
            } else {
                format!("inputs/{p}")
            },
            b.spec().clone(),
        ));
        donors.push(false);
    }
    let flat = Tree::List(specs.iter().map(|(_, s)| Tree::Leaf(s.clone())).collect());
    let mut out_tree = Tree::Empty;
    let mut state_trees = Vec::new();
    let computation = trace(name, &flat, |b, t| {
        let mut leaves = t.into_leaves().into_iter();
        let mut per_layer: Vec<LayerValues> = weights
            .iter()
            .map(|w| {
                let params = w
                    .params
                    .structure()
                    .unflatten(leaves.by_ref().take(w.params.len()).collect())?;
                Ok(LayerValues {
                    params,
                    state: Tree::Empty,
                    rng: None,
                })
            })
            .collect::<Result<_>>()?;
        for (lv, w) in per_layer.iter_mut().zip(weights) {
            lv.state = w
                .state
                .structure()
                .unflatten(leaves.by_ref().take(w.state.len()).collect())?;
        }
        for (lv, &used) in per_layer.iter_mut().zip(rng_used) {
            if used {
                lv.rng = leaves.next();
            }
        }
        let ins = inputs.structure().unflatten(leaves.collect())?;
        let (out, new_states) = trace_fn(b, per_layer, ins, training)?;
        let mut results: Vec<Value> = out.leaves().into_iter().cloned().collect();
        out_tree = out.structure();
        for ((l, w), new) in layers.iter().zip(weights).zip(&new_states) {
            check_new_state(
                &l.name(),
                &w.state.map_leaves(&mut |b| b.spec().clone()),
                new,
            )?;
            results.extend(new.leaves().into_iter().cloned());
            state_trees.push(new.structure());
        }
        Ok(Tree::List(results.into_iter().map(Tree::Leaf).collect()))
    })?;
    let mut outputs = vec![out_tree];
    outputs.extend(state_trees);
    Ok((computation.with_donors(&donors)?, outputs))
}

/// The new state must have the old state's structure, dtypes and shapes.
fn check_new_state(layer: &str, old: &Tree<ArraySpec>, new: &Tree<Value>) -> Result<()> {
    let (old_paths, new_paths) = (old.paths(), new.paths());
    if old.structure() != new.structure() {
        let missing: Vec<&String> = old_paths
            .iter()
            .filter(|p| !new_paths.contains(p))
            .collect();
        let extra: Vec<&String> = new_paths
            .iter()
            .filter(|p| !old_paths.contains(p))
            .collect();
        return Err(Error::TreePaths {
            what: format!("layer `{layer}`: new state"),
            missing: missing.into_iter().cloned().collect(),
            unexpected: extra.into_iter().cloned().collect(),
            expected: old_paths.clone(),
        });
    }
    for ((path, want), got) in old.entries().into_iter().zip(new.leaves()) {
        if want != got.spec() {
            return Err(Error::ValueSpecMismatch {
                what: format!("layer `{layer}`: new state"),
                path: path.to_string(),
                expected: Box::new(want.clone()),
                found: Box::new(got.spec().clone()),
            });
        }
    }
    Ok(())
}
