//! [`Model`]: symbolic inputs, outputs and the layers between them,
//! compiled into ONE executable per input specs and mode; its layers' params
//! and state stay on the device. Its weights' summary, saving and loading
//! are in `model_weights.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::builder::{Tree, Value};
use crate::cache::CompileCache;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::progress::Progress;

use super::layer::sealed::hooks;
use super::layer::{Layer, Weights};
use super::runner::{LayerValues, Runner};
use super::signature::{CallArgs, Training};
use super::symbolic::{common_client, layer_key, node_key, shape_string, SymNode, Symbolic};
use crate::host_array::HostArray;

/// A model: inputs, outputs, and the layers between them, compiled as one
/// program per input shape and mode, run on its inputs' client.
///
/// ```
/// use xlayer::builder::{nn, Tree};
/// use xlayer::layers::{Apply, Init, Input, Inputs, JaxLayer, Model, Out, Params, Training};
/// use xlayer::{Client, DType};
/// let dense = |n: usize| JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
///         Ok(Out::from(x.into_leaf()?.matmul(p.get("w")?)?))
///     })
///     .init_fn(move |Inputs(x): Inputs| {
///         let x = x.into_leaf()?;
///         Ok(Init(Tree::map([("w", Tree::leaf(x.builder().full(0.5, DType::F32, &[x.dims()[1], n])?))])))
///     })
///     .build();
/// let client = Client::cpu()?;
/// let x = Input::new(&client, &[3], DType::F32);
/// let y = dense(2)?.apply(&dense(4)?.apply(&x)?)?;
/// let model = Model::new(x, y)?;
/// assert_eq!(model.count_params()?, 3 * 4 + 4 * 2);
/// let input = client.buffer_from_host(&[1f32, 1.0, 1.0], &[1, 3])?;
/// let out = model.call1(&input, Training::No)?;
/// assert_eq!(out.to_vec::<f32>()?, vec![3.0, 3.0]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct Model {
    pub(super) name: String,
    pub(super) client: Client,
    pub(super) inputs: Tree<Symbolic>,
    pub(super) outputs: Tree<Symbolic>,
    pub(super) layers: Vec<Arc<dyn Layer>>,
    runner: Runner,
    /// Makes a swap of all weights atomic: held for reading while a call or
    /// a snapshot reads the layers' weights, for writing while
    /// [`Model::load_weights`] or a train step replaces them, so a call
    /// sees either all old or all new weights, never a mix.
    swap: std::sync::RwLock<()>,
}

