//! Keras-style `compile` / `fit` / `evaluate` on a [`Model`].
//!
//! The whole train step — forward in training mode, loss, backward
//! (reverse-mode autodiff over the traced graph), optimizer update, layer
//! state update, metrics — is ONE compiled program. Params, optimizer state
//! and layer state are donated to it, so a step moves only the batch in and
//! the scalars out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::SeedableRng;

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

use super::loss::{accuracy, Loss};
use super::optim::Optimizer;

/// A metric reported by `fit` and `evaluate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Fraction of correct arg-max predictions.
    Accuracy,
}

impl Metric {
    /// The name Keras prints.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
        }
    }

    fn compute(self, y_true: &Value, y_pred: &Value) -> Result<Value> {
        match self {
            Metric::Accuracy => accuracy(y_true, y_pred),
        }
    }
}

/// What `Model::compile` records.
pub struct TrainConfig {
    optimizer: Box<dyn Optimizer>,
    loss: Loss,
    metrics: Vec<Metric>,
    /// The optimizer state on the device, by layer name (created at the first step).
    opt_state: Mutex<Option<Tree<Arc<Buffer>>>>,
    /// Train steps (outputs: each layer's params, each layer's state, the
    /// optimizer state, then the loss and metrics) and eval steps.
    jit: JitCache,
}

/// Options of [`Model::fit`].
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Rows per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Shuffle the rows at every epoch.
    pub shuffle: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Data evaluated at the end of each epoch (`val_` entries in the history).
    pub validation_data: Option<(HostArray, HostArray)>,
    /// Show a progress bar per epoch (on a terminal only).
    pub verbose: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            batch_size: 32,
            epochs: 1,
            shuffle: true,
            seed: 0,
            validation_data: None,
            verbose: true,
        }
    }
}

/// Per-epoch averages of the loss and metrics (`loss`, `accuracy`,
/// `val_loss`, ...), as Keras's `History.history`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// One map per epoch.
    pub epochs: Vec<BTreeMap<String, f32>>,
}

impl History {
    /// The values of one entry across epochs.
    pub fn get(&self, key: &str) -> Vec<f32> {
        self.epochs
            .iter()
            .filter_map(|e| e.get(key).copied())
            .collect()
    }
}

fn upload(client: &Client, a: &HostArray) -> Result<Buffer> {
    client.buffer_from_bytes(&a.bytes, &a.spec, client.default_device())
}

/// Gathers rows `idx` of `a`.
fn take_rows(a: &HostArray, idx: &[usize]) -> Result<HostArray> {
    let n = a.spec.dims.first().copied().unwrap_or(0);
    let row = a.spec.size_in_bytes() / n.max(1);
    let mut bytes = Vec::with_capacity(row * idx.len());
    for &i in idx {
        bytes.extend_from_slice(&a.bytes[i * row..(i + 1) * row]);
    }
    let mut spec = a.spec.clone();
    spec.dims[0] = idx.len();
    Ok(HostArray { spec, bytes })
}

fn state_err(what: &str) -> Error {
    Error::Invalid(format!("train step: {what}"))
}

