//! `PartitionSpec` and `NamedSharding`, with JAX's semantics: which mesh
//! axes split which array dimension, and which slice each device holds.

use std::fmt;
use std::ops::Range;

use super::mesh::Mesh;
use crate::error::{Error, Result};

/// How one array dimension is split: over no axis (replicated along it),
/// or over one or more mesh axes (major to minor), as one entry of JAX's
/// `PartitionSpec`: `None`, `'data'`, `('data', 'model')`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DimSpec(Vec<String>);

impl DimSpec {
    /// Not split (`None` in JAX).
    pub fn replicated() -> DimSpec {
        DimSpec(Vec::new())
    }

    /// Split over `axes`, the first one major.
    pub fn axes<S: AsRef<str>>(axes: &[S]) -> DimSpec {
        DimSpec(axes.iter().map(|a| a.as_ref().to_string()).collect())
    }

    /// The axes, major first (empty: not split).
    pub fn axis_names(&self) -> &[String] {
        &self.0
    }
}

impl From<&str> for DimSpec {
    fn from(a: &str) -> Self {
        DimSpec(vec![a.to_string()])
    }
}
impl From<Option<&str>> for DimSpec {
    fn from(a: Option<&str>) -> Self {
        DimSpec(a.map(|a| vec![a.to_string()]).unwrap_or_default())
    }
}
impl<const N: usize> From<[&str; N]> for DimSpec {
    fn from(a: [&str; N]) -> Self {
        DimSpec::axes(&a)
    }
}
impl From<(&str, &str)> for DimSpec {
    fn from((a, b): (&str, &str)) -> Self {
        DimSpec::axes(&[a, b])
    }
}
impl From<(&str, &str, &str)> for DimSpec {
    fn from((a, b, c): (&str, &str, &str)) -> Self {
        DimSpec::axes(&[a, b, c])
    }
}

/// Per array dimension, the mesh axes that split it (JAX's
/// `PartitionSpec`, usually written `P(...)`). Dimensions past the spec's
/// length are replicated; `P()` replicates the whole array.
///
/// ```
/// use xlayer::P;
/// let spec = P!["data", None, ("x", "y")];
/// assert_eq!(spec.to_string(), "P('data', None, ('x', 'y'))");
/// assert_eq!(P![].rank(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PartitionSpec(Vec<DimSpec>);

/// Builds a [`PartitionSpec`] as JAX's `P(...)`: each entry a mesh axis
/// name, `None`, or a tuple (or array) of axis names.
#[macro_export]
macro_rules! P {
    ($($d:expr),* $(,)?) => {
        $crate::sharding::PartitionSpec::new(vec![$($crate::sharding::DimSpec::from($d)),*])
    };
}

impl PartitionSpec {
    /// A spec from one entry per leading dimension.
    pub fn new(dims: Vec<DimSpec>) -> PartitionSpec {
        PartitionSpec(dims)
    }

    /// Everything replicated (`P()`).
    pub fn replicated() -> PartitionSpec {
        PartitionSpec(Vec::new())
    }

    /// The entries, one per leading dimension.
    pub fn dims(&self) -> &[DimSpec] {
        &self.0
    }

    /// How many dimensions the spec names.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for PartitionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P(")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match d.0.as_slice() {
                [] => write!(f, "None")?,
                [a] => write!(f, "'{a}'")?,
                many => {
                    let q: Vec<String> = many.iter().map(|a| format!("'{a}'")).collect();
                    write!(f, "({})", q.join(", "))?
                }
            }
        }
        write!(f, ")")
    }
}

/// A [`Mesh`] and a [`PartitionSpec`]: how an array is laid out over the
/// mesh's devices (JAX's `NamedSharding`). A device holds the slice given
/// by its coordinates along the axes that split each dimension; along
/// axes the spec does not use, the slice is replicated.
///
/// ```no_run
/// use xlayer::{sharding::{Mesh, NamedSharding}, Client, P};
/// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[2, 2], &["data", "model"])?;
/// let s = NamedSharding::new(&mesh, P!["data", None]);
/// // Device 3 = (data 1, model 1): rows 4..8 of an [8, 6] array, all columns.
/// assert_eq!(s.shard_ranges("x", &[8, 6])?[3], vec![4..8, 0..6]);
/// assert_eq!(s.shard_shape("x", &[8, 6])?, vec![4, 6]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedSharding {
    mesh: Mesh,
    spec: PartitionSpec,
}

impl NamedSharding {
    /// The sharding of `spec` over `mesh` (checked against an array's
    /// shape when used: [`NamedSharding::check`]).
    pub fn new(mesh: &Mesh, spec: PartitionSpec) -> NamedSharding {
        NamedSharding {
            mesh: mesh.clone(),
            spec,
        }
    }

