//! Shardings on a traced program (`jax.jit(f, in_shardings=...,
//! out_shardings=...)`) and on values inside it
//! (`jax.lax.with_sharding_constraint`).
//!
//! Both are annotations for XLA's SPMD partitioner (Shardy): parameters and
//! results of `@main` carry `sdy.sharding` attributes, a constrained value
//! goes through `sdy.sharding_constraint`, and the module declares the mesh
//! (`sdy.mesh`). The program stays global; the plugin splits it. Every
//! sharding is checked against its value's shape here first.

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::pjrt::executable::Executable;
use crate::sharding::{Array, NamedSharding};
use crate::CompileOptions;

use super::collectives::MeshAxes;
use super::core::{op_err, Builder, Value};
use super::op::Op;
use super::shard_map::DimAxes;
use super::trace::{trace, Computation};
use super::tree::Tree;

/// The shardings of a program's parameters and results, over one mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IoShardings {
    /// The mesh (its axes; the devices are the caller's).
    pub mesh: MeshAxes,
    /// Per parameter: the axes splitting each dimension.
    pub inputs: Vec<DimAxes>,
    /// Per result: the axes splitting each dimension.
    pub outputs: Vec<DimAxes>,
}

/// Checks `sharding` against a value `tensor` of shape `dims` and resolves
/// its axes to mesh positions.
fn resolve(tensor: &str, sharding: &NamedSharding, dims: &[usize]) -> Result<(MeshAxes, DimAxes)> {
    sharding.check(tensor, dims)?;
    let mesh = MeshAxes::of(sharding.mesh());
    let spec = sharding
        .spec()
        .dims()
        .iter()
        .map(|d| mesh.positions(tensor, d.axis_names()))
        .collect::<Result<DimAxes>>()?;
    Ok((mesh, spec))
}

/// Records `sdy.sharding_constraint` of `x` (also the rule's cotangent).
pub(crate) fn constrain(x: &Value, mesh: MeshAxes, spec: DimAxes) -> Result<Value> {
    Ok(x.builder()
        .push(
            Op::ShardingConstraint { mesh, spec },
            &[x],
            vec![x.spec.clone()],
        )?
        .remove(0))
}

impl Value {
    /// `jax.lax.with_sharding_constraint(x, sharding)`: the same value,
    /// which XLA's partitioner must lay out as `sharding` says at this
    /// point of the program (it inserts the collectives to get there).
    /// Its gradient is the cotangent under the same constraint.
    ///
    /// Errors, naming `with_sharding_constraint`: [`Error::SpecRank`],
    /// [`Error::UnknownMeshAxis`], [`Error::MeshAxisReused`],
    /// [`Error::IndivisibleDimension`] (see [`NamedSharding::check`]);
    /// [`Error::Op`] inside a `shard_map` body (its axes are manual there).
    ///
    /// ```
    /// use xlayer::{builder::Builder, sharding::{Mesh, NamedSharding}, ArraySpec, Client, P};
    /// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[2, 2], &["data", "model"])?;
    /// let b = Builder::new();
    /// let x = b.parameter(ArraySpec::of::<f32>([8, 4]), "x")?;
    /// let y = x.with_sharding_constraint(&NamedSharding::new(&mesh, P!["data"]))?;
    /// let text = b.build(&[y])?.to_stablehlo();
    /// assert!(text.contains(r#"sharding = #sdy.sharding<@mesh, [{"data"}, {}]>"#));
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn with_sharding_constraint(&self, sharding: &NamedSharding) -> Result<Value> {
        const OP: &str = "with_sharding_constraint";
        if self.builder().manual_mesh(OP).is_ok() {
            return Err(op_err(
                OP,
                "not inside a shard_map body (its mesh axes are manual there)",
            ));
        }
        let (mesh, spec) = resolve(OP, sharding, self.dims())?;
        constrain(self, mesh, spec)
    }
}

