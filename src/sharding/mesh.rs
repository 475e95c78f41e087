//! `Mesh`: devices laid out in an n-d grid whose axes have names, as
//! JAX's `jax.sharding.Mesh` / `jax.make_mesh`.

use std::fmt;

use crate::error::{Error, Result};
use crate::pjrt::client::{Client, Device};

/// Devices in an n-d grid with named axes (`('data', 'model')`), in
/// row-major order: device `i` of [`Mesh::devices`] sits at the
/// coordinates [`Mesh::coords`]`(i)`, the last axis varying fastest — as
/// `jax.make_mesh` lays out `jax.devices()`. An SPMD program over the mesh
/// runs partition `i` on device `i`.
///
/// ```no_run
/// use xlayer::{sharding::Mesh, Client};
/// let client = Client::cpu_devices(4)?;
/// let mesh = Mesh::new(&client, &[2, 2], &["data", "model"])?;
/// assert_eq!(mesh.axis_size("model")?, 2);
/// assert_eq!(mesh.coords(3), vec![1, 1]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Clone)]
pub struct Mesh {
    client: Client,
    devices: Vec<Device>,
    shape: Vec<usize>,
    axis_names: Vec<String>,
}

impl PartialEq for Mesh {
    fn eq(&self, other: &Self) -> bool {
        self.devices == other.devices
            && self.shape == other.shape
            && self.axis_names == other.axis_names
    }
}

impl Eq for Mesh {}

impl std::hash::Hash for Mesh {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.devices.hash(state);
        self.shape.hash(state);
        self.axis_names.hash(state);
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mesh(")?;
        for (i, (n, s)) in self.axis_names.iter().zip(&self.shape).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "'{n}': {s}")?;
        }
        write!(f, ")")
    }
}

impl Mesh {
    /// A mesh of the client's first `product(shape)` devices, in the
    /// client's order, with one name per axis.
    ///
    /// Errors: those of [`Mesh::from_devices`]; [`Error::DeviceCount`] when
    /// the mesh has more devices than the client.
    pub fn new(client: &Client, shape: &[usize], axis_names: &[&str]) -> Result<Mesh> {
        let n = mesh_size(shape, axis_names)?;
        if n > client.devices().len() {
            return Err(Error::DeviceCount {
                what: format!("a mesh of shape {shape:?} over axes {axis_names:?}"),
                expected: n,
                actual: client.devices().len(),
            });
        }
        Mesh::from_devices(client, &client.devices()[..n], shape, axis_names)
    }

    /// A mesh of exactly `devices` of `client` (row-major over `shape`).
    ///
    /// Errors: [`Error::MeshShape`] when `shape` and `axis_names` differ in
    /// length, are empty, or an axis has size 0; [`Error::DuplicateName`]
    /// for an axis name given twice; [`Error::DeviceCount`] when the device
    /// count is not the product of `shape`; [`Error::DuplicateDevice`] for
    /// a device listed twice; [`Error::ForeignClient`] for a device of
    /// another client.
    pub fn from_devices(
        client: &Client,
        devices: &[Device],
        shape: &[usize],
        axis_names: &[&str],
    ) -> Result<Mesh> {
        let n = mesh_size(shape, axis_names)?;
        if devices.len() != n {
            return Err(Error::DeviceCount {
                what: format!("a mesh of shape {shape:?} over axes {axis_names:?}"),
                expected: n,
                actual: devices.len(),
            });
        }
        for (i, d) in devices.iter().enumerate() {
            client.check_device(d, &format!("device {i} of the mesh"))?;
            if devices[..i].contains(d) {
                return Err(Error::DuplicateDevice {
                    what: format!("the mesh over axes {axis_names:?}"),
                    device: d.to_string(),
                });
            }
        }
        Ok(Mesh {
            client: client.clone(),
            devices: devices.to_vec(),
            shape: shape.to_vec(),
            axis_names: axis_names.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The client whose devices these are.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The devices, row-major over the mesh's shape.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The size of each axis.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The axis names, in order.
    pub fn axis_names(&self) -> &[String] {
        &self.axis_names
    }

    /// How many devices the mesh holds.
    pub fn size(&self) -> usize {
        self.devices.len()
    }

    /// The position of axis `name`, or `None`.
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axis_names.iter().position(|n| n == name)
    }

    /// The size of axis `name`.
    ///
    /// Errors: [`Error::UnknownName`] for an axis the mesh lacks.
    pub fn axis_size(&self, name: &str) -> Result<usize> {
        self.axis_index(name)
            .map(|i| self.shape[i])
            .ok_or_else(|| Error::UnknownName {
                what: format!("{self:?}"),
                kind: "mesh axis",
                name: name.to_string(),
                known: self.axis_names.clone(),
            })
    }

    /// The coordinates of device `i` (row-major; out of range wraps).
    pub fn coords(&self, i: usize) -> Vec<usize> {
        let mut rest = i;
        let mut c = vec![0; self.shape.len()];
        for (k, &s) in self.shape.iter().enumerate().rev() {
            c[k] = rest % s;
            rest /= s;
        }
        c
    }

    /// The Shardy declaration of this mesh as symbol `@name`, as JAX 0.12
    /// writes it: `sdy.mesh @mesh = <["data"=2, "model"=2]>`.
    pub fn sdy_declaration(&self, name: &str) -> String {
        let axes: Vec<String> = self
            .axis_names
            .iter()
            .zip(&self.shape)
            .map(|(n, s)| format!("\"{n}\"={s}"))
            .collect();
        format!("sdy.mesh @{name} = <[{}]>", axes.join(", "))
    }
}

/// The device count of a mesh of `shape` named `axis_names`, checked.
fn mesh_size(shape: &[usize], axis_names: &[&str]) -> Result<usize> {
    let bad = |reason: &'static str| Error::MeshShape {
        shape: shape.to_vec(),
        axis_names: axis_names.iter().map(|s| s.to_string()).collect(),
        reason,
    };
    if shape.len() != axis_names.len() {
        return Err(bad("one name per axis is needed"));
    }
    if shape.is_empty() {
        return Err(bad("a mesh has at least one axis"));
    }
    if shape.contains(&0) {
        return Err(bad("every axis has at least one device"));
    }
    for (i, n) in axis_names.iter().enumerate() {
        if n.is_empty() || n.contains(['"', '\\']) {
            return Err(bad(
                "axis names are non-empty and hold no quote or backslash",
            ));
        }
        if axis_names[..i].contains(n) {
            return Err(Error::DuplicateName {
                what: format!("the mesh over axes {axis_names:?}"),
                kind: "mesh axis",
                name: n.to_string(),
            });
        }
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| bad("the device count overflows"))
}