impl Model {
    /// A model from symbolic inputs to symbolic outputs, on the inputs'
    /// client.
    ///
    /// Errors: an output that does not depend only on the given inputs;
    /// inputs or layers of different clients; two different layers with the
    /// same name.
    pub fn new(
        inputs: impl Into<Tree<Symbolic>>,
        outputs: impl Into<Tree<Symbolic>>,
    ) -> Result<Model> {
        let (inputs, outputs) = (inputs.into(), outputs.into());
        let input_ids: HashSet<usize> = inputs
            .leaves()
            .iter()
            .filter_map(|s| match &*s.node {
                SymNode::Input { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        if input_ids.len() != inputs.len() {
            return Err(Error::Misuse {
                what: "Model".into(),
                reason: "inputs must be distinct `Input`s",
            });
        }
        let mut layers: Vec<Arc<dyn Layer>> = Vec::new();
        let mut seen_nodes = HashSet::new();
        fn visit(
            s: &Symbolic,
            input_ids: &HashSet<usize>,
            seen: &mut HashSet<usize>,
            layers: &mut Vec<Arc<dyn Layer>>,
        ) -> Result<()> {
            if !seen.insert(node_key(&s.node)) {
                return Ok(());
            }
            match &*s.node {
                SymNode::Input { id, spec } => {
                    if !input_ids.contains(id) {
                        return Err(Error::ForeignInput {
                            input: shape_string(spec),
                        });
                    }
                }
                SymNode::Apply { layer, inputs, .. } => {
                    for i in inputs.leaves() {
                        visit(i, input_ids, seen, layers)?;
                    }
                    if !layers.iter().any(|l| layer_key(l) == layer_key(layer)) {
                        layers.push(layer.clone());
                    }
                }
            }
            Ok(())
        }
        for o in outputs.leaves() {
            visit(o, &input_ids, &mut seen_nodes, &mut layers)?;
        }
        let client = common_client(&inputs.leaves(), "Model::new")?;
        for l in &layers {
            if let Some(c) = hooks(l.as_ref()).client().filter(|c| c.id() != client.id()) {
                return Err(Error::ForeignClient {
                    what: format!("layer `{}`", l.name()),
                    other: format!("{c:?}"),
                    this: format!("{client:?}"),
                });
            }
        }
        let mut names = HashMap::new();
        for l in &layers {
            if let Some(prev) = names.insert(l.name(), layer_key(l)) {
                if prev != layer_key(l) {
                    return Err(Error::DuplicateName {
                        what: "Model".into(),
                        kind: "layer",
                        name: l.name().to_string(),
                    });
                }
            }
        }
        Ok(Model {
            name: "model".into(),
            client,
            inputs,
            outputs,
            layers,
            runner: Runner::default(),
            swap: Default::default(),
        })
    }

    /// Compiles the model's forwards through `cache` (default: the
    /// environment's, [`CompileCache::from_env`], or none when that has no
    /// home). Programs traced before are forgotten.
    pub fn with_compile_cache(mut self, cache: CompileCache) -> Self {
        self.runner = Runner::new(cache);
        self
    }

    /// The persistent compilation cache of the model's forwards.
    pub fn compile_cache(&self) -> &CompileCache {
        self.runner.compile_cache()
    }

    /// Renames the model (used as the compiled module's name).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The client the model runs on (its inputs').
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The symbolic inputs' specs (batch dimension traced as 1).
    pub fn input_specs(&self) -> Tree<ArraySpec> {
        self.inputs.map_leaves(&mut |s| s.spec.clone())
    }

    /// The layers, in the order the forward pass first uses them.
    pub fn layers(&self) -> &[Arc<dyn Layer>] {
        &self.layers
    }

    /// Number of programs this model's calls have traced and compiled (or
    /// loaded from the compilation cache) so far: one per input specs and
    /// mode.
    pub fn compile_count(&self) -> usize {
        self.runner.compiles()
    }

    /// Shared access to the weights (calls, snapshots): excludes a swap.
    pub(crate) fn weights_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.swap.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Exclusive access to the weights (swaps): waits for running calls.
    pub(crate) fn weights_exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.swap.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every layer's weights, by layer name (one consistent snapshot: never
    /// half of a concurrent [`Model::load_weights`]).
    pub fn weights(&self) -> Result<Vec<(String, Weights)>> {
        let _shared = self.weights_shared();
        self.layers
            .iter()
            .map(|l| Ok((l.name(), l.weights()?)))
            .collect()
    }

    /// Number of trainable weight arrays.
    pub fn trainable_weight_count(&self) -> Result<usize> {
        Ok(self.weights()?.iter().map(|(_, w)| w.params.len()).sum())
    }

    /// Number of non-trainable weight arrays.
    pub fn non_trainable_weight_count(&self) -> Result<usize> {
        Ok(self.weights()?.iter().map(|(_, w)| w.state.len()).sum())
    }

    /// Number of scalars in all weights (trainable and not).
    pub fn count_params(&self) -> Result<usize> {
        Ok(self
            .weights()?
            .iter()
            .map(|(_, w)| w.param_count() + w.state_count())
            .sum())
    }

    /// Traces the forward pass into `b` (used by the runner).
    pub(crate) fn trace_forward(
        &self,
        lv: Vec<LayerValues>,
        inputs: Tree<Value>,
        training: Training,
    ) -> Result<(Tree<Value>, Vec<Tree<Value>>)> {
        let mut per_layer: HashMap<usize, LayerValues> = HashMap::new();
        for (l, v) in self.layers.iter().zip(lv) {
            per_layer.insert(layer_key(l), v);
        }
        let mut new_states: HashMap<usize, Tree<Value>> = HashMap::new();
        let mut values: HashMap<usize, Vec<Value>> = HashMap::new();
        for (sym, v) in self.inputs.leaves().into_iter().zip(inputs.leaves()) {
            values.insert(node_key(&sym.node), vec![v.clone()]);
        }
        fn eval(
            s: &Symbolic,
            values: &mut HashMap<usize, Vec<Value>>,
            per_layer: &HashMap<usize, LayerValues>,
            new_states: &mut HashMap<usize, Tree<Value>>,
            training: Training,
        ) -> Result<Value> {
            let key = node_key(&s.node);
            if let Some(v) = values.get(&key) {
                return Ok(v[s.leaf].clone());
            }
            let SymNode::Apply { layer, inputs, .. } = &*s.node else {
                return Err(Error::Misuse {
                    what: "Model".into(),
                    reason: "an input of the model was not provided",
                });
            };
            let ins = inputs.try_map(&mut |i| eval(i, values, per_layer, new_states, training))?;
            let lk = layer_key(layer);
            let lv = per_layer.get(&lk).ok_or_else(|| Error::UnknownName {
                what: "the model".into(),
                kind: "layer",
                name: layer.name().to_string(),
                known: Vec::new(),
            })?;
            let state = new_states
                .get(&lk)
                .cloned()
                .unwrap_or_else(|| lv.state.clone());
            let b = ins
                .leaves()
                .first()
                .map(|v| v.builder().clone())
                .unwrap_or_default();
            let (out, ns) = layer.trace_call(
                &b,
                CallArgs {
                    params: lv.params.clone(),
                    state,
                    rng: lv.rng.clone(),
                    inputs: ins,
                    training,
                },
            )?;
            new_states.insert(lk, ns);
            let leaves: Vec<Value> = out.leaves().into_iter().cloned().collect();
            values.insert(key, leaves);
            Ok(values[&key][s.leaf].clone())
        }
        let out = self
            .outputs
            .try_map(&mut |s| eval(s, &mut values, &per_layer, &mut new_states, training))?;
        let states = self
            .layers
            .iter()
            .map(|l| {
                new_states
                    .remove(&layer_key(l))
                    .unwrap_or_else(|| per_layer[&layer_key(l)].state.clone())
            })
            .collect();
        Ok((out, states))
    }

    /// Runs the model on device buffers (structured like its inputs, on the
    /// model's client) and returns the outputs. Input specs must match the
    /// model's inputs except for the batch dimension.
    ///
    /// Errors: inputs of another structure, dtype or per-example shape;
    /// buffers of another client ([`Error::ForeignClient`]).
    pub fn call(&self, inputs: &Tree<&Buffer>, training: Training) -> Result<Tree<Buffer>> {
        if inputs.structure() != self.inputs.structure() {
            return Err(Error::StructureMismatch {
                what: format!("model `{}`: inputs", self.name),
                expected: self.inputs.paths(),
                found: inputs.paths(),
            });
        }
        for ((path, want), got) in self.inputs.entries().into_iter().zip(inputs.leaves()) {
            let (w, g) = (&want.spec, got.spec());
            if w.dtype != g.dtype || w.rank() != g.rank() || w.dims[1..] != g.dims[1..] {
                return Err(Error::ValueSpecMismatch {
                    what: format!("model `{}` input", self.name),
                    path: path.to_string(),
                    expected: Box::new(w.clone()),
                    found: Box::new(g.clone()),
                });
            }
        }
        let layers: Vec<&dyn Layer> = self.layers.iter().map(|l| l.as_ref()).collect();
        let _shared = self.weights_shared();
        self.runner.run(
            &self.client,
            &self.name,
            &layers,
            inputs,
            training,
            &|_b, lv, ins, training| self.trace_forward(lv, ins, training),
        )
    }

    /// [`Model::call`] for one input and one output array.
    ///
    /// Errors: those of [`Model::call`]; a model with several outputs.
    pub fn call1(&self, input: &Buffer, training: Training) -> Result<Buffer> {
        match self.call(&Tree::Leaf(input), training)? {
            Tree::Leaf(b) => Ok(b),
            other => Err(Error::NotALeaf {
                what: format!("call1: model `{}` output", self.name),
                paths: other.paths(),
            }),
        }
    }

    /// Keras's `predict` for one input and one output: runs `x` (host data,
    /// batch first) through the model in inference mode, `batch_size` rows at
    /// a time, with a progress bar on a terminal, and returns the rows.
    ///
    /// Errors: `batch_size` 0 or unbatched `x`; those of [`Model::call1`].
    pub fn predict(&self, x: &HostArray, batch_size: usize) -> Result<HostArray> {
        let client = &self.client;
        if batch_size == 0 || x.spec.rank() == 0 {
            return Err(Error::InvalidSetting {
                what: format!("predict on {}", x.spec),
                field: "batch_size",
                value: batch_size.to_string(),
                reason: "predict needs batch_size > 0 and batched input (rank 1 or more)",
            });
        }
        let n = x.spec.dims[0];
        let steps = n.div_ceil(batch_size);
        let bar = Progress::new(
            steps,
            "{pos}/{len} [{bar:30}] {elapsed_precise} {per_sec}",
            true,
        );
        let mut out: Option<HostArray> = None;
        for s in 0..steps {
            let rows = x.rows(s * batch_size, ((s + 1) * batch_size).min(n))?;
            let buf = client.buffer_from_bytes(&rows.bytes, &rows.spec, client.default_device())?;
            let y = self.call1(&buf, Training::No)?;
            let y = HostArray {
                spec: y.spec().clone(),
                bytes: y.to_bytes()?,
            };
            out = Some(match out {
                None => y,
                Some(acc) => acc.concat_rows(&y)?,
            });
            bar.inc();
        }
        bar.finish_and_clear();
        out.ok_or_else(|| Error::Empty {
            what: "predict".into(),
            reason: "the input has no rows",
        })
    }
}
