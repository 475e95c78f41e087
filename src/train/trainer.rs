//! [`Trainer`]: a model with an optimizer, a loss and metrics (Keras's
//! compiled model). It owns the model; the whole train step — forward in
//! training mode, loss, backward (reverse-mode autodiff over the traced
//! graph), optimizer update, layer state update, metrics — is ONE compiled
//! program. Params, optimizer state and layer state are donated to it, so a
//! step moves only the batch in and the scalars out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::builder::autodiff::value_and_grad_with_aux;
use crate::builder::{trace, Builder, Computation, Tree, Value};
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::jit::{JitCache, JitKey};
use crate::layers::layer::sealed::hooks;
use crate::layers::runner::{Handover, LayerValues};
use crate::layers::{HostArray, Model, Training, Weights};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::executable::Arg;

use super::fit::Metric;
use super::loss::Loss;
use super::optim::Optimizer;

/// A model compiled for training (Keras's `model.compile(optimizer, loss,
/// metrics)`): [`Trainer::fit`] and [`Trainer::evaluate`] run it. The
/// trainer owns the model ([`Trainer::model`] to call it,
/// [`Trainer::into_model`] to take it back); the optimizer state lives on
/// the device beside the weights.
///
/// ```
/// use xlayer::builder::{nn, Tree};
/// use xlayer::layers::{Apply, HostArray, Init, Input, Inputs, JaxLayer, Model, Out, Params};
/// use xlayer::train::{FitOptions, Loss, Sgd, Trainer};
/// use xlayer::{Client, DType};
/// let client = Client::cpu()?;
/// let dense = JaxLayer::builder(|Params(p): Params, Inputs(x): Inputs| {
///         Ok(Out::from(x.into_leaf()?.matmul(p.get("w").unwrap())?))
///     })
///     .init_fn(|Inputs(x): Inputs| {
///         let x = x.into_leaf()?;
///         Ok(Init(Tree::map([("w", Tree::leaf(x.builder().zeros(DType::F32, &[2, 1])?))])))
///     })
///     .build()?;
/// let x = Input::new(&client, &[2], DType::F32);
/// let model = Model::new(x.clone(), dense.apply(&x)?)?;
/// let trainer = Trainer::new(model, Sgd::new(0.1), Loss::MeanSquaredError, &[]);
/// let xs = HostArray::from_slice(&[1f32, 0.0, 0.0, 1.0], &[2, 2])?;
/// let ys = HostArray::from_slice(&[1f32, 2.0], &[2, 1])?;
/// let opts = FitOptions { batch_size: 2, epochs: 20, verbose: false, ..Default::default() };
/// let history = trainer.fit(&xs, &ys, &opts)?;
/// let loss = history.get("loss");
/// assert!(loss[19] < loss[0] / 10.0);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct Trainer {
    model: Model,
    optimizer: Box<dyn Optimizer>,
    pub(crate) loss: Loss,
    pub(crate) metrics: Vec<Metric>,
    /// The optimizer state on the device, by layer name (created at the first step).
    pub(super) opt_state: Mutex<Option<Tree<Arc<Buffer>>>>,
    /// Data parallelism over a mesh ([`Trainer::data_parallel`]); `None`
    /// trains on the model's device.
    pub(super) data_parallel: Option<super::data_parallel::DataParallel>,
    /// Train steps (outputs: each layer's params, each layer's state, the
    /// optimizer state, then the loss and metrics) and eval steps.
    pub(crate) jit: JitCache,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", &self.model.name())
            .field("loss", &self.loss)
            .field("metrics", &self.metrics)
            .field("data_parallel", &self.data_parallel)
            .finish()
    }
}

pub(crate) fn upload(client: &Client, a: &HostArray) -> Result<Buffer> {
    client.buffer_from_bytes(&a.bytes, &a.spec, client.default_device())
}

fn state_err(reason: &'static str) -> Error {
    Error::Misuse {
        what: "train step".into(),
        reason,
    }
}