impl Model {
    /// Keras's `compile`: the optimizer, the loss and the metrics `fit` and
    /// `evaluate` use. Resets the optimizer state.
    pub fn compile(&self, optimizer: impl Optimizer + 'static, loss: Loss, metrics: &[Metric]) {
        let cfg = TrainConfig {
            optimizer: Box::new(optimizer),
            loss,
            metrics: metrics.to_vec(),
            opt_state: Mutex::new(None),
            jit: JitCache::from_env(),
        };
        *self.training.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(cfg));
    }

    fn config(&self) -> Result<Arc<TrainConfig>> {
        self.training
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "model `{}`: call compile(optimizer, loss, metrics) before fit/evaluate",
                    self.name()
                ))
            })
    }

    fn check_data(&self, x: &HostArray, y: &HostArray) -> Result<usize> {
        let specs = self.input_specs();
        let want = match &specs {
            Tree::Leaf(s) => s.clone(),
            _ => {
                return Err(Error::Invalid(
                    "fit/evaluate take models with one input".into(),
                ))
            }
        };
        if x.spec.dtype != want.dtype
            || x.spec.rank() != want.rank()
            || x.spec.dims[1..] != want.dims[1..]
        {
            return Err(Error::Invalid(format!(
                "x is {}, the model takes {} rows of {:?}",
                x.spec,
                want.dtype,
                &want.dims[1..]
            )));
        }
        let n = x.spec.dims[0];
        if y.spec.dims.first() != Some(&n) {
            return Err(Error::Invalid(format!(
                "x has {n} rows but y is {}",
                y.spec
            )));
        }
        Ok(n)
    }

    /// Traces forward + loss (+ metrics) for batch specs; `train` adds the
    /// backward pass and the optimizer update.
    fn build_step(
        &self,
        cfg: &TrainConfig,
        weights: &[Weights],
        opt: Option<&Tree<Arc<Buffer>>>,
        x: &ArraySpec,
        y: &ArraySpec,
        train: bool,
    ) -> Result<(Computation, Vec<Tree<()>>)> {
        let layers = self.layers();
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
                self.name(),
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
                        self.trace_forward(lv, Tree::Leaf(xv.clone()), train.into())?;
                    let pred = out.into_leaf()?;
                    let loss = cfg.loss.compute(&yv, &pred)?;
                    let mut aux = vec![Tree::Leaf(pred)];
                    aux.extend(new_states);
                    Ok((loss, Tree::List(aux)))
                };
                let mut results: Vec<Value> = Vec::new();
                let (loss, aux) = if train {
                    let (loss, aux, grads) =
                        value_and_grad_with_aux(b, &params, |_b, p| forward(&p))?;
                    let (new_params, new_opt) =
                        cfg.optimizer.update(&params, &grads, &opt_state)?;
                    results.extend(new_params.leaves().into_iter().cloned());
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
                for m in &cfg.metrics {
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

    fn init_opt_state(
        &self,
        client: &Client,
        cfg: &TrainConfig,
        weights: &[Weights],
    ) -> Result<Tree<Arc<Buffer>>> {
        let names: Vec<String> = self.layers().iter().map(|l| l.name()).collect();
        let specs = Tree::Map(
            names
                .iter()
                .zip(weights)
                .map(|(n, w)| (n.clone(), w.param_specs()))
                .collect(),
        );
        let mut out_tree = Tree::Empty;
        let comp = trace(&format!("{}_opt_init", self.name()), &specs, |_b, p| {
            let s = cfg.optimizer.init(&p)?;
            out_tree = s.structure();
            Ok(s)
        })?;
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
    fn step_key(
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
        let mut key = JitKey::new(function, self.client(), inputs, training);
        key.weights = weights.iter().map(Weights::layout).collect();
        key.rngs = self
            .layers()
            .iter()
            .map(|l| training.is_yes() && hooks(l.as_ref()).uses_rng())
            .collect();
        key
    }

    /// One train step on a batch; returns `[loss, metrics...]`.
    fn train_step(
        &self,
        client: &Client,
        cfg: &TrainConfig,
        x: &HostArray,
        y: &HostArray,
    ) -> Result<Vec<f32>> {
        // The step takes the weights out and puts new ones back: no call may
        // see them in between.
        let _exclusive = self.weights_exclusive();
        let layers = self.layers();
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;
        let mut opt_guard = cfg.opt_state.lock().unwrap_or_else(|p| p.into_inner());
        if opt_guard.is_none() {
            *opt_guard = Some(self.init_opt_state(client, cfg, &weights)?);
        }
        let key = self.step_key(&weights, &x.spec, &y.spec, Training::Yes);
        let step = cfg.jit.get_or_compile(client, key, || {
            self.build_step(cfg, &weights, opt_guard.as_ref(), &x.spec, &y.spec, true)
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

    /// Keras's `fit`: trains on `x`, `y` (rows first) for `epochs`, in
    /// batches, shuffling each epoch; returns the per-epoch history.
    ///
    /// Errors: not compiled; data that does not fit the model's input.
    pub fn fit(&self, x: &HostArray, y: &HostArray, options: &FitOptions) -> Result<History> {
        let client = self.client();
        let cfg = self.config()?;
        let n = self.check_data(x, y)?;
        if options.batch_size == 0 || n == 0 {
            return Err(Error::Invalid(
                "fit needs batch_size > 0 and at least one row".into(),
            ));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
        let mut history = History::default();
        let names: Vec<String> = std::iter::once("loss".to_string())
            .chain(cfg.metrics.iter().map(|m| m.name().to_string()))
            .collect();
        for epoch in 0..options.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            if options.shuffle {
                order.shuffle(&mut rng);
            }
            let steps = n.div_ceil(options.batch_size);
            let bar = if options.verbose {
                indicatif::ProgressBar::new(steps as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "Epoch {}/{} {{pos}}/{{len}} [{{bar:25}}] {{msg}}",
                    epoch + 1,
                    options.epochs
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut sums = vec![0f64; names.len()];
            for s in 0..steps {
                let idx = &order[s * options.batch_size..((s + 1) * options.batch_size).min(n)];
                let vals =
                    self.train_step(client, &cfg, &take_rows(x, idx)?, &take_rows(y, idx)?)?;
                for (acc, v) in sums.iter_mut().zip(&vals) {
                    *acc += *v as f64 * idx.len() as f64;
                }
                let seen = ((s * options.batch_size) + idx.len()) as f64;
                bar.set_message(
                    names
                        .iter()
                        .zip(&sums)
                        .map(|(k, v)| format!("{k}: {:.4}", v / seen))
                        .collect::<Vec<_>>()
                        .join(" - "),
                );
                bar.inc(1);
            }
            bar.finish();
            let mut e: BTreeMap<String, f32> = names
                .iter()
                .zip(&sums)
                .map(|(k, v)| (k.clone(), (v / n as f64) as f32))
                .collect();
            if let Some((vx, vy)) = &options.validation_data {
                for (k, v) in self.evaluate(vx, vy, options.batch_size)? {
                    e.insert(format!("val_{k}"), v);
                }
            }
            history.epochs.push(e);
        }
        Ok(history)
    }

    /// Keras's `evaluate`: the loss and metrics on `x`, `y` in inference
    /// mode (averaged over rows), weights unchanged.
    pub fn evaluate(
        &self,
        x: &HostArray,
        y: &HostArray,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f32>> {
        let client = self.client();
        let cfg = self.config()?;
        let n = self.check_data(x, y)?;
        if batch_size == 0 || n == 0 {
            return Err(Error::Invalid(
                "evaluate needs batch_size > 0 and at least one row".into(),
            ));
        }
        let names: Vec<String> = std::iter::once("loss".to_string())
            .chain(cfg.metrics.iter().map(|m| m.name().to_string()))
            .collect();
        let mut sums = vec![0f64; names.len()];
        for start in (0..n).step_by(batch_size) {
            let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            let (xb, yb) = (take_rows(x, &idx)?, take_rows(y, &idx)?);
            let _shared = self.weights_shared();
            let weights = self
                .layers()
                .iter()
                .map(|l| l.weights())
                .collect::<Result<Vec<_>>>()?;
            let key = self.step_key(&weights, &xb.spec, &yb.spec, Training::No);
            let step = cfg.jit.get_or_compile(client, key, || {
                self.build_step(&cfg, &weights, None, &xb.spec, &yb.spec, false)
            })?;
            let (xd, yd) = (upload(client, &xb)?, upload(client, &yb)?);
            let mut args: Vec<&Buffer> = Vec::new();
            for w in &weights {
                args.extend(w.params.leaves().into_iter().map(|b| b.as_ref()));
            }
            for w in &weights {
                args.extend(w.state.leaves().into_iter().map(|b| b.as_ref()));
            }
            args.extend([&xd, &yd]);
            let outs = step.exe.execute(&args)?;
            for (acc, o) in sums.iter_mut().zip(&outs) {
                *acc += o.to_scalar::<f32>()? as f64 * idx.len() as f64;
            }
        }
        Ok(names
            .into_iter()
            .zip(sums)
            .map(|(k, v)| (k, (v / n as f64) as f32))
            .collect())
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
