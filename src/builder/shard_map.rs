//! `shard_map`: a manual region over a device mesh (`jax.shard_map`).
//!
//! Outside, values are global arrays that XLA's partitioner shards as it
//! likes; inside, the body sees each device's shard (the global shape
//! divided along the dimensions its spec names) and may exchange data
//! with the collectives of [`super::collectives`]. The region is emitted as
//! Shardy's `sdy.manual_computation` over all the mesh's axes; the body may
//! not use values defined outside it (pass them in as inputs).
//!
//! Specs are JAX's `PartitionSpec`s ([`crate::P!`]): per dimension, the
//! mesh axes that split it (major first); dimensions past the spec's length
//! are not split. An input whose spec
//! does not name an axis is the same on every device along it; an output
//! whose spec does not name an axis must be the same along it (as with
//! JAX's `check_vma=False`, this is not checked).
//!
//! Differentiation transposes the region as JAX does: the backward pass is
//! another manual region that recomputes the body and runs its reverse
//! pass; the cotangent of an output replicated along axes is divided by
//! their size, and the cotangent of an input replicated along axes is
//! summed over them (`psum`).

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::sharding::{Mesh, PartitionSpec};

use super::collectives::MeshAxes;
use super::core::{op_err, Builder, Value};
use super::op::Op;

/// Per dimension of one value: the mesh axes (positions) that split it,
/// major first.
pub type DimAxes = Vec<Vec<usize>>;

/// Attributes of a manual region: its mesh and how its inputs and outputs
/// are split over it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ManualAttrs {
    /// The mesh (all of its axes are manual inside).
    pub mesh: MeshAxes,
    /// How each input is split.
    pub in_specs: Vec<DimAxes>,
    /// How each output is split.
    pub out_specs: Vec<DimAxes>,
}

impl ManualAttrs {
    /// How many shards a value of `spec` has along dimension `dim`.
    pub(crate) fn parts(&self, spec: &DimAxes, dim: usize) -> usize {
        spec.get(dim)
            .map(|axes| axes.iter().map(|&a| self.mesh.sizes()[a]).product())
            .unwrap_or(1)
    }

    /// The axes a value of `spec` is replicated along (named nowhere in it).
    pub(crate) fn replicated(&self, spec: &DimAxes) -> Vec<usize> {
        (0..self.mesh.sizes().len())
            .filter(|a| !spec.iter().any(|d| d.contains(a)))
            .collect()
    }

    /// The per-device shape of a global `global` split by `spec`.
    fn local(
        &self,
        what: &'static str,
        index: usize,
        spec: &DimAxes,
        global: &ArraySpec,
    ) -> Result<ArraySpec> {
        let mut dims = global.dims.clone();
        for (dim, d) in dims.iter_mut().enumerate() {
            let n = self.parts(spec, dim);
            if !d.is_multiple_of(n) {
                return Err(Error::IndivisibleDimension {
                    tensor: format!("shard_map {what} {index}"),
                    dim,
                    size: *d,
                    axes: self.names(spec, dim),
                    shards: n,
                });
            }
            *d /= n;
        }
        Ok(ArraySpec::new(global.dtype, dims))
    }

    /// The global shape of a per-device `local` split by `spec`.
    pub(crate) fn global(
        &self,
        index: usize,
        spec: &DimAxes,
        local: &ArraySpec,
    ) -> Result<ArraySpec> {
        let mut dims = local.dims.clone();
        for (dim, d) in dims.iter_mut().enumerate() {
            let n = self.parts(spec, dim);
            *d = d.checked_mul(n).ok_or_else(|| {
                op_err(
                    "shard_map",
                    format!(
                        "output {index}: {local} times {n} shards along dimension {dim} overflows"
                    ),
                )
            })?;
        }
        Ok(ArraySpec::new(local.dtype, dims))
    }

    fn names(&self, spec: &DimAxes, dim: usize) -> Vec<String> {
        spec.get(dim)
            .map(|axes| axes.iter().map(|&a| self.mesh.names()[a].clone()).collect())
            .unwrap_or_default()
    }