    /// Every device holds the whole array.
    pub fn replicated(mesh: &Mesh) -> NamedSharding {
        NamedSharding::new(mesh, PartitionSpec::replicated())
    }

    /// The mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The partition spec.
    pub fn spec(&self) -> &PartitionSpec {
        &self.spec
    }

    /// Checks that this sharding can lay out an array `tensor` of shape
    /// `dims`.
    ///
    /// Errors, each naming `tensor`: [`Error::SpecRank`] for a spec longer
    /// than the rank; [`Error::UnknownMeshAxis`] for an axis the mesh
    /// lacks; [`Error::MeshAxisReused`] for an axis used twice;
    /// [`Error::IndivisibleDimension`] for a dimension its axes' total size
    /// does not divide.
    pub fn check(&self, tensor: &str, dims: &[usize]) -> Result<()> {
        if self.spec.rank() > dims.len() {
            return Err(Error::SpecRank {
                tensor: tensor.to_string(),
                spec: self.spec.to_string(),
                rank: dims.len(),
            });
        }
        let mut seen: Vec<&str> = Vec::new();
        for (dim, d) in self.spec.0.iter().enumerate() {
            let mut shards = 1usize;
            for axis in &d.0 {
                let Some(k) = self.mesh.axis_index(axis) else {
                    return Err(Error::UnknownMeshAxis {
                        tensor: tensor.to_string(),
                        axis: axis.clone(),
                        mesh_axes: self.mesh.axis_names().to_vec(),
                    });
                };
                if seen.contains(&axis.as_str()) {
                    return Err(Error::MeshAxisReused {
                        tensor: tensor.to_string(),
                        axis: axis.clone(),
                        spec: self.spec.to_string(),
                    });
                }
                seen.push(axis);
                shards *= self.mesh.shape()[k];
            }
            if !dims[dim].is_multiple_of(shards) {
                return Err(Error::IndivisibleDimension {
                    tensor: tensor.to_string(),
                    dim,
                    size: dims[dim],
                    axes: d.0.clone(),
                    shards,
                });
            }
        }
        Ok(())
    }

    /// How many pieces dimension `dim` is split into (1 when not split).
    fn shards_of(&self, dim: usize) -> usize {
        self.spec.0.get(dim).map_or(1, |d| {
            d.0.iter()
                .filter_map(|a| self.mesh.axis_size(a).ok())
                .product()
        })
    }

    /// The global shape of an array whose shards have shape `shard` (each
    /// split dimension multiplied by its axes' total size).
    pub fn global_shape(&self, shard: &[usize]) -> Vec<usize> {
        shard
            .iter()
            .enumerate()
            .map(|(i, &n)| n * self.shards_of(i))
            .collect()
    }

    /// The shape of one device's shard of an array `tensor` of shape
    /// `dims` (every device's is the same).
    ///
    /// Errors: those of [`NamedSharding::check`].
    pub fn shard_shape(&self, tensor: &str, dims: &[usize]) -> Result<Vec<usize>> {
        self.check(tensor, dims)?;
        Ok(dims
            .iter()
            .enumerate()
            .map(|(i, &n)| n / self.shards_of(i))
            .collect())
    }

    /// For each device of the mesh (in [`Mesh::devices`] order), the index
    /// ranges of the slice of `tensor` (shape `dims`) it holds.
    ///
    /// Errors: those of [`NamedSharding::check`].
    pub fn shard_ranges(&self, tensor: &str, dims: &[usize]) -> Result<Vec<Vec<Range<usize>>>> {
        let shard = self.shard_shape(tensor, dims)?;
        Ok((0..self.mesh.size())
            .map(|dev| {
                let coords = self.mesh.coords(dev);
                shard
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| {
                        let mut index = 0;
                        if let Some(d) = self.spec.0.get(i) {
                            for a in &d.0 {
                                let k = self.mesh.axis_index(a).unwrap_or(0);
                                index = index * self.mesh.shape()[k] + coords[k];
                            }
                        }
                        index * len..(index + 1) * len
                    })
                    .collect()
            })
            .collect())
    }

    /// The Shardy attribute of this sharding for an array of rank `rank`
    /// over mesh symbol `@mesh_name`, as JAX 0.12 writes it:
    /// `#sdy.sharding<@mesh, [{"data"}, {}]>`.
    pub fn sdy_attribute(&self, mesh_name: &str, rank: usize) -> String {
        let dims: Vec<String> = (0..rank)
            .map(|i| {
                let axes = self.spec.0.get(i).map_or(&[][..], |d| d.0.as_slice());
                let q: Vec<String> = axes.iter().map(|a| format!("\"{a}\"")).collect();
                format!("{{{}}}", q.join(", "))
            })
            .collect();
        format!("#sdy.sharding<@{mesh_name}, [{}]>", dims.join(", "))
    }
}