impl Trainer {
    /// Keras's `compile`: `model` with the optimizer, the loss and the
    /// metrics that [`Trainer::fit`] and [`Trainer::evaluate`] use. The
    /// optimizer state is created at the first step.
    pub fn new(
        model: Model,
        optimizer: impl Optimizer + 'static,
        loss: Loss,
        metrics: &[Metric],
    ) -> Trainer {
        Trainer {
            model,
            optimizer: Box::new(optimizer),
            loss,
            metrics: metrics.to_vec(),
            opt_state: Mutex::new(None),
            data_parallel: None,
            jit: JitCache::from_env(),
        }
    }

    /// The model (to call, predict, save or inspect).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model back, with its trained weights.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Number of programs traced and compiled (or loaded from the
    /// compilation cache) for train and eval steps so far.
    pub fn compile_count(&self) -> usize {
        self.jit.traced()
    }

    pub(crate) fn check_data(&self, x: &HostArray, y: &HostArray) -> Result<usize> {
        let specs = self.model.input_specs();
        let want = match &specs {
            Tree::Leaf(s) => s.clone(),
            _ => {
                return Err(Error::NotALeaf {
                    what: "fit/evaluate (models with one input)".into(),
                    paths: specs.paths(),
                })
            }
        };
        if x.spec.dtype != want.dtype
            || x.spec.rank() != want.rank()
            || x.spec.dims[1..] != want.dims[1..]
        {
            return Err(Error::DataMismatch {
                what: "x",
                found: x.spec.clone(),
                expected: format!(
                    "the model takes {} rows of {:?}",
                    want.dtype,
                    &want.dims[1..]
                ),
            });
        }
        let n = x.spec.dims[0];
        if y.spec.dims.first() != Some(&n) {
            return Err(Error::DataMismatch {
                what: "y",
                found: y.spec.clone(),
                expected: format!("x has {n} rows"),
            });
        }
        Ok(n)
    }

