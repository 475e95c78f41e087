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
use crate::pjrt::executable::Executable;

impl Executable {
    /// Runs a multi-device executable on sharded arrays: each device gets
    /// its shard of every argument (an argument's mesh must hold every
    /// device of the executable), and output `i` comes back laid out by
    /// `out_shardings[i]` (which must describe how the program shards it:
    /// its mesh over the executable's devices).
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
        let devices = self.devices();
        let mut lists = Vec::with_capacity(devices.len());
        for (d, dev) in devices.iter().enumerate() {
            let list = args
                .iter()
                .enumerate()
                .map(|(index, a)| {
                    a.shard_on(dev).ok_or_else(|| Error::ShardArgumentDevice {
                        program: self.name().to_string(),
                        device: d,
                        index,
                        expected: dev.to_string(),
                        actual: "none (the argument's mesh lacks this device)".into(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            lists.push(list);
        }
        if out_shardings.len() != self.signature().outputs.len() {
            return Err(Error::DeviceListCount {
                program: format!("{} (output shardings)", self.name()),
                expected: self.signature().outputs.len(),
                actual: out_shardings.len(),
            });
        }
        let outputs = self.execute_sharded(&lists)?.into_per_output();
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