impl Computation {
    /// The computation with its parameters laid out as `in_shardings` and
    /// its results as `out_shardings` (one per parameter and result, all on
    /// one mesh): `sdy.sharding` attributes on `@main` and the mesh's
    /// `sdy.mesh` declaration; `mhlo.num_partitions` is the mesh's size.
    ///
    /// Errors: [`Error::Op`] (op `jit`) for a count of shardings other than
    /// the parameters or results, or shardings on different meshes; for
    /// each sharding, naming `jit input i` / `jit output i`, those of
    /// [`NamedSharding::check`].
    pub fn with_shardings(
        mut self,
        in_shardings: &[NamedSharding],
        out_shardings: &[NamedSharding],
    ) -> Result<Computation> {
        let sig = self.signature();
        for (what, n, m) in [
            ("inputs", sig.inputs.len(), in_shardings.len()),
            ("outputs", sig.outputs.len(), out_shardings.len()),
        ] {
            if n != m {
                return Err(op_err(
                    "jit",
                    format!("{n} {what} but {m} shardings for them"),
                ));
            }
        }
        let first = in_shardings
            .iter()
            .chain(out_shardings)
            .next()
            .ok_or_else(|| op_err("jit", "no shardings (a program without inputs or outputs)"))?;
        let mut io = IoShardings {
            mesh: MeshAxes::of(first.mesh()),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let groups = [
            ("input", in_shardings, &sig.inputs),
            ("output", out_shardings, &sig.outputs),
        ];
        for (what, shardings, specs) in groups {
            for (i, (s, spec)) in shardings.iter().zip(specs).enumerate() {
                let tensor = format!("jit {what} {i}");
                if s.mesh() != first.mesh() {
                    return Err(op_err(
                        "jit",
                        format!(
                            "{tensor} is sharded over {:?}, not {:?}",
                            s.mesh(),
                            first.mesh()
                        ),
                    ));
                }
                let (_, axes) = resolve(&tensor, s, &spec.dims)?;
                if what == "input" {
                    io.inputs.push(axes);
                } else {
                    io.outputs.push(axes);
                }
            }
        }
        self.set_shardings(io);
        Ok(self)
    }
}

/// A program compiled for a mesh with fixed input and output shardings
/// (what `jax.jit(f, in_shardings, out_shardings)` compiles): called on
/// [`Array`]s, it returns [`Array`]s laid out by the output shardings.
pub struct ShardedJit {
    exe: Executable,
    inputs: Vec<ArraySpec>,
    in_shardings: Vec<NamedSharding>,
    out_shardings: Vec<NamedSharding>,
}

/// Traces `f` over global inputs of `specs`, annotates its inputs and
/// outputs with `in_shardings` / `out_shardings` (as
/// [`Computation::with_shardings`]) and compiles it for their mesh's
/// devices with SPMD partitioning ([`CompileOptions::spmd`], the mesh's
/// devices as the device assignment), through the environment's persistent
/// compilation cache ([`crate::cache::CompileCache::from_env`]), as
/// [`Computation::compile`]: the program text holds the mesh and the
/// shardings, the options the devices, so a later call (in this process or
/// another) with the same function, shardings and devices traces again but
/// loads the executable instead of compiling it.
///
/// Errors: those of `f`, [`Computation::with_shardings`] and the compile
/// (and a cache folder that is not private to this user).
///
/// ```
/// use xlayer::builder::jit_sharded;
/// use xlayer::sharding::{Array, Mesh, NamedSharding};
/// use xlayer::{ArraySpec, Client, P};
/// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])?;
/// let rows = NamedSharding::new(&mesh, P!["data"]);
/// let f = jit_sharded(&[ArraySpec::of::<f32>([8, 2])], &[rows.clone()], &[rows.clone()], |_b, x| {
///     Ok(vec![(&x[0] * 2.0)?])
/// })?;
/// let x = Array::from_host(&[1f32; 16], &[8, 2], &rows)?;
/// let y = f.call(&[&x])?;
/// assert_eq!(y[0].to_vec::<f32>()?, vec![2f32; 16]);
/// assert_eq!(y[0].shard(3).unwrap().dims(), &[2, 2]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn jit_sharded(
    specs: &[ArraySpec],
    in_shardings: &[NamedSharding],
    out_shardings: &[NamedSharding],
    f: impl FnOnce(&Builder, &[Value]) -> Result<Vec<Value>>,
) -> Result<ShardedJit> {
    let inputs = Tree::List(specs.iter().cloned().map(Tree::Leaf).collect());
    let c = trace("jit", &inputs, |b, t| {
        let xs: Vec<Value> = t.into_leaves();
        Ok(Tree::List(f(b, &xs)?.into_iter().map(Tree::Leaf).collect()))
    })?
    .with_shardings(in_shardings, out_shardings)?;
    let Some(mesh) = in_shardings
        .iter()
        .chain(out_shardings)
        .next()
        .map(NamedSharding::mesh)
    else {
        return Err(op_err("jit", "no shardings"));
    };
    let options = CompileOptions::new()
        .spmd(mesh.size())
        .device_assignment(mesh.devices());
    let cache = crate::cache::CompileCache::from_env()
        .unwrap_or_else(|_| crate::cache::CompileCache::disabled());
    let exe = cache.compile(mesh.client(), &c.program()?, &options)?;
    Ok(ShardedJit {
        exe,
        inputs: specs.to_vec(),
        in_shardings: in_shardings.to_vec(),
        out_shardings: out_shardings.to_vec(),
    })
}

impl ShardedJit {
    /// Runs the program: each argument is first laid out by its input
    /// sharding (through the host when it has another one, as
    /// [`Array::reshard`]); output `i` comes back laid out by output
    /// sharding `i`.
    ///
    /// Errors: [`Error::ArgumentCount`], [`Error::ArgumentType`] (an
    /// argument's global dtype or shape differs from the traced input's);
    /// those of [`Array::reshard`] and [`Executable::execute_arrays`].
    pub fn call(&self, args: &[&Array]) -> Result<Vec<Array>> {
        if args.len() != self.inputs.len() {
            return Err(Error::ArgumentCount {
                program: self.exe.name().to_string(),
                expected: self.inputs.len(),
                actual: args.len(),
            });
        }
        let mut owned: Vec<Option<Array>> = Vec::with_capacity(args.len());
        for (index, (a, (spec, sharding))) in args
            .iter()
            .zip(self.inputs.iter().zip(&self.in_shardings))
            .enumerate()
        {
            if a.spec() != spec {
                return Err(Error::ArgumentType {
                    program: self.exe.name().to_string(),
                    index,
                    expected: spec.clone(),
                    actual: a.spec().clone(),
                });
            }
            owned.push(if a.sharding() == sharding {
                None
            } else {
                Some(a.reshard(sharding)?)
            });
        }
        let laid_out: Vec<&Array> = args
            .iter()
            .zip(&owned)
            .map(|(a, o)| o.as_ref().unwrap_or(a))
            .collect();
        self.exe.execute_arrays(&laid_out, &self.out_shardings)
    }

    /// The compiled executable (per-device signature, devices).
    pub fn executable(&self) -> &Executable {
        &self.exe
    }

    /// The input shardings, in parameter order.
    pub fn in_shardings(&self) -> &[NamedSharding] {
        &self.in_shardings
    }

    /// The output shardings, in result order.
    pub fn out_shardings(&self) -> &[NamedSharding] {
        &self.out_shardings
    }
}
