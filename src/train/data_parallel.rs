//! Data-parallel training (Keras's `keras.distribution.DataParallel`, JAX's
//! `jit` with a batch sharded over a mesh axis): the same train step as on
//! one device, compiled once for the mesh with the batch `x`/`y` split over
//! one axis along dimension 0 and everything else (params, layer state,
//! optimizer state, random keys, the loss and metrics) replicated. XLA's
//! SPMD partitioner (Shardy, inside the plugin) splits the program and
//! inserts the all-reduce of the gradients itself: there is no `pmean` in
//! xlayer's code. Params and optimizer state stay on the devices as
//! replicated [`Array`]s between steps and are donated to each step.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::layers::layer::sealed::hooks;
use crate::layers::{HostArray, Training, Weights};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::executable::Executable;
use crate::sharding::{Array, ArrayArg, Mesh, NamedSharding};
use crate::P;

use super::trainer::Trainer;

/// Data parallelism over one axis of a [`Mesh`]: each step's batch is
/// split over that axis (dimension 0 of `x` and `y`), the model's weights
/// and the optimizer state are replicated on every device of the mesh.
/// Given to [`Trainer::data_parallel`].
///
/// ```
/// use xlayer::{sharding::Mesh, train::DataParallel, Client};
/// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])?;
/// let dp = DataParallel::new(&mesh, "data")?;
/// assert_eq!(dp.axis_size(), 4);
/// assert!(DataParallel::new(&mesh, "batch").is_err()); // no such axis
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DataParallel {
    mesh: Mesh,
    axis: String,
    /// The batch's sharding: `P(axis)` over the mesh.
    batch: NamedSharding,
    /// Everything else: replicated over the mesh.
    replicated: NamedSharding,
}

/// What the errors call a batch of a data-parallel `fit`.
const BATCH: &str = "a batch of a data-parallel fit";

impl DataParallel {
    /// Splits batches over axis `axis` of `mesh` (all other mesh axes
    /// replicate the batch too).
    ///
    /// Errors: [`Error::UnknownMeshAxis`] when the mesh has no axis `axis`
    /// (a mesh larger than its client's device count cannot be made:
    /// [`Mesh::new`] returns [`Error::DeviceCount`]).
    pub fn new(mesh: &Mesh, axis: &str) -> Result<DataParallel> {
        if mesh.axis_index(axis).is_none() {
            return Err(Error::UnknownMeshAxis {
                tensor: BATCH.into(),
                axis: axis.to_string(),
                mesh_axes: mesh.axis_names().to_vec(),
            });
        }
        Ok(DataParallel {
            mesh: mesh.clone(),
            axis: axis.to_string(),
            batch: NamedSharding::new(mesh, P![axis]),
            replicated: NamedSharding::replicated(mesh),
        })
    }

    /// The mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The axis batches are split over.
    pub fn axis(&self) -> &str {
        &self.axis
    }

    /// How many pieces a batch is split into (the axis's size): batch
    /// sizes must be multiples of it.
    pub fn axis_size(&self) -> usize {
        self.mesh.axis_size(&self.axis).unwrap_or(1)
    }

    /// Checks that a batch of `rows` rows of tensor `what` splits evenly.
    ///
    /// Errors: [`Error::IndivisibleDimension`] naming `what` (`x` or `y`
    /// of a data-parallel fit), dimension 0 and the axis.
    pub(super) fn check_rows(&self, what: &str, rows: usize) -> Result<()> {
        let k = self.axis_size();
        if rows.is_multiple_of(k) {
            return Ok(());
        }
        Err(Error::IndivisibleDimension {
            tensor: format!("{what} ({BATCH})"),
            dim: 0,
            size: rows,
            axes: vec![self.axis.clone()],
            shards: k,
        })
    }
}

/// The trainer's params, layer state and optimizer state replicated on
/// every device of the mesh, in the train step's parameter order (each
/// layer's params, each layer's state, then the optimizer state).
pub(super) struct Replicas {
    arrays: Vec<Array>,
    /// The shardings of the step's outputs (all replicated), made once.
    out_shardings: Vec<NamedSharding>,
}

/// A host copy of `b` replicated over `sharding`'s mesh.
fn replicate(b: &Buffer, sharding: &NamedSharding) -> Result<Array> {
    Array::from_bytes(&b.to_bytes()?, b.spec(), sharding)
}

/// A replicated array's value on `client`'s default device (through the
/// host: the mesh may belong to another client).
fn to_model_device(a: &Array, client: &Client) -> Result<Arc<Buffer>> {
    let shard = a.shard(0).ok_or_else(|| Error::DeviceCount {
        what: format!("the shards of the replicated array {}", a.spec()),
        expected: 1,
        actual: 0,
    })?;
    Ok(Arc::new(client.buffer_from_bytes(
        &shard.to_bytes()?,
        shard.spec(),
        client.default_device(),
    )?))
}

