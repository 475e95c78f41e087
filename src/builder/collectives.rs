//! Collectives of manual regions (the body of a [`shard_map`]), with
//! `jax.lax`'s names and semantics over mesh axis names: [`Value::psum`],
//! [`Value::pmax`], [`Value::pmin`], [`Value::pmean`],
//! [`Value::all_gather`], [`Value::psum_scatter`], [`Value::all_to_all`],
//! [`Value::ppermute`] and [`Builder::axis_index`].
//!
//! A collective names mesh axes; the devices that take part together
//! (StableHLO's `replica_groups`, by logical device id with
//! `use_global_device_ids`) are the devices that differ only along those
//! axes. Logical device `i` is position `i` of the mesh in row-major order,
//! as in JAX (`mesh.devices.flat`). Shapes are checked in Rust first:
//! an unknown axis ([`Error::UnknownMeshAxis`], naming the op), a collective outside a
//! manual region ([`Error::NotInManualRegion`]), a dimension that the
//! axis size does not divide ([`Error::CollectiveShape`]), a permutation
//! that is not one ([`Error::InvalidPermutation`]).
//!
//! [`shard_map`]: super::shard_map::shard_map

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::sharding::Mesh;

use super::core::{check_dim_list, op_err, Builder, Value};
use super::op::{BinaryOp, Op};

/// The axes of a device mesh as a program sees them: names and sizes,
/// major to minor. Device `i` of a partitioned program is position `i` of
/// the mesh in row-major order.
///
/// ```
/// use xlayer::builder::MeshAxes;
/// let mesh = MeshAxes::new(&[("data", 2), ("model", 2)])?;
/// assert_eq!(mesh.device_count(), 4);
/// assert!(MeshAxes::new(&[("data", 2), ("data", 2)]).is_err());
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshAxes {
    names: Vec<String>,
    sizes: Vec<usize>,
}

impl MeshAxes {
    /// A mesh of named axes, major first.
    ///
    /// Errors: [`Error::InvalidSetting`] for no axes, an empty name, a
    /// name given twice, a size of 0, or a device count past `usize`.
    pub fn new(axes: &[(&str, usize)]) -> Result<MeshAxes> {
        let bad =
            |field: &'static str, value: String, reason: &'static str| Error::InvalidSetting {
                what: "mesh axes".into(),
                field,
                value,
                reason,
            };
        if axes.is_empty() {
            return Err(bad("axes", "[]".into(), "a mesh needs at least one axis"));
        }
        let mut count: usize = 1;
        for (i, &(name, size)) in axes.iter().enumerate() {
            if name.is_empty() {
                return Err(bad("name", String::new(), "axis names are not empty"));
            }
            if axes[..i].iter().any(|&(n, _)| n == name) {
                return Err(bad("name", name.into(), "an axis name appears twice"));
            }
            if size == 0 {
                return Err(bad(
                    "size",
                    format!("{name}=0"),
                    "axis sizes are at least 1",
                ));
            }
            count = count
                .checked_mul(size)
                .ok_or_else(|| bad("size", format!("{name}={size}"), "too many devices"))?;
        }
        Ok(MeshAxes {
            names: axes.iter().map(|(n, _)| n.to_string()).collect(),
            sizes: axes.iter().map(|&(_, s)| s).collect(),
        })
    }

    /// The axis names, major first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The axis sizes, major first.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// How many devices the mesh has (the product of the sizes).
    pub fn device_count(&self) -> usize {
        self.sizes.iter().product()
    }

    /// The axes of a runtime [`Mesh`]: its names and sizes.
    pub fn of(mesh: &Mesh) -> MeshAxes {
        MeshAxes {
            names: mesh.axis_names().to_vec(),
            sizes: mesh.shape().to_vec(),
        }
    }

    /// The position of axis `name`; `what` names the op or value in errors.
    ///
    /// Errors: [`Error::UnknownMeshAxis`] naming `what`, the axis and the mesh's axes.
    pub fn position(&self, what: &str, name: &str) -> Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::UnknownMeshAxis {
                tensor: what.to_string(),
                axis: name.to_string(),
                mesh_axes: self.names.clone(),
            })
    }

    /// Positions of several axes, in the order given.
    ///
    /// Errors: [`Error::UnknownMeshAxis`]; [`Error::MeshAxisReused`] for
    /// an axis named twice.
    pub fn positions<S: AsRef<str>>(&self, what: &str, names: &[S]) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let p = self.position(what, name.as_ref())?;
            if out.contains(&p) {
                return Err(Error::MeshAxisReused {
                    tensor: what.to_string(),
                    axis: name.as_ref().to_string(),
                    spec: format!("{:?}", names.iter().map(|n| n.as_ref()).collect::<Vec<_>>()),
                });
            }
            out.push(p);
        }
        Ok(out)
    }

    /// The logical device id of mesh coordinates.
    pub(crate) fn id(&self, coords: &[usize]) -> usize {
        coords
            .iter()
            .zip(&self.sizes)
            .fold(0, |acc, (&c, &s)| acc * s + c)
    }

    /// Product of the sizes of the axes after `axis` (its stride in the id).
    pub(crate) fn stride(&self, axis: usize) -> usize {
        self.sizes[axis + 1..].iter().product()
    }
}

