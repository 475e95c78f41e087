//! Models: the functional API (`Input` → layers → `Model`) and
//! `Sequential`. A model compiles its whole forward pass into ONE
//! executable; its layers' params and state stay on the device.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::builder::{Tree, Value};
use crate::cache::CompileCache;
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::weights::{load_tree, save_tree, NameMap, SafetensorsFile};

use super::layer::sealed::hooks;
use super::layer::{output_specs, Layer, Weights};
use super::runner::{LayerValues, Runner};
use super::signature::{CallArgs, Training};

enum SymNode {
    Input {
        id: usize,
        spec: ArraySpec,
    },
    Apply {
        layer: Arc<dyn Layer>,
        inputs: Tree<Symbolic>,
        outputs: Tree<ArraySpec>,
    },
}

/// A symbolic array of the functional API: an [`Input`] or the output of a
/// layer applied to symbolic arrays. Its first dimension is the batch,
/// unknown until the model is called (shown as `None`; traced as 1).
#[derive(Clone)]
pub struct Symbolic {
    node: Arc<SymNode>,
    /// Which output leaf of the node.
    leaf: usize,
    spec: ArraySpec,
    /// The client layers applied to it are built on.
    client: Client,
}

impl std::fmt::Debug for Symbolic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Symbolic({})", shape_string(&self.spec))
    }
}

fn shape_string(spec: &ArraySpec) -> String {
    let rest: Vec<String> = spec.dims.iter().skip(1).map(|d| d.to_string()).collect();
    if rest.is_empty() {
        "(None,)".to_string()
    } else {
        format!("(None, {})", rest.join(", "))
    }
}

static INPUT_IDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Keras's `Input`: a symbolic model input of per-example shape `dims`,
/// on the client that layers applied to it are built on (and that the model
/// runs on).
///
/// ```
/// use xlayer::layers::Input;
/// let client = xlayer::Client::cpu()?;
/// let x = Input::new(&client, &[28, 28, 1], xlayer::DType::F32);
/// assert_eq!(x.dims(), &[1, 28, 28, 1]); // batch traced as 1
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct Input;

impl Input {
    /// A symbolic input of per-example shape `dims` (the batch dimension is
    /// added) on `client`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(client: &Client, dims: &[usize], dtype: DType) -> Symbolic {
        let mut full = vec![1];
        full.extend_from_slice(dims);
        let spec = ArraySpec::new(dtype, full);
        let id = INPUT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Symbolic {
            node: Arc::new(SymNode::Input {
                id,
                spec: spec.clone(),
            }),
            leaf: 0,
            spec,
            client: client.clone(),
        }
    }
}

impl Symbolic {
    /// Dimensions, batch (traced as 1) first.
    pub fn dims(&self) -> &[usize] {
        &self.spec.dims
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.spec.dtype
    }

    /// The client layers applied to it are built on.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Applying a layer to symbolic inputs (the functional API). Implemented for
/// every layer type; the layer is built from the symbolic input specs, on
/// the inputs' client.
pub trait Apply {
    /// Applies to one symbolic array; the layer must return one array.
    fn apply(&self, x: &Symbolic) -> Result<Symbolic>;
    /// Applies to a tree of symbolic arrays; returns the output tree.
    fn apply_tree(&self, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>>;
}

impl<L: Layer + Clone + 'static> Apply for L {
    fn apply(&self, x: &Symbolic) -> Result<Symbolic> {
        match self.apply_tree(&Tree::Leaf(x.clone()))? {
            Tree::Leaf(s) => Ok(s),
            other => Err(Error::NotALeaf {
                what: format!("layer `{}` (use apply_tree)", self.name()),
                paths: other.paths(),
            }),
        }
    }

