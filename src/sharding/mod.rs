//! Multi-device arrays and programs, with JAX's names and semantics:
//! [`Mesh`] (devices in a named n-d grid), [`PartitionSpec`] (`P!`),
//! [`NamedSharding`], and [`Array`] (one buffer per device). Partitioning
//! the program itself is left to XLA's SPMD partitioner (Shardy), inside
//! the plugin: a program carries `sdy.mesh` / `sdy.sharding` annotations,
//! is compiled with [`crate::CompileOptions::spmd`] and runs once per
//! device ([`crate::Executable::execute_sharded`],
//! [`crate::Executable::execute_arrays`]). See `docs/sharding.md`.

mod array;
mod export_plan;
mod mesh;
mod spec;

pub use array::Array;
pub use export_plan::ExportPlan;
pub use mesh::Mesh;
pub use spec::{DimSpec, NamedSharding, PartitionSpec};

use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::executable::{Arg, Executable};

/// One argument of [`Executable::execute_array_args`]: a borrowed array,
/// or an owned one whose shards the executable may reuse for outputs
/// (donation, as `jax.jit(..., donate_argnums=...)`).
#[derive(Debug)]
pub enum ArrayArg<'a> {
    /// Read only; the array stays valid.
    Borrowed(&'a Array),
    /// Given to the executable: if the program declares the parameter a
    /// donor, its shards' memory may be reused and the array is gone.
    Donated(Array),
}

impl ArrayArg<'_> {
    /// The array, borrowed or owned.
    pub fn array(&self) -> &Array {
        match self {
            ArrayArg::Borrowed(a) => a,
            ArrayArg::Donated(a) => a,
        }
    }
}

impl Executable {
    /// Runs a multi-device executable on sharded arrays: each device gets
    /// its shard of every argument (an argument's mesh must hold every
    /// device of the executable), and output `i` comes back laid out by
    /// `out_shardings[i]` (which must describe how the program shards it:
    /// its mesh over the executable's devices). Nothing is donated
    /// ([`Executable::execute_array_args`] donates).
    ///
    /// Errors: [`Error::ShardArgumentDevice`] when an argument has no shard
    /// on one of the executable's devices; [`Error::DeviceListCount`] when
    /// `out_shardings` has another length than the outputs; those of
    /// [`Executable::execute_sharded`] and [`Array::from_shards`].
    pub fn execute_arrays(
        &self,
        args: &[&Array],
        out_shardings: &[NamedSharding],
    ) -> Result<Vec<Array>> {
        self.execute_array_args(
            args.iter().map(|a| ArrayArg::Borrowed(a)).collect(),
            out_shardings,
        )
    }

    /// [`Executable::execute_arrays`] on a mix of borrowed and donated
    /// arrays: a donated array whose parameter the program declares a
    /// donor gives its shards' memory to the outputs (a train step's new
    /// params reuse the old ones' buffers); donated arrays are consumed
    /// either way.
    ///
    /// Errors: those of [`Executable::execute_arrays`], checked before
    /// anything runs (the donated arrays are then dropped).
    pub fn execute_array_args(
        &self,
        args: Vec<ArrayArg<'_>>,
        out_shardings: &[NamedSharding],
    ) -> Result<Vec<Array>> {
        let devices = self.devices();
        let mut positions = Vec::with_capacity(devices.len());
        for (d, dev) in devices.iter().enumerate() {
            let list = args
                .iter()
                .enumerate()
                .map(|(index, a)| {
                    let shards = a.array().shards();
                    shards
                        .iter()
                        .position(|b| b.device() == dev)
                        .ok_or_else(|| Error::ShardArgumentDevice {
                            program: self.name().to_string(),
                            device: d,
                            index,
                            expected: dev.to_string(),
                            actual: "none (the argument's mesh lacks this device)".into(),
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            positions.push(list);
        }
        if out_shardings.len() != self.signature().outputs.len() {
            return Err(Error::DeviceListCount {
                program: format!("{} (output shardings)", self.name()),
                expected: self.signature().outputs.len(),
                actual: out_shardings.len(),
            });
        }
        // Per argument: its shards, taken out of a donated array (each
        // moved to the device lists below) or borrowed.
        let mut owned: Vec<Vec<Option<Buffer>>> = Vec::with_capacity(args.len());
        let mut borrowed: Vec<Option<&Array>> = Vec::with_capacity(args.len());
        for a in args {
            match a {
                ArrayArg::Borrowed(a) => {
                    owned.push(Vec::new());
                    borrowed.push(Some(a));
                }
                ArrayArg::Donated(a) => {
                    owned.push(a.into_shards().into_iter().map(Some).collect());
                    borrowed.push(None);
                }
            }
        }
        let mut lists: Vec<Vec<Arg<'_>>> = Vec::with_capacity(devices.len());
        for pos in &positions {
            let mut list = Vec::with_capacity(pos.len());
            for (index, &at) in pos.iter().enumerate() {
                list.push(match borrowed[index] {
                    Some(a) => Arg::Borrowed(&a.shards()[at]),
                    None => match owned[index][at].take() {
                        Some(b) => Arg::Donated(b),
                        None => {
                            return Err(Error::DuplicateDevice {
                                what: format!("argument {index} of `{}`", self.name()),
                                device: devices[lists.len()].to_string(),
                            })
                        }
                    },
                });
            }
            lists.push(list);
        }
        let outputs = self.execute_sharded_args(lists)?.into_per_output();
        outputs
            .into_iter()
            .zip(out_shardings)
            .zip(&self.signature().outputs)
            .enumerate()
            .map(|(i, ((mut shards, sharding), shard_spec))| {
                let tensor = format!("output {i} of `{}`", self.name());
                let mut ordered = Vec::with_capacity(shards.len());
                for dev in sharding.mesh().devices() {
                    let at = shards
                        .iter()
                        .position(|b| b.device() == dev)
                        .ok_or_else(|| Error::DeviceCount {
                            what: format!("the mesh of the sharding of {tensor}"),
                            expected: sharding.mesh().size(),
                            actual: devices.len(),
                        })?;
                    ordered.push(shards.swap_remove(at));
                }
                let global = sharding.global_shape(&shard_spec.dims);
                Array::from_shards(
                    &tensor,
                    crate::ArraySpec::new(shard_spec.dtype, global),
                    sharding,
                    ordered,
                )
            })
            .collect()
    }
}