/// The mesh axes a collective spans: devices that differ only along them
/// communicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectiveAxes {
    /// The mesh.
    pub mesh: MeshAxes,
    /// Positions of the axes in the mesh, in the order the caller named
    /// them (the order of a gather's pieces).
    pub axes: Vec<usize>,
}

impl CollectiveAxes {
    /// How many devices take part in each group (product of the axis sizes).
    pub fn size(&self) -> usize {
        self.axes.iter().map(|&a| self.mesh.sizes[a]).product()
    }

    /// The names of the axes, for messages.
    pub fn names(&self) -> Vec<String> {
        self.axes
            .iter()
            .map(|&a| self.mesh.names[a].clone())
            .collect()
    }

    /// `replica_groups`: one group per position along the other axes
    /// (row-major), members ordered row-major over the named axes in the
    /// order given.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let others: Vec<usize> = (0..self.mesh.sizes.len())
            .filter(|a| !self.axes.contains(a))
            .collect();
        let count =
            |axes: &[usize]| -> usize { axes.iter().map(|&a| self.mesh.sizes[a]).product() };
        let fill = |coords: &mut [usize], axes: &[usize], mut k: usize| {
            for &a in axes.iter().rev() {
                coords[a] = k % self.mesh.sizes[a];
                k /= self.mesh.sizes[a];
            }
        };
        let mut coords = vec![0; self.mesh.sizes.len()];
        (0..count(&others))
            .map(|g| {
                fill(&mut coords, &others, g);
                (0..count(&self.axes))
                    .map(|m| {
                        fill(&mut coords, &self.axes, m);
                        self.mesh.id(&coords)
                    })
                    .collect()
            })
            .collect()
    }

    /// Source-target pairs of logical device ids for a permutation `perm`
    /// of positions along the (single) axis, repeated in every group.
    pub fn pairs(&self, perm: &[(usize, usize)]) -> Vec<(usize, usize)> {
        self.groups()
            .iter()
            .flat_map(|g| perm.iter().map(move |&(s, t)| (g[s], g[t])))
            .collect()
    }
}

impl Builder {
    /// The mesh of the innermost manual region the builder records into.
    ///
    /// Errors: [`Error::NotInManualRegion`] outside every manual region.
    pub(crate) fn manual_mesh(&self, op: &'static str) -> Result<MeshAxes> {
        let s = self.state.borrow();
        let mut scope = s.scope;
        while let Some(r) = scope {
            let region = &s.graph.regions[r.0];
            if let Some(mesh) = &region.manual {
                return Ok(mesh.clone());
            }
            scope = region.parent;
        }
        Err(Error::NotInManualRegion { op })
    }

    fn collective_axes(&self, op: &'static str, names: &[&str]) -> Result<CollectiveAxes> {
        let mesh = self.manual_mesh(op)?;
        if names.is_empty() {
            return Err(Error::UnknownMeshAxis {
                tensor: op.to_string(),
                axis: String::new(),
                mesh_axes: mesh.names.clone(),
            });
        }
        let axes = mesh.positions(op, names)?;
        Ok(CollectiveAxes { mesh, axes })
    }

    /// `lax.axis_index(axis_name)`: this device's position along the
    /// mesh axis, an `i32` scalar (from `stablehlo.partition_id`).
    ///
    /// Errors: [`Error::NotInManualRegion`], [`Error::UnknownMeshAxis`].
    pub fn axis_index(&self, axis_name: &str) -> Result<Value> {
        let mesh = self.manual_mesh("axis_index")?;
        let a = mesh.position("axis_index", axis_name)?;
        let id = self
            .push(Op::PartitionId, &[], vec![ArraySpec::new(DType::U32, [])])?
            .remove(0);
        let stride = self.full(mesh.stride(a) as f64, DType::U32, &[])?;
        let size = self.full(mesh.sizes[a] as f64, DType::U32, &[])?;
        id.div(&stride)?.rem(&size)?.convert(DType::I32)
    }
}