    fn apply_tree(&self, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>> {
        let layer: Arc<dyn Layer> = Arc::new(self.clone());
        apply_layer(layer, x)
    }
}

/// Applies a shared layer handle to symbolic inputs, building it on their
/// client.
///
/// Errors: no symbolic inputs; inputs of different clients; those of the
/// layer's build and call function.
pub fn apply_layer(layer: Arc<dyn Layer>, x: &Tree<Symbolic>) -> Result<Tree<Symbolic>> {
    let client = common_client(&x.leaves(), &layer.name())?;
    let specs = x.map_leaves(&mut |s| s.spec.clone());
    layer.build(&client, &specs)?;
    let outputs = output_specs(layer.as_ref(), &specs, Training::No)?;
    let node = Arc::new(SymNode::Apply {
        layer,
        inputs: x.clone(),
        outputs: outputs.clone(),
    });
    let mut i = 0;
    Ok(outputs.map_leaves(&mut |s| {
        let sym = Symbolic {
            node: node.clone(),
            leaf: i,
            spec: s.clone(),
            client: client.clone(),
        };
        i += 1;
        sym
    }))
}

/// The one client of symbolic arrays `xs` (applied to by `what`).
fn common_client(xs: &[&Symbolic], what: &str) -> Result<Client> {
    let first = xs.first().ok_or_else(|| Error::Empty {
        what: what.to_string(),
        reason: "no symbolic inputs",
    })?;
    if let Some(other) = xs.iter().find(|s| s.client.id() != first.client.id()) {
        return Err(Error::ForeignClient {
            what: format!("a symbolic input {} of {what}", shape_string(&other.spec)),
            other: format!("{:?}", other.client),
            this: format!("{:?}", first.client),
        });
    }
    Ok(first.client.clone())
}

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
    name: String,
    client: Client,
    inputs: Tree<Symbolic>,
    outputs: Tree<Symbolic>,
    layers: Vec<Arc<dyn Layer>>,
    runner: Runner,
    /// Makes a swap of all weights atomic: held for reading while a call or
    /// a snapshot reads the layers' weights, for writing while
    /// [`Model::load_weights`] or a train step replaces them, so a call
    /// sees either all old or all new weights, never a mix.
    swap: std::sync::RwLock<()>,
}

fn node_key(n: &Arc<SymNode>) -> usize {
    Arc::as_ptr(n) as *const () as usize
}

fn layer_key(l: &Arc<dyn Layer>) -> usize {
    Arc::as_ptr(l) as *const () as usize
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
        let bar = indicatif::ProgressBar::new(steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{pos}/{len} [{bar:30}] {elapsed_precise} {per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
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
            bar.inc(1);
        }
        bar.finish_and_clear();
        out.ok_or_else(|| Error::Empty {
            what: "predict".into(),
            reason: "the input has no rows",
        })
    }

    /// The familiar table: layer (type), output shape, params; totals.
    pub fn summary(&self) -> Result<String> {
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut order: Vec<&Symbolic> = Vec::new();
        fn collect<'a>(s: &'a Symbolic, seen: &mut HashSet<usize>, order: &mut Vec<&'a Symbolic>) {
            if !seen.insert(node_key(&s.node)) {
                return;
            }
            if let SymNode::Apply { inputs, .. } = &*s.node {
                for i in inputs.leaves() {
                    collect(i, seen, order);
                }
            }
            order.push(s);
        }
        for o in self.outputs.leaves() {
            collect(o, &mut seen, &mut order);
        }
        for s in order {
            match &*s.node {
                SymNode::Input { spec, .. } => {
                    rows.push(("input (InputLayer)".to_string(), shape_string(spec), 0usize))
                }
                SymNode::Apply { layer, outputs, .. } => {
                    let w = layer.weights()?;
                    let shape = outputs
                        .leaves()
                        .iter()
                        .map(|s| shape_string(s))
                        .collect::<Vec<_>>()
                        .join(", ");
                    rows.push((
                        format!("{} ({})", layer.name(), layer.kind()),
                        shape,
                        w.param_count() + w.state_count(),
                    ));
                }
            }
        }
        let (mut trainable, mut non_trainable) = (0, 0);
        for (_, w) in self.weights()? {
            trainable += w.param_count();
            non_trainable += w.state_count();
        }
        let w0 = rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max("Layer (type)".len());
        let w1 = rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max("Output Shape".len());
        let line = "─".repeat(w0 + w1 + 16);
        let mut s = format!(
            "Model: \"{}\"\n{line}\n{:<w0$}  {:<w1$}  {:>10}\n{line}\n",
            self.name, "Layer (type)", "Output Shape", "Param #"
        );
        for (a, b, c) in &rows {
            s.push_str(&format!("{a:<w0$}  {b:<w1$}  {c:>10}\n"));
        }
        s.push_str(&format!(
            "{line}\n Total params: {}\n Trainable params: {trainable}\n Non-trainable params: {non_trainable}\n",
            trainable + non_trainable
        ));
        Ok(s)
    }