impl Trainer {
    /// Trains data-parallel over axis `axis` of `mesh` (Keras's
    /// `keras.distribution.DataParallel`): [`Trainer::fit`] then splits
    /// each batch over that axis, keeps the weights and the optimizer state
    /// replicated on every mesh device, and runs ONE compiled step over the
    /// mesh, whose gradient all-reduce XLA's partitioner inserts. The
    /// trajectory equals training on one device up to the order of the
    /// reduced sums. The model keeps its own device: its weights are copied
    /// to the mesh when `fit` starts and back when it ends (and before each
    /// validation); [`Trainer::evaluate`] runs on the model's device.
    ///
    /// ```
    /// use xlayer::layers::{Activation, Apply, Dense, HostArray, Input, Model};
    /// use xlayer::sharding::Mesh;
    /// use xlayer::train::{FitOptions, Loss, Sgd, Trainer};
    /// use xlayer::{Client, DType};
    /// let x = Input::new(&Client::cpu()?, &[3], DType::F32);
    /// let model = Model::new(x.clone(), Dense::new(1)?.apply(&x)?)?;
    /// let mesh = Mesh::new(&Client::cpu_devices(2)?, &[2], &["data"])?;
    /// let trainer = Trainer::new(model, Sgd::new(0.1), Loss::MeanSquaredError, &[])
    ///     .data_parallel(&mesh, "data")?;
    /// let xs = HostArray::from_slice(&[0.5f32; 8 * 3], &[8, 3])?;
    /// let ys = HostArray::from_slice(&[1f32; 8], &[8, 1])?;
    /// let opts = FitOptions { batch_size: 4, epochs: 2, verbose: false, ..Default::default() };
    /// let history = trainer.fit(&xs, &ys, &opts)?; // each batch of 4: 2 rows per device
    /// assert!(history.get("loss")[1] < history.get("loss")[0]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    ///
    /// Errors: [`Error::UnknownMeshAxis`] when the mesh has no axis
    /// `axis`. `fit` then returns [`Error::IndivisibleDimension`] (naming
    /// `x`, dimension 0 and the axis) for a batch size, or a last batch,
    /// that the axis size does not divide.
    pub fn data_parallel(mut self, mesh: &Mesh, axis: &str) -> Result<Trainer> {
        self.data_parallel = Some(DataParallel::new(mesh, axis)?);
        Ok(self)
    }

    /// The data parallelism `fit` uses, if any.
    pub fn distribution(&self) -> Option<&DataParallel> {
        self.data_parallel.as_ref()
    }

    /// The executables of the train and eval steps compiled (or loaded)
    /// so far, to inspect (e.g. [`Executable::optimized_hlo`] of a
    /// data-parallel step holds the partitioner's `all-reduce`).
    pub fn compiled_steps(&self) -> Vec<Arc<Executable>> {
        self.jit.executables()
    }

    /// Checks that every batch of a fit of `n` rows in batches of
    /// `batch_size` splits evenly over the data axis.
    pub(super) fn check_data_parallel_batches(&self, n: usize, batch_size: usize) -> Result<()> {
        let Some(dp) = &self.data_parallel else {
            return Ok(());
        };
        dp.check_rows("x", batch_size.min(n))?;
        dp.check_rows("x", n % batch_size)
    }

    /// Copies the model's weights and the optimizer state (created here on
    /// the model's device if no step ran yet) onto every mesh device.
    pub(super) fn replicate(&self, dp: &DataParallel) -> Result<Replicas> {
        let _shared = self.model().weights_shared();
        let layers = self.model().layers();
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;
        let mut opt_guard = self.opt_state.lock().unwrap_or_else(|p| p.into_inner());
        if opt_guard.is_none() {
            *opt_guard = Some(self.init_opt_state(self.model().client(), &weights)?);
        }
        let mut arrays = Vec::new();
        for w in &weights {
            for b in w.params.leaves() {
                arrays.push(replicate(b, &dp.replicated)?);
            }
        }
        for w in &weights {
            for b in w.state.leaves() {
                arrays.push(replicate(b, &dp.replicated)?);
            }
        }
        if let Some(o) = opt_guard.as_ref() {
            for b in o.leaves() {
                arrays.push(replicate(b, &dp.replicated)?);
            }
        }
        Ok(Replicas {
            arrays,
            out_shardings: Vec::new(),
        })
    }