fn check_reducible(op: &'static str, x: &Value) -> Result<()> {
    if x.dtype() == DType::Bool {
        return Err(op_err(op, format!("{} has no arithmetic", x.spec)));
    }
    Ok(())
}

/// Checks that dimension `dim` of `x` is `axis size`-divisible (`exact`:
/// equal to the axis size).
fn check_split(
    op: &'static str,
    x: &Value,
    over: &CollectiveAxes,
    dim: usize,
    exact: bool,
) -> Result<()> {
    let n = over.size();
    let d = x.dims()[dim];
    let ok = if exact { d == n } else { d.is_multiple_of(n) };
    if ok {
        return Ok(());
    }
    Err(Error::CollectiveShape {
        op,
        axes: over.names(),
        axis_size: n,
        dim,
        operand: x.spec.clone(),
        exact,
    })
}

/// `all_reduce` with the monoid `kind` (add, max, min) over `over`.
pub(crate) fn all_reduce(x: &Value, over: CollectiveAxes, kind: BinaryOp) -> Result<Value> {
    let b = x.builder();
    let scalar = ArraySpec::new(x.dtype(), []);
    let (body, _) = b.region("all_reduce", &[scalar.clone(), scalar], |a| {
        Ok(vec![a[0].binary(kind, &a[1])?])
    })?;
    Ok(
        b.push(Op::AllReduce { over, body }, &[x], vec![x.spec.clone()])?
            .remove(0),
    )
}

/// `all_gather` along `dim` (tiled: that dimension grows by the axis size).
pub(crate) fn all_gather(x: &Value, over: CollectiveAxes, dim: usize) -> Result<Value> {
    let mut dims = x.dims().to_vec();
    dims[dim] = dims[dim]
        .checked_mul(over.size())
        .ok_or_else(|| op_err("all_gather", format!("{} gathered overflows", x.spec)))?;
    let spec = ArraySpec::new(x.dtype(), dims);
    Ok(x.builder()
        .push(Op::AllGather { over, dim }, &[x], vec![spec])?
        .remove(0))
}

/// Summing `reduce_scatter` along `dim` (tiled: that dimension shrinks by
/// the axis size, which must divide it).
pub(crate) fn reduce_scatter(x: &Value, over: CollectiveAxes, dim: usize) -> Result<Value> {
    check_split("psum_scatter", x, &over, dim, false)?;
    let b = x.builder();
    let scalar = ArraySpec::new(x.dtype(), []);
    let (body, _) = b.region("reduce_scatter", &[scalar.clone(), scalar], |a| {
        Ok(vec![a[0].add(&a[1])?])
    })?;
    let mut dims = x.dims().to_vec();
    dims[dim] /= over.size();
    let spec = ArraySpec::new(x.dtype(), dims);
    Ok(
        b.push(Op::ReduceScatter { over, dim, body }, &[x], vec![spec])?
            .remove(0),
    )
}

/// Tiled `all_to_all`: `split_dim` shrinks by the axis size, `concat_dim` grows.
pub(crate) fn all_to_all(
    x: &Value,
    over: CollectiveAxes,
    split_dim: usize,
    concat_dim: usize,
) -> Result<Value> {
    check_split("all_to_all", x, &over, split_dim, false)?;
    let n = over.size();
    let mut dims = x.dims().to_vec();
    dims[split_dim] /= n;
    dims[concat_dim] = dims[concat_dim]
        .checked_mul(n)
        .ok_or_else(|| op_err("all_to_all", format!("{} concatenated overflows", x.spec)))?;
    let spec = ArraySpec::new(x.dtype(), dims);
    Ok(x.builder()
        .push(
            Op::AllToAll {
                over,
                split_dim,
                concat_dim,
            },
            &[x],
            vec![spec],
        )?
        .remove(0))
}

/// `collective_permute` by positions along the axis.
pub(crate) fn collective_permute(
    x: &Value,
    over: CollectiveAxes,
    perm: Vec<(usize, usize)>,
) -> Result<Value> {
    Ok(x.builder()
        .push(
            Op::CollectivePermute { over, perm },
            &[x],
            vec![x.spec.clone()],
        )?
        .remove(0))
}

impl Value {
    fn reduce_over(&self, op: &'static str, axes: &[&str], kind: BinaryOp) -> Result<Value> {
        check_reducible(op, self)?;
        let over = self.builder.collective_axes(op, axes)?;
        all_reduce(self, over, kind)
    }