    /// Saves every layer's params and state to a safetensors file, keyed
    /// `layer/params/path` and `layer/state/path` (written atomically).
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut all = BTreeMap::new();
        for (name, w) in self.weights()? {
            all.insert(name, Tree::map([("params", w.params), ("state", w.state)]));
        }
        save_tree(path, &Tree::Map(all), &NameMap::new())
    }

    /// Loads weights saved by [`Model::save_weights`]. Every tensor is
    /// checked (missing, unexpected, shape, dtype) before any layer changes:
    /// a failed load leaves the model exactly as it was. The weights go to
    /// the model's client.
    ///
    /// The swap is atomic with respect to this model's calls, snapshots and
    /// train steps on other threads: each sees either all the old weights or
    /// all the new ones (a load waits for running calls to finish). Setting
    /// weights on the layers directly ([`Layer::set_weights`]) is not.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let client = &self.client;
        let file = SafetensorsFile::open(path)?;
        let current = self.weights()?;
        let mut wanted = BTreeMap::new();
        for (name, w) in &current {
            wanted.insert(
                name.clone(),
                Tree::map([("params", w.param_specs()), ("state", w.state_specs())]),
            );
        }
        let (loaded, _) = load_tree(client, &file, &Tree::Map(wanted), &NameMap::new())?;
        let Tree::Map(mut per_layer) = loaded else {
            return Err(Error::NotAMap {
                what: "loaded weights".into(),
                paths: Vec::new(),
            });
        };
        let mut new = Vec::new();
        for (l, (name, old)) in self.layers.iter().zip(&current) {
            let Some(Tree::Map(mut parts)) = per_layer.remove(name) else {
                return Err(Error::UnknownName {
                    what: "weights file".into(),
                    kind: "weights for layer",
                    name: name.clone(),
                    known: Vec::new(),
                });
            };
            let take = |parts: &mut BTreeMap<String, Tree<Buffer>>, k: &str| {
                parts.remove(k).unwrap_or(Tree::Empty).into_arcs()
            };
            let w = Weights {
                params: take(&mut parts, "params"),
                state: take(&mut parts, "state"),
            };
            // Empty subtrees are not stored in the file: keep their structure.
            let w = Weights {
                params: if old.params.is_empty() {
                    old.params.clone()
                } else {
                    w.params
                },
                state: if old.state.is_empty() {
                    old.state.clone()
                } else {
                    w.state
                },
            };
            old.check_same_layout(&w, &format!("load_weights of layer `{name}`"))?;
            new.push((l.clone(), w));
        }
        let _exclusive = self.weights_exclusive();
        for (l, w) in new {
            l.set_weights(w)?;
        }
        Ok(())
    }
}

/// Host data with a spec (row-major, little-endian): what `predict` takes
/// and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct HostArray {
    /// Dtype and dimensions.
    pub spec: ArraySpec,
    /// The data.
    pub bytes: Vec<u8>,
}

impl HostArray {
    /// From a slice of native values and dimensions.
    pub fn from_slice<T: crate::NativeType>(data: &[T], dims: &[usize]) -> Result<HostArray> {
        let spec = ArraySpec::new(T::DTYPE, dims);
        spec.check_size(|| "HostArray".into())?;
        if data.len() != spec.element_count() {
            return Err(Error::HostDataSize {
                expected: spec.element_count(),
                actual: data.len(),
                spec,
            });
        }
        let mut bytes = Vec::with_capacity(spec.size_in_bytes());
        for &x in data {
            x.extend_le_bytes(&mut bytes);
        }
        Ok(HostArray { spec, bytes })
    }

    /// The data as `Vec<T>`.
    pub fn to_vec<T: crate::NativeType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.spec.dtype {
            return Err(Error::DType {
                context: "HostArray::to_vec".into(),
                expected: T::DTYPE,
                actual: self.spec.dtype,
            });
        }
        Ok(self
            .bytes
            .chunks_exact(std::mem::size_of::<T>())
            .map(T::from_le_slice)
            .collect())
    }

    /// Rows `start..end` of the first dimension.
    pub fn rows(&self, start: usize, end: usize) -> Result<HostArray> {
        let Some(&n) = self.spec.dims.first() else {
            return Err(Error::RowsOutOfRange {
                spec: self.spec.clone(),
                start,
                end,
            });
        };
        if start > end || end > n {
            return Err(Error::RowsOutOfRange {
                spec: self.spec.clone(),
                start,
                end,
            });
        }
        let row = self.spec.size_in_bytes() / n.max(1);
        let mut spec = self.spec.clone();
        spec.dims[0] = end - start;
        Ok(HostArray {
            spec,
            bytes: self.bytes[start * row..end * row].to_vec(),
        })
    }

    /// Appends the rows of `other` (same dtype and trailing dimensions).
    pub fn concat_rows(mut self, other: &HostArray) -> Result<HostArray> {
        let same_rows = |a: &ArraySpec, b: &ArraySpec| {
            a.rank() > 0 && b.rank() > 0 && a.dims[1..] == b.dims[1..]
        };
        if self.spec.dtype != other.spec.dtype || !same_rows(&self.spec, &other.spec) {
            return Err(Error::DataMismatch {
                what: "the rows to stack",
                found: other.spec.clone(),
                expected: format!("cannot stack them under {}", self.spec),
            });
        }
        self.spec.dims[0] = self.spec.dims[0]
            .checked_add(other.spec.dims[0])
            .ok_or_else(|| Error::ShapeTooLarge {
                what: "stacked rows".into(),
                spec: other.spec.clone(),
            })?;
        self.bytes.extend_from_slice(&other.bytes);
        Ok(self)
    }
}

