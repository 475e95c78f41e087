//! Keras-style `fit` / `evaluate` of a [`Trainer`]: batches, shuffling,
//! progress, per-epoch history.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::builder::Value;
use crate::error::{Error, Result};
use crate::layers::{HostArray, Training};
use crate::pjrt::buffer::Buffer;
use crate::progress::Progress;

use super::loss::accuracy;
use super::trainer::{upload, Trainer};

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

    pub(crate) fn compute(self, y_true: &Value, y_pred: &Value) -> Result<Value> {
        match self {
            Metric::Accuracy => accuracy(y_true, y_pred),
        }
    }
}

/// Options of [`Trainer::fit`].
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

/// Gathers rows `idx` of `a`.
pub(crate) fn take_rows(a: &HostArray, idx: &[usize]) -> Result<HostArray> {
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

impl Trainer {
    /// Keras's `fit`: trains on `x`, `y` (rows first) for `epochs`, in
    /// batches, shuffling each epoch; returns the per-epoch history.
    ///
    /// With [`Trainer::data_parallel`], each batch is split over the mesh's
    /// data axis and the weights are written back to the model at the end
    /// (and before each validation); if a step fails, the model keeps the
    /// weights it had when `fit` started.
    ///
    /// Errors: data that does not fit the model's input; `batch_size` 0 or
    /// no rows; data-parallel, [`Error::IndivisibleDimension`] for a batch
    /// (or the last, smaller one) that the data axis does not divide.
    pub fn fit(&self, x: &HostArray, y: &HostArray, options: &FitOptions) -> Result<History> {
        let client = self.model().client();
        let n = self.check_data(x, y)?;
        if options.batch_size == 0 || n == 0 {
            return Err(Error::Empty {
                what: "fit".into(),
                reason: "needs batch_size > 0 and at least one row",
            });
        }
        // Data-parallel: the weights live on the mesh for the whole fit
        // (the model keeps its pre-fit weights until they are written back).
        let mut replicas = match &self.data_parallel {
            Some(dp) => {
                self.check_data_parallel_batches(n, options.batch_size)?;
                Some((dp, self.replicate(dp)?))
            }
            None => None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
        let mut history = History::default();
        let names: Vec<String> = std::iter::once("loss".to_string())
            .chain(self.metrics.iter().map(|m| m.name().to_string()))
            .collect();
        for epoch in 0..options.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            if options.shuffle {
                order.shuffle(&mut rng);
            }
            let steps = n.div_ceil(options.batch_size);
            let bar = Progress::new(
                steps,
                &format!(
                    "Epoch {}/{} {{pos}}/{{len}} [{{bar:25}}] {{msg}}",
                    epoch + 1,
                    options.epochs
                ),
                options.verbose,
            );
            let mut sums = vec![0f64; names.len()];
            for s in 0..steps {
                let idx = &order[s * options.batch_size..((s + 1) * options.batch_size).min(n)];
                let (xb, yb) = (take_rows(x, idx)?, take_rows(y, idx)?);
                let vals = match replicas.as_mut() {
                    Some((dp, r)) => self.data_parallel_step(dp, r, &xb, &yb)?,
                    None => self.train_step(client, &xb, &yb)?,
                };
                for (acc, v) in sums.iter_mut().zip(&vals) {
                    *acc += *v as f64 * idx.len() as f64;
                }
                let seen = ((s * options.batch_size) + idx.len()) as f64;
                bar.set_message(|| {
                    names
                        .iter()
                        .zip(&sums)
                        .map(|(k, v)| format!("{k}: {:.4}", v / seen))
                        .collect::<Vec<_>>()
                        .join(" - ")
                });
                bar.inc();
            }
            bar.finish();
            let mut e: BTreeMap<String, f32> = names
                .iter()
                .zip(&sums)
                .map(|(k, v)| (k.clone(), (v / n as f64) as f32))
                .collect();
            if let Some((vx, vy)) = &options.validation_data {
                if let Some((_, r)) = &replicas {
                    self.write_back(r)?;
                }
                for (k, v) in self.evaluate(vx, vy, options.batch_size)? {
                    e.insert(format!("val_{k}"), v);
                }
            }
            history.epochs.push(e);
        }
        if let Some((_, r)) = &replicas {
            self.write_back(r)?;
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
        let client = self.model().client();
        let n = self.check_data(x, y)?;
        if batch_size == 0 || n == 0 {
            return Err(Error::Empty {
                what: "evaluate".into(),
                reason: "needs batch_size > 0 and at least one row",
            });
        }
        let names: Vec<String> = std::iter::once("loss".to_string())
            .chain(self.metrics.iter().map(|m| m.name().to_string()))
            .collect();
        let mut sums = vec![0f64; names.len()];
        for start in (0..n).step_by(batch_size) {
            let idx: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            let (xb, yb) = (take_rows(x, &idx)?, take_rows(y, &idx)?);
            let _shared = self.model().weights_shared();
            let weights = self
                .model()
                .layers()
                .iter()
                .map(|l| l.weights())
                .collect::<Result<Vec<_>>>()?;
            let key = self.step_key(&weights, &xb.spec, &yb.spec, Training::No);
            let step = self.jit.get_or_compile(client, key, || {
                self.build_step(&weights, None, &xb.spec, &yb.spec, false)
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