    /// `lax.psum(x, axes)`: the sum over the devices along the mesh axes
    /// `axes`, on each of them. Its gradient is `psum` of the cotangent.
    ///
    /// Errors: [`Error::NotInManualRegion`] outside a [`shard_map`] body;
    /// [`Error::UnknownMeshAxis`] / [`Error::MeshAxisReused`] (naming the op);
    /// [`Error::Op`] for a bool operand.
    ///
    /// [`shard_map`]: super::shard_map::shard_map
    pub fn psum(&self, axes: &[&str]) -> Result<Value> {
        self.reduce_over("psum", axes, BinaryOp::Add)
    }

    /// `lax.pmax(x, axes)`: the elementwise maximum over the devices along
    /// `axes` (not differentiable). Errors as [`Value::psum`].
    pub fn pmax(&self, axes: &[&str]) -> Result<Value> {
        self.reduce_over("pmax", axes, BinaryOp::Max)
    }

    /// `lax.pmin(x, axes)`: the elementwise minimum over the devices along
    /// `axes` (not differentiable). Errors as [`Value::psum`].
    pub fn pmin(&self, axes: &[&str]) -> Result<Value> {
        self.reduce_over("pmin", axes, BinaryOp::Min)
    }

    /// `lax.pmean(x, axes)`: [`Value::psum`] divided by the number of
    /// devices along `axes`. Errors as [`Value::psum`].
    pub fn pmean(&self, axes: &[&str]) -> Result<Value> {
        let over = self.builder.collective_axes("pmean", axes)?;
        let n = over.size();
        check_reducible("pmean", self)?;
        let s = all_reduce(self, over, BinaryOp::Add)?;
        s.div(&s.scalar_like(n as f64)?)
    }

    /// `lax.all_gather(x, axis_name, axis=axis, tiled=tiled)`: every
    /// device's `x`, in axis order. Tiled: concatenated along dimension
    /// `axis` (which grows by the axis size); untiled: stacked in a new
    /// dimension at `axis`. Its gradient is [`Value::psum_scatter`].
    ///
    /// Errors: as [`Value::psum`]; [`Error::DimensionOutOfRange`] for `axis`.
    pub fn all_gather(&self, axis_name: &str, axis: usize, tiled: bool) -> Result<Value> {
        let over = self.builder.collective_axes("all_gather", &[axis_name])?;
        let rank = if tiled { self.rank() } else { self.rank() + 1 };
        check_dim_list("all_gather", "axis", "dimension", &[axis], rank, &self.spec)?;
        if tiled {
            all_gather(self, over, axis)
        } else {
            all_gather(&self.expand_dims(axis)?, over, axis)
        }
    }

    /// `lax.psum_scatter(x, axis_name, scatter_dimension=dim, tiled=tiled)`:
    /// the sum over the devices along the axis, of which device `i` keeps
    /// block `i` along `dim`. Tiled: `dim` shrinks by the axis size, which
    /// must divide it; untiled: `dim` must equal the axis size and is
    /// removed. Its gradient is [`Value::all_gather`].
    ///
    /// Errors: as [`Value::psum`]; [`Error::DimensionOutOfRange`];
    /// [`Error::CollectiveShape`] naming the axis and the dimension.
    pub fn psum_scatter(&self, axis_name: &str, dim: usize, tiled: bool) -> Result<Value> {
        check_reducible("psum_scatter", self)?;
        let over = self.builder.collective_axes("psum_scatter", &[axis_name])?;
        check_dim_list(
            "psum_scatter",
            "scatter_dimension",
            "dimension",
            &[dim],
            self.rank(),
            &self.spec,
        )?;
        if tiled {
            reduce_scatter(self, over, dim)
        } else {
            check_split("psum_scatter", self, &over, dim, true)?;
            reduce_scatter(self, over, dim)?.squeeze(&[dim])
        }
    }