    /// Traces forward + loss (+ metrics) for batch specs; `train` adds the
    /// backward pass and the optimizer update.
    pub(crate) fn build_step(
        &self,
        weights: &[Weights],
        opt: Option<&Tree<Arc<Buffer>>>,
        x: &ArraySpec,
        y: &ArraySpec,
        train: bool,
    ) -> Result<(Computation, Vec<Tree<()>>)> {
        let layers = self.model.layers();
        let rng_used: Vec<bool> = layers
            .iter()
            .map(|l| train && hooks(l.as_ref()).uses_rng())
            .collect();
        let mut specs: Vec<ArraySpec> = Vec::new();
        let mut donors = Vec::new();
        for w in weights {
            for b in w.params.leaves() {
                specs.push(b.spec().clone());
                donors.push(train);
            }
        }
        for w in weights {
            for b in w.state.leaves() {
                specs.push(b.spec().clone());
                donors.push(train);
            }
        }
        let opt_tree = opt.map(|t| t.structure()).unwrap_or(Tree::Empty);
        if let Some(o) = opt {
            for b in o.leaves() {
                specs.push(b.spec().clone());
                donors.push(true);
            }
        }
        for _ in rng_used.iter().filter(|u| **u) {
            specs.push(ArraySpec::of::<u32>([2]));
            donors.push(false);
        }
        specs.push(x.clone());
        specs.push(y.clone());
        donors.extend([false, false]);
        let flat = Tree::List(specs.iter().cloned().map(Tree::Leaf).collect());
        let names: Vec<String> = layers.iter().map(|l| l.name()).collect();
        let comp = trace(
            &format!(
                "{}_{}",
                self.model.name(),
                if train { "train_step" } else { "eval_step" }
            ),
            &flat,
            |b: &Builder, t| {
                let mut leaves = t.into_leaves().into_iter();
                let mut params_map = BTreeMap::new();
                for (name, w) in names.iter().zip(weights) {
                    params_map.insert(
                        name.clone(),
                        w.params
                            .structure()
                            .unflatten(leaves.by_ref().take(w.params.len()).collect())?,
                    );
                }
                let params = Tree::Map(params_map);
                let states: Vec<Tree<Value>> = weights
                    .iter()
                    .map(|w| {
                        w.state
                            .structure()
                            .unflatten(leaves.by_ref().take(w.state.len()).collect())
                    })
                    .collect::<Result<_>>()?;
                let opt_state =
                    opt_tree.unflatten(leaves.by_ref().take(opt_tree.len()).collect())?;
                let rngs: Vec<Option<Value>> = rng_used
                    .iter()
                    .map(|&u| if u { leaves.next() } else { None })
                    .collect();
                let xv = leaves.next().ok_or_else(|| state_err("missing x"))?;
                let yv = leaves.next().ok_or_else(|| state_err("missing y"))?;
                let forward = |p: &Tree<Value>| -> Result<(Value, Tree<Value>)> {
                    let lv: Vec<LayerValues> = names
                        .iter()
                        .zip(&states)
                        .zip(&rngs)
                        .map(|((n, s), r)| LayerValues {
                            params: p.get_subtree(n),
                            state: s.clone(),
                            rng: r.clone(),
                        })
                        .collect();
                    let (out, new_states) =
                        self.model
                            .trace_forward(lv, Tree::Leaf(xv.clone()), train.into())?;
                    let pred = out.into_leaf()?;
                    let loss = self.loss.compute(&yv, &pred)?;
                    let mut aux = vec![Tree::Leaf(pred)];
                    aux.extend(new_states);
                    Ok((loss, Tree::List(aux)))
                };
                let mut results: Vec<Value> = Vec::new();
                let (loss, aux) = if train {
                    let (loss, aux, grads) =
                        value_and_grad_with_aux(b, &params, |_b, p| forward(&p))?;
                    let (new_params, new_opt) =
                        self.optimizer.update(&params, &grads, &opt_state)?;
                    // In layer order, as the inputs were taken and the
                    // outputs are read back (`outputs` below), not in the
                    // map's order of names (`dense_10` sorts before
                    // `dense_9`).
                    for name in &names {
                        let layer = new_params.get_subtree(name);
                        results.extend(layer.leaves().into_iter().cloned());
                    }
                    if let Tree::List(items) = &aux {
                        for s in &items[1..] {
                            results.extend(s.leaves().into_iter().cloned());
                        }
                    }
                    results.extend(new_opt.leaves().into_iter().cloned());
                    (loss, aux)
                } else {
                    forward(&params)?
                };
                let Tree::List(items) = aux else {
                    return Err(state_err("aux"));
                };
                let pred = items[0].clone().into_leaf()?;
                results.push(loss);
                for m in &self.metrics {
                    results.push(m.compute(&yv, &pred)?);
                }
                Ok(Tree::List(results.into_iter().map(Tree::Leaf).collect()))
            },
        )?;
        // The step's outputs before the loss and metrics: a train step's
        // new params, state and optimizer state; none for an eval step.
        let mut outputs: Vec<Tree<()>> = Vec::new();
        if train {
            outputs.extend(weights.iter().map(|w| w.params.structure()));
            outputs.extend(weights.iter().map(|w| w.state.structure()));
            outputs.push(opt_tree);
        }
        Ok((comp.with_donors(&donors)?, outputs))
    }