/// Keras's `Sequential`: layers applied one after another. Built on the
/// first call from the input's shape; compiles into one executable.
///
/// ```
/// use xlayer::builder::nn;
/// use xlayer::layers::{Inputs, JaxLayer, Out, Sequential, Training};
/// use xlayer::Client;
/// let relu = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from(nn::relu(&x.into_leaf()?)?)))?;
/// let double = JaxLayer::new(|Inputs(x): Inputs| Ok(Out::from((x.into_leaf()? * 2.0)?)))?;
/// let model = Sequential::new().add(relu).add(double);
/// let client = Client::cpu()?;
/// let x = client.buffer_from_host(&[-1f32, 2.0], &[1, 2])?;
/// assert_eq!(model.call1(&x, Training::No)?.to_vec::<f32>()?, vec![0.0, 4.0]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Arc<dyn Layer>>,
    model: Mutex<Option<Arc<Model>>>,
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer at the end (the layer value stays shared).
    #[allow(clippy::should_implement_trait)]
    pub fn add<L: Layer + 'static>(mut self, layer: L) -> Self {
        self.layers.push(Arc::new(layer));
        *self.model.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    /// Adds a shared layer handle at the end.
    pub fn add_shared(mut self, layer: Arc<dyn Layer>) -> Self {
        self.layers.push(layer);
        *self.model.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        self
    }

    /// Builds on `client` for per-example input shape `dims` (without the
    /// batch dimension); the model is kept and reused for the same input.
    ///
    /// Errors: no layers; those of the layers' builds.
    pub fn build(&self, client: &Client, dims: &[usize], dtype: DType) -> Result<Arc<Model>> {
        let mut guard = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = guard.as_ref() {
            let want = &m.inputs.leaves()[0].spec;
            if want.dtype == dtype && want.dims[1..] == *dims && m.client.id() == client.id() {
                return Ok(m.clone());
            }
        }
        if self.layers.is_empty() {
            return Err(Error::Empty {
                what: "Sequential".into(),
                reason: "it has no layers",
            });
        }
        let x = Input::new(client, dims, dtype);
        let mut y = Tree::Leaf(x.clone());
        for l in &self.layers {
            y = apply_layer(l.clone(), &y)?;
        }
        let model = Arc::new(Model::new(x, y)?.with_name("sequential"));
        *guard = Some(model.clone());
        Ok(model)
    }

    /// The built model, if any.
    pub fn model(&self) -> Option<Arc<Model>> {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs on one input array (building on its client on first use) and
    /// returns one output.
    ///
    /// Errors: an input without a batch dimension; those of
    /// [`Sequential::build`] and [`Model::call1`].
    pub fn call1(&self, x: &Buffer, training: Training) -> Result<Buffer> {
        let dims = x.dims().get(1..).ok_or_else(|| Error::DataMismatch {
            what: "the Sequential input",
            found: x.spec().clone(),
            expected: "it needs a batch dimension".into(),
        })?;
        self.build(x.client(), dims, x.dtype())?.call1(x, training)
    }
}

#[cfg(test)]
mod host_array_tests {
    use super::HostArray;

    #[test]
    fn rows_and_stacking_check_their_input() {
        let a = HostArray::from_slice(&[1f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(
            a.rows(1, 2).unwrap().to_vec::<f32>().unwrap(),
            vec![3.0, 4.0]
        );
        assert!(a
            .rows(1, 3)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let s = HostArray::from_slice(&[1f32], &[]).unwrap();
        assert!(s
            .rows(0, 0)
            .unwrap_err()
            .to_string()
            .contains("out of range for f32[]"));
        assert!(s
            .clone()
            .concat_rows(&s)
            .unwrap_err()
            .to_string()
            .contains("cannot stack"));
        let b = HostArray::from_slice(&[5f32, 6.0, 7.0], &[1, 3]).unwrap();
        assert!(a
            .clone()
            .concat_rows(&b)
            .unwrap_err()
            .to_string()
            .contains("f32[1,3]"));
        let c = a.clone().concat_rows(&a).unwrap();
        assert_eq!(c.spec.dims, vec![4, 2]);
    }
}