    /// Resolves one spec by names and checks it against a value's rank.
    fn resolve(
        &self,
        what: &'static str,
        index: usize,
        spec: &PartitionSpec,
        value: &ArraySpec,
    ) -> Result<DimAxes> {
        let tensor = || format!("shard_map {what} {index}");
        if spec.rank() > value.rank() {
            return Err(Error::SpecRank {
                tensor: tensor(),
                spec: spec.to_string(),
                rank: value.rank(),
            });
        }
        let mut used: Vec<usize> = Vec::new();
        let mut out = Vec::with_capacity(spec.rank());
        for d in spec.dims() {
            let positions = self.mesh.positions(&tensor(), d.axis_names())?;
            for (&p, name) in positions.iter().zip(d.axis_names()) {
                if used.contains(&p) {
                    return Err(Error::MeshAxisReused {
                        tensor: tensor(),
                        axis: name.clone(),
                        spec: spec.to_string(),
                    });
                }
                used.push(p);
            }
            out.push(positions);
        }
        Ok(out)
    }
}

/// `jax.shard_map(f, mesh, in_specs, out_specs)(*inputs)`: runs `f` on
/// every device of `mesh` with its shards of `inputs`, and assembles the
/// global outputs from the per-device results of `f` by `out_specs`.
///
/// Inside `f`, the collectives ([`Value::psum`], [`Value::all_gather`],
/// [`Value::ppermute`], [`Builder::axis_index`], ...) name the mesh's axes.
/// Compile the program for the mesh's devices
/// ([`crate::CompileOptions::spmd`]).
///
/// Errors: [`Error::Op`] for a count of specs other than the inputs or
/// outputs, or a `shard_map` inside another; for a spec (each naming the
/// input or output): [`Error::UnknownMeshAxis`], [`Error::MeshAxisReused`],
/// [`Error::SpecRank`] (longer than its value's rank),
/// [`Error::IndivisibleDimension`] (a dimension its axes do not divide);
/// the errors of `f`.
///
/// ```
/// use xlayer::builder::{shard_map, Builder};
/// use xlayer::{sharding::Mesh, ArraySpec, Client, P};
/// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])?;
/// let b = Builder::new();
/// let x = b.parameter(ArraySpec::of::<f32>([8, 3]), "x")?;
/// // Column sums: each device sums its 2 rows, psum adds the devices' sums.
/// let y = shard_map(&mesh, &[P!["data"]], &[P![]], &[x], |_b, x| {
///     Ok(vec![x[0].sum(&[0], false)?.psum(&["data"])?])
/// })?;
/// assert_eq!(y[0].dims(), &[3]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn shard_map(
    mesh: &Mesh,
    in_specs: &[PartitionSpec],
    out_specs: &[PartitionSpec],
    inputs: &[Value],
    f: impl FnOnce(&Builder, &[Value]) -> Result<Vec<Value>>,
) -> Result<Vec<Value>> {
    shard_map_over(&MeshAxes::of(mesh), in_specs, out_specs, inputs, f)
}

/// [`shard_map`] over the axes of a mesh (no devices needed to trace).
pub fn shard_map_over(
    mesh: &MeshAxes,
    in_specs: &[PartitionSpec],
    out_specs: &[PartitionSpec],
    inputs: &[Value],
    f: impl FnOnce(&Builder, &[Value]) -> Result<Vec<Value>>,
) -> Result<Vec<Value>> {
    let first = inputs
        .first()
        .ok_or_else(|| op_err("shard_map", "needs at least one input"))?;
    let b = first.builder().clone();
    if b.manual_mesh("shard_map").is_ok() {
        return Err(op_err(
            "shard_map",
            "a shard_map inside another manual region is not supported",
        ));
    }
    if in_specs.len() != inputs.len() {
        return Err(op_err(
            "shard_map",
            format!("{} inputs but {} in_specs", inputs.len(), in_specs.len()),
        ));
    }
    let mut attrs = ManualAttrs {
        mesh: mesh.clone(),
        in_specs: Vec::new(),
        out_specs: Vec::new(),
    };
    let mut locals = Vec::with_capacity(inputs.len());
    for (i, (x, spec)) in inputs.iter().zip(in_specs).enumerate() {
        let s = attrs.resolve("input", i, spec, &x.spec)?;
        locals.push(attrs.local("input", i, &s, &x.spec)?);
        attrs.in_specs.push(s);
    }
    let (body, results) = b.manual_region(mesh.clone(), &locals, |a| f(&b, a))?;
    if results.len() != out_specs.len() {
        return Err(op_err(
            "shard_map",
            format!(
                "the body returned {} values but there are {} out_specs",
                results.len(),
                out_specs.len()
            ),
        ));
    }
    let mut globals = Vec::with_capacity(results.len());
    for (i, (r, spec)) in results.iter().zip(out_specs).enumerate() {
        let s = attrs.resolve("output", i, spec, r)?;
        globals.push(attrs.global(i, &s, r)?);
        attrs.out_specs.push(s);
    }
    let refs: Vec<&Value> = inputs.iter().collect();
    b.push(Op::ManualComputation { attrs, body }, &refs, globals)
}

