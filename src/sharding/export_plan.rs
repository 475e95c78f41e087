//! Running `jax.export` artifacts exported for several devices: the mesh
//! and the in/out shardings they record, turned into [`NamedSharding`]s
//! over a client's devices.

use super::{Array, Mesh, NamedSharding, PartitionSpec};
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::export::ExportSharding;
use crate::pjrt::client::Client;
use crate::pjrt::executable::Executable;
use crate::program::Program;
use crate::sharding::DimSpec;

/// How to run a multi-device `jax.export` program: the mesh (over the
/// client's first devices, row-major as JAX's `jax.make_mesh`) and the
/// sharding of every input of the exported function and every output.
/// Unspecified shardings are taken as replicated.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    /// The mesh all shardings refer to.
    pub mesh: Mesh,
    /// One per input of the exported function (caller order).
    pub inputs: Vec<NamedSharding>,
    /// One per output.
    pub outputs: Vec<NamedSharding>,
}

fn export_err(program: &Program, msg: String) -> Error {
    Error::Export(format!("`{}`: {msg}", program.name()))
}

impl ExportPlan {
    /// The plan of `program` (from an artifact exported for N devices) on
    /// `client`.
    ///
    /// Errors: [`Error::Export`] for a program that records no shardings,
    /// shardings over different meshes, or a mesh whose size is not the
    /// artifact's device count; [`Error::DeviceCount`] when the client has
    /// fewer devices; the shardings' own errors against the input and
    /// output shapes ([`NamedSharding::check`]).
    pub fn new(client: &Client, program: &Program) -> Result<ExportPlan> {
        let n = program.device_count();
        let recorded = program.export_shardings().ok_or_else(|| {
            export_err(
                program,
                "is not a jax.export artifact; it records no shardings".into(),
            )
        })?;
        let all = recorded.inputs.iter().chain(&recorded.outputs).flatten();
        let mut first: Option<&ExportSharding> = None;
        for s in all {
            match first {
                None => first = Some(s),
                Some(f) if f.axis_names != s.axis_names || f.axis_sizes != s.axis_sizes => {
                    return Err(export_err(
                        program,
                        format!(
                            "its shardings use two meshes ({:?} of {:?} and {:?} of {:?}); xlayer runs one mesh per program",
                            f.axis_names, f.axis_sizes, s.axis_names, s.axis_sizes
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let (names, sizes) = match first {
            Some(f) => (f.axis_names.clone(), f.axis_sizes.clone()),
            None => (vec!["devices".to_string()], vec![n]),
        };
        let product = sizes
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s))
            .unwrap_or(usize::MAX);
        if product != n {
            return Err(export_err(
                program,
                format!("its mesh {names:?} of {sizes:?} holds {product} devices, but it was exported for {n}"),
            ));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mesh = Mesh::new(client, &sizes, &refs)?;
        let to_named = |s: &Option<ExportSharding>| match s {
            None => NamedSharding::replicated(&mesh),
            Some(s) => NamedSharding::new(
                &mesh,
                PartitionSpec::new(s.spec.iter().map(|a| DimSpec::axes(a)).collect()),
            ),
        };
        let inputs: Vec<NamedSharding> = recorded.inputs.iter().map(to_named).collect();
        let outputs: Vec<NamedSharding> = recorded.outputs.iter().map(to_named).collect();
        let sig = program.signature();
        for (k, (&pos, spec)) in program
            .input_positions()
            .iter()
            .zip(&sig.inputs)
            .enumerate()
        {
            if let Some(s) = inputs.get(pos) {
                s.check(
                    &format!("input {pos} of `{}` (parameter {k})", program.name()),
                    &spec.dims,
                )?;
            }
        }
        for (i, (s, spec)) in outputs.iter().zip(&sig.outputs).enumerate() {
            s.check(&format!("output {i} of `{}`", program.name()), &spec.dims)?;
        }
        Ok(ExportPlan {
            mesh,
            inputs,
            outputs,
        })
    }

    /// Scatters the host inputs (one per parameter of `program`'s `@main`,
    /// as [`crate::io::bind_inputs`] returns them) by their shardings, runs
    /// `exe` (compiled from `program` with
    /// [`crate::CompileOptions::spmd`]) and returns the sharded outputs.
    ///
    /// Errors: [`Error::ArgumentCount`] for another number of inputs than
    /// parameters; those of [`Array::from_bytes`] and
    /// [`Executable::execute_arrays`].
    pub fn run(
        &self,
        program: &Program,
        exe: &Executable,
        inputs: &[(&ArraySpec, &[u8])],
    ) -> Result<Vec<Array>> {
        if inputs.len() != program.input_positions().len() {
            return Err(Error::ArgumentCount {
                program: program.name().to_string(),
                expected: program.input_positions().len(),
                actual: inputs.len(),
            });
        }
        let arrays = inputs
            .iter()
            .zip(program.input_positions())
            .map(|((spec, bytes), &pos)| {
                let sharding = self
                    .inputs
                    .get(pos)
                    .cloned()
                    .unwrap_or_else(|| NamedSharding::replicated(&self.mesh));
                Array::from_bytes(bytes, spec, &sharding)
            })
            .collect::<Result<Vec<_>>>()?;
        exe.execute_arrays(&arrays.iter().collect::<Vec<_>>(), &self.outputs)
    }
}