    /// Copies the replicated weights and optimizer state back to the
    /// model's device (the model's weights are the trained ones after it).
    pub(super) fn write_back(&self, replicas: &Replicas) -> Result<()> {
        let _exclusive = self.model().weights_exclusive();
        let client = self.model().client();
        let layers = self.model().layers();
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;
        let mut opt_guard = self.opt_state.lock().unwrap_or_else(|p| p.into_inner());
        let mut it = replicas.arrays.iter();
        let mut take = |n: usize| -> Result<Vec<Arc<Buffer>>> {
            it.by_ref()
                .take(n)
                .map(|a| to_model_device(a, client))
                .collect()
        };
        let mut params = Vec::with_capacity(weights.len());
        for w in &weights {
            params.push(w.params.structure().unflatten(take(w.params.len())?)?);
        }
        let mut states = Vec::with_capacity(weights.len());
        for w in &weights {
            states.push(w.state.structure().unflatten(take(w.state.len())?)?);
        }
        let opt = match opt_guard.as_ref() {
            Some(o) => Some(o.structure().unflatten(take(o.len())?)?),
            None => None,
        };
        for ((l, p), s) in layers.iter().zip(params).zip(states) {
            hooks(l.as_ref()).swap_weights(Some(Weights {
                params: p,
                state: s,
            }));
        }
        *opt_guard = opt;
        Ok(())
    }

    /// One data-parallel train step on a batch: the batch is scattered
    /// over the data axis, the replicas are donated to the step and
    /// replaced by its outputs; returns `[loss, metrics...]`.
    pub(super) fn data_parallel_step(
        &self,
        dp: &DataParallel,
        replicas: &mut Replicas,
        x: &HostArray,
        y: &HostArray,
    ) -> Result<Vec<f32>> {
        dp.check_rows("x", x.spec.dims[0])?;
        dp.check_rows("y", y.spec.dims.first().copied().unwrap_or(0))?;
        let layers = self.model().layers();
        // The model's weights (unchanged during a data-parallel fit) give
        // the step's structure and types.
        let weights = layers
            .iter()
            .map(|l| l.weights())
            .collect::<Result<Vec<_>>>()?;
        let opt = self
            .opt_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut key = self.step_key(&weights, &x.spec, &y.spec, Training::Yes);
        key.client = dp.mesh.client().id();
        key.batch_sharding = Some(dp.batch.clone());
        let options = CompileOptions::new()
            .spmd(dp.mesh.size())
            .device_assignment(dp.mesh.devices());
        let step = self
            .jit
            .get_or_compile_with(dp.mesh.client(), key, &options, || {
                let (c, outputs) =
                    self.build_step(&weights, opt.as_ref(), &x.spec, &y.spec, true)?;
                let sig = c.signature();
                let n_in = sig.inputs.len();
                let ins: Vec<NamedSharding> = (0..n_in)
                    .map(|i| {
                        if i + 2 >= n_in {
                            dp.batch.clone()
                        } else {
                            dp.replicated.clone()
                        }
                    })
                    .collect();
                let outs = vec![dp.replicated.clone(); sig.outputs.len()];
                Ok((c.with_shardings(&ins, &outs)?, outputs))
            })?;
        drop(weights);
        let (xa, ya) = (
            Array::from_bytes(&x.bytes, &x.spec, &dp.batch)?,
            Array::from_bytes(&y.bytes, &y.spec, &dp.batch)?,
        );
        let rngs: Vec<Array> = layers
            .iter()
            .filter(|l| hooks(l.as_ref()).uses_rng())
            .map(|l| Array::from_host(&hooks(l.as_ref()).next_rng(), &[2], &dp.replicated))
            .collect::<Result<_>>()?;
        let n_out = step.exe.global_signature().outputs.len();
        if replicas.out_shardings.len() != n_out {
            replicas.out_shardings = vec![dp.replicated.clone(); n_out];
        }
        let n_weights = replicas.arrays.len();
        let mut args: Vec<ArrayArg<'_>> = std::mem::take(&mut replicas.arrays)
            .into_iter()
            .map(ArrayArg::Donated)
            .collect();
        args.extend(rngs.iter().map(ArrayArg::Borrowed));
        args.extend([ArrayArg::Borrowed(&xa), ArrayArg::Borrowed(&ya)]);
        let mut outs = step.exe.execute_array_args(args, &replicas.out_shardings)?;
        let scalars = outs.split_off(n_weights.min(outs.len()));
        replicas.arrays = outs;
        scalars
            .iter()
            .map(|a| match a.shard(0) {
                Some(b) => b.to_scalar::<f32>(),
                None => Err(Error::DeviceCount {
                    what: format!("the shards of a scalar output of `{}`", step.exe.name()),
                    expected: 1,
                    actual: 0,
                }),
            })
            .collect()
    }
}