    pub(super) fn init_opt_state(
        &self,
        client: &Client,
        weights: &[Weights],
    ) -> Result<Tree<Arc<Buffer>>> {
        let names: Vec<String> = self.model.layers().iter().map(|l| l.name()).collect();
        let specs = Tree::Map(
            names
                .iter()
                .zip(weights)
                .map(|(n, w)| (n.clone(), w.param_specs()))
                .collect(),
        );
        let mut out_tree = Tree::Empty;
        let comp = trace(
            &format!("{}_opt_init", self.model.name()),
            &specs,
            |_b, p| {
                let s = self.optimizer.init(&p)?;
                out_tree = s.structure();
                Ok(s)
            },
        )?;
        let exe = comp.compile(client)?;
        // The init only reads shapes; feed zeros of the param specs.
        let zeros: Vec<Buffer> = specs
            .leaves()
            .into_iter()
            .map(|s| {
                client.buffer_from_bytes(&vec![0u8; s.size_in_bytes()], s, client.default_device())
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Buffer> = zeros.iter().collect();
        let outs = exe.execute(&refs)?;
        out_tree.unflatten(outs.into_iter().map(Arc::new).collect())
    }

    /// The jit key of a train (`Training::Yes`) or eval step on batches
    /// of `x` and `y` specs.
    pub(crate) fn step_key(
        &self,
        weights: &[Weights],
        x: &ArraySpec,
        y: &ArraySpec,
        training: Training,
    ) -> JitKey {
        let function = if training.is_yes() {
            "train_step"
        } else {
            "eval_step"
        };
        let inputs = Tree::tuple([Tree::Leaf(x.clone()), Tree::Leaf(y.clone())]);
        let mut key = JitKey::new(function, self.model.client(), inputs, training);
        key.weights = weights.iter().map(Weights::layout).collect();
        key.rngs = self
            .model
            .layers()
            .iter()
            .map(|l| training.is_yes() && hooks(l.as_ref()).uses_rng())
            .collect();
        key
    }

    /// One train step on a batch; returns `[loss, metrics...]`.
    pub(crate) fn train_step(
        &self,
        client: &Client,
        x: &HostArray,
        y: &HostArray,
    ) -> Result<Vec<f32>> {
        // The step takes the weights out and puts new ones back: no call may
        // see them in between.
        let _exclusive = self.model.weights_exclusive();
        let layers = self.model.layers();
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;
        let mut opt_guard = self.opt_state.lock().unwrap_or_else(|p| p.into_inner());
        if opt_guard.is_none() {
            *opt_guard = Some(self.init_opt_state(client, &weights)?);
        }
        let key = self.step_key(&weights, &x.spec, &y.spec, Training::Yes);
        let step = self.jit.get_or_compile(client, key, || {
            self.build_step(&weights, opt_guard.as_ref(), &x.spec, &y.spec, true)
        })?;
        let (xb, yb) = (upload(client, x)?, upload(client, y)?);
        let rngs: Vec<Buffer> = layers
            .iter()
            .filter(|l| hooks(l.as_ref()).uses_rng())
            .map(|l| client.buffer_from_host(&hooks(l.as_ref()).next_rng(), &[2]))
            .collect::<Result<_>>()?;
        // Check every argument before handing anything over.
        {
            let mut all: Vec<&Buffer> = Vec::new();
            for w in &weights {
                all.extend(w.params.leaves().into_iter().map(|b| b.as_ref()));
            }
            for w in &weights {
                all.extend(w.state.leaves().into_iter().map(|b| b.as_ref()));
            }
            if let Some(o) = opt_guard.as_ref() {
                all.extend(o.leaves().into_iter().map(|b| b.as_ref()));
            }
            all.extend(rngs.iter());
            all.extend([&xb, &yb]);
            step.exe.check_arguments(&all)?;
        }
        drop(weights);
        // Take params, state and optimizer state out so that they can be donated.
        let taken: Vec<Weights> = layers
            .iter()
            .map(|l| hooks(l.as_ref()).swap_weights(None).unwrap_or_default())
            .collect();
        let opt = opt_guard.take().unwrap_or(Tree::Empty);
        let mut handles: Vec<Arc<Buffer>> = Vec::new();
        for w in &taken {
            handles.extend(w.params.leaves().into_iter().cloned());
        }
        for w in &taken {
            handles.extend(w.state.leaves().into_iter().cloned());
        }
        handles.extend(opt.leaves().into_iter().cloned());
        drop(taken);
        drop(opt);
        let mut handover = Handover::new(handles);
        let mut args = handover.args();
        args.extend(rngs.iter().map(Arg::Borrowed));
        args.extend([Arg::Borrowed(&xb), Arg::Borrowed(&yb)]);
        let outs = step.exe.execute_args(args)?;
        let mut it = outs.into_iter();
        let mut trees = Vec::with_capacity(step.outputs.len());
        for t in &step.outputs {
            trees.push(t.unflatten(it.by_ref().take(t.len()).map(Arc::new).collect())?);
        }
        let n = layers.len();
        *opt_guard = trees.pop();
        let new_states = trees.split_off(n);
        let new_params = trees;
        for ((l, p), s) in layers.iter().zip(new_params).zip(new_states) {
            hooks(l.as_ref()).swap_weights(Some(Weights {
                params: p,
                state: s,
            }));
        }
        it.map(|b| b.to_scalar::<f32>()).collect()
    }
}

impl Tree<Value> {
    /// The subtree under a top-level map key (empty when absent).
    pub fn get_subtree(&self, key: &str) -> Tree<Value> {
        match self {
            Tree::Map(m) => m.get(key).cloned().unwrap_or(Tree::Empty),
            _ => Tree::Empty,
        }
    }
}