/// Records a manual computation from resolved attributes (autodiff's
/// backward regions): `f` receives the per-device shards of `inputs`.
pub(crate) fn manual_computation(
    b: &Builder,
    attrs: ManualAttrs,
    inputs: &[Value],
    f: impl FnOnce(&[Value]) -> Result<Vec<Value>>,
) -> Result<Vec<Value>> {
    let locals = inputs
        .iter()
        .zip(&attrs.in_specs)
        .enumerate()
        .map(|(i, (x, s))| attrs.local("input", i, s, &x.spec))
        .collect::<Result<Vec<_>>>()?;
    let (body, results) = b.manual_region(attrs.mesh.clone(), &locals, f)?;
    let globals = results
        .iter()
        .zip(&attrs.out_specs)
        .enumerate()
        .map(|(i, (r, s))| attrs.global(i, s, r))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Value> = inputs.iter().collect();
    b.push(Op::ManualComputation { attrs, body }, &refs, globals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::autodiff::vjp;
    use crate::P;

    fn setup() -> (Builder, Value, MeshAxes) {
        let b = Builder::new();
        let x = b.parameter(ArraySpec::of::<f32>([8, 6]), "x").unwrap();
        (b, x, MeshAxes::new(&[("a", 2), ("b", 2)]).unwrap())
    }

    fn ab() -> PartitionSpec {
        P!["a", "b"]
    }

    /// `shard_map_over` of the identity-like body `f` on `x`.
    fn run(
        mesh: &MeshAxes,
        x: &Value,
        in_spec: PartitionSpec,
        f: impl FnOnce(&Builder, &[Value]) -> Result<Vec<Value>>,
    ) -> Result<Vec<Value>> {
        shard_map_over(mesh, &[in_spec], &[ab()], std::slice::from_ref(x), f)
    }

    #[test]
    fn emits_a_manual_computation_with_jaxs_collective_attributes() -> Result<()> {
        let (b, x, mesh) = setup();
        let y = shard_map_over(&mesh, &[ab()], &[P![None, "b"]], &[x], |_b, x| {
            Ok(vec![x[0].psum(&["a"])?])
        })?;
        assert_eq!(y[0].dims(), &[4, 6]);
        let text = b.build(&y)?.to_stablehlo();
        for want in [
            "mhlo.num_partitions = 4 : i32",
            r#"sdy.mesh @mesh = <["a"=2, "b"=2]>"#,
            r#"in_shardings = #sdy.sharding_per_value<[<@mesh, [{"a"}, {"b"}]>]>"#,
            r#"out_shardings = #sdy.sharding_per_value<[<@mesh, [{}, {"b"}]>]>"#,
            r#"manual_axes = #sdy<manual_axes{"a", "b"}>"#,
            "replica_groups = dense<[[0, 2], [1, 3]]> : tensor<2x2xi64>, use_global_device_ids",
            "\"sdy.return\"",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        Ok(())
    }

    #[test]
    fn errors_name_the_op_and_the_axis() {
        let (b, x, mesh) = setup();
        let id = |_: &Builder, x: &[Value]| Ok(x.to_vec());
        // A collective outside a manual region.
        assert!(matches!(
            x.psum(&["a"]),
            Err(Error::NotInManualRegion { op: "psum" })
        ));
        assert!(matches!(
            b.axis_index("a"),
            Err(Error::NotInManualRegion { op: "axis_index" })
        ));
        // An unknown axis in a spec, and in a collective.
        match run(&mesh, &x, P!["data"], id) {
            Err(Error::UnknownMeshAxis { tensor, axis, .. }) => {
                assert_eq!(
                    (tensor.as_str(), axis.as_str()),
                    ("shard_map input 0", "data")
                );
            }
            other => panic!("{other:?}"),
        }
        match run(&mesh, &x, ab(), |_, x| Ok(vec![x[0].psum(&["model"])?])) {
            Err(Error::UnknownMeshAxis {
                tensor,
                axis,
                mesh_axes,
            }) => {
                assert_eq!((tensor.as_str(), axis.as_str()), ("psum", "model"));
                assert_eq!(mesh_axes, vec!["a".to_string(), "b".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        // 6 columns split over a*b = 4 parts.
        match run(&mesh, &x, P![None, ("a", "b")], id) {
            Err(Error::IndivisibleDimension {
                tensor,
                dim: 1,
                size: 6,
                shards: 4,
                axes,
            }) => {
                assert_eq!(tensor, "shard_map input 0");
                assert_eq!(axes, vec!["a".to_string(), "b".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        // A spec longer than the rank; an axis used twice in a spec.
        assert!(matches!(
            run(&mesh, &x, P!["a", "b", None], id),
            Err(Error::SpecRank { rank: 2, .. })
        ));
        assert!(matches!(
            run(&mesh, &x, P!["a", "a"], id),
            Err(Error::MeshAxisReused { .. })
        ));
        // psum_scatter / all_to_all of a dimension the axis size does not
        // divide or (untiled) equal; the local shard is 4x3.
        match run(&mesh, &x, ab(), |_, x| {
            Ok(vec![x[0].psum_scatter("b", 1, true)?])
        }) {
            Err(Error::CollectiveShape {
                op: "psum_scatter",
                dim: 1,
                axis_size: 2,
                exact: false,
                axes,
                ..
            }) => assert_eq!(axes, vec!["b".to_string()]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(&mesh, &x, ab(), |_, x| Ok(vec![
                x[0].psum_scatter("a", 0, false)?
            ])),
            Err(Error::CollectiveShape {
                op: "psum_scatter",
                dim: 0,
                exact: true,
                ..
            })
        ));
        assert!(matches!(
            run(&mesh, &x, ab(), |_, x| Ok(vec![
                x[0].all_to_all("a", 1, 0, true)?
            ])),
            Err(Error::CollectiveShape {
                op: "all_to_all",
                dim: 1,
                ..
            })
        ));
        // Not a permutation.
        for perm in [&[(0, 2)][..], &[(0, 1), (0, 0)], &[(0, 1), (1, 1)]] {
            let r = run(&mesh, &x, ab(), |_, x| Ok(vec![x[0].ppermute("a", perm)?]));
            assert!(
                matches!(
                    r,
                    Err(Error::InvalidPermutation {
                        op: "ppermute",
                        axis_size: 2,
                        ..
                    })
                ),
                "{r:?}"
            );
        }
        // The body cannot use values from outside it.
        let outside = b.ones(crate::DType::F32, &[4, 3]).unwrap();
        let r = run(&mesh, &x, ab(), |_, x| Ok(vec![x[0].add(&outside)?]));
        assert!(matches!(r, Err(Error::Op { .. })), "{r:?}");
        // Nested shard_map.
        let r = run(&mesh, &x, ab(), |_, x| {
            shard_map_over(&mesh, &[P![]], &[P![]], &x[..1], |_b, y| Ok(y.to_vec()))
        });
        assert!(
            matches!(
                r,
                Err(Error::Op {
                    op: "shard_map",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn pmax_has_no_gradient() -> Result<()> {
        let (b, x, mesh) = setup();
        let y = run(&mesh, &x, ab(), |_, x| Ok(vec![x[0].pmax(&["a"])?]))?;
        let ct = b.ones(crate::DType::F32, &[8, 6])?;
        match vjp(&b, &y, &[x], &[ct]) {
            Err(Error::Op {
                op: "all_reduce",
                message,
            }) => {
                assert!(message.contains("pmax"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }
}