    /// `lax.all_to_all(x, axis_name, split_axis, concat_axis, tiled=tiled)`:
    /// `x` is cut into axis-size blocks along `split_axis`; device `j`
    /// receives block `j` of every device, joined in device order along
    /// `concat_axis`. Tiled: `split_axis` shrinks and `concat_axis` grows
    /// by the axis size; untiled: `split_axis` (equal to the axis size) is
    /// removed and a new dimension of the axis size appears at
    /// `concat_axis` of the result. Its gradient is `all_to_all` with the
    /// two dimensions swapped.
    ///
    /// Errors: as [`Value::psum_scatter`].
    pub fn all_to_all(
        &self,
        axis_name: &str,
        split_axis: usize,
        concat_axis: usize,
        tiled: bool,
    ) -> Result<Value> {
        let op = "all_to_all";
        let over = self.builder.collective_axes(op, &[axis_name])?;
        check_dim_list(
            op,
            "split_axis",
            "dimension",
            &[split_axis],
            self.rank(),
            &self.spec,
        )?;
        check_dim_list(
            op,
            "concat_axis",
            "dimension",
            &[concat_axis],
            self.rank(),
            &self.spec,
        )?;
        if tiled {
            return all_to_all(self, over, split_axis, concat_axis);
        }
        check_split(op, self, &over, split_axis, true)?;
        // A unit dimension at `p` receives the pieces; the split dimension
        // (now of size 1) is dropped after.
        let p = if concat_axis <= split_axis {
            concat_axis
        } else {
            concat_axis + 1
        };
        let s = if split_axis < p {
            split_axis
        } else {
            split_axis + 1
        };
        all_to_all(&self.expand_dims(p)?, over, s, p)?.squeeze(&[s])
    }

    /// `lax.ppermute(x, axis_name, perm)`: device at position `s` along the
    /// axis sends `x` to position `t` for each `(s, t)`; a device that
    /// receives nothing gets zeros. Its gradient is `ppermute` by the
    /// inverse pairs.
    ///
    /// Errors: as [`Value::psum`]; [`Error::InvalidPermutation`] for a
    /// position past the axis size or a source or target given twice.
    pub fn ppermute(&self, axis_name: &str, perm: &[(usize, usize)]) -> Result<Value> {
        let op = "ppermute";
        let over = self.builder.collective_axes(op, &[axis_name])?;
        let n = over.size();
        let invalid = |reason: &'static str| Error::InvalidPermutation {
            op,
            axis: axis_name.to_string(),
            axis_size: n,
            pairs: perm.to_vec(),
            reason,
        };
        for (i, &(s, t)) in perm.iter().enumerate() {
            if s >= n || t >= n {
                return Err(invalid("a position is past the axis size"));
            }
            if perm[..i].iter().any(|&(s2, _)| s2 == s) {
                return Err(invalid("a source appears twice"));
            }
            if perm[..i].iter().any(|&(_, t2)| t2 == t) {
                return Err(invalid("a target appears twice"));
            }
        }
        collective_permute(self, over, perm.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over(axes: &[(&str, usize)], named: &[usize]) -> CollectiveAxes {
        CollectiveAxes {
            mesh: MeshAxes::new(axes).unwrap(),
            axes: named.to_vec(),
        }
    }

    #[test]
    fn groups_are_jaxs() {
        // Mesh (a=2, b=2): as JAX lowers psum over one or both axes.
        let m = [("a", 2), ("b", 2)];
        assert_eq!(over(&m, &[1]).groups(), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(over(&m, &[0]).groups(), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(over(&m, &[0, 1]).groups(), vec![vec![0, 1, 2, 3]]);
        assert_eq!(over(&m, &[1, 0]).groups(), vec![vec![0, 2, 1, 3]]);
        // ppermute over `a` with (0→1, 1→0): JAX's source_target_pairs.
        assert_eq!(
            over(&m, &[0]).pairs(&[(0, 1), (1, 0)]),
            vec![(0, 2), (2, 0), (1, 3), (3, 1)]
        );
        let m3 = over(&[("x", 2), ("y", 3), ("z", 2)], &[1]);
        assert_eq!(m3.groups()[0], vec![0, 2, 4]);
        assert_eq!(m3.groups()[3], vec![7, 9, 11]);
        assert_eq!(m3.mesh.id(&[1, 1, 1]), 9);
        assert_eq!(m3.mesh.stride(0), 6);
    }

    #[test]
    fn mesh_errors_name_the_axis() {
        let m = MeshAxes::new(&[("data", 2)]).unwrap();
        match m.position("psum", "model") {
            Err(Error::UnknownMeshAxis {
                tensor,
                axis,
                mesh_axes,
            }) => {
                assert_eq!((tensor.as_str(), axis.as_str()), ("psum", "model"));
                assert_eq!(mesh_axes, vec!["data".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            m.positions("psum", &["data", "data"]),
            Err(Error::MeshAxisReused { .. })
        ));
        assert!(MeshAxes::new(&[("a", 0)]).is_err());
        assert!(MeshAxes::new(&[]).is_err());
        assert!(MeshAxes::new(&[("a", usize::MAX), ("b", 2)]).is_err());
    }
}
