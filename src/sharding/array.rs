//! `Array`: a global array laid out over a mesh, one `Buffer` per device
//! (JAX's sharded `jax.Array`).

use std::ops::Range;

use super::spec::NamedSharding;
use crate::dtype::{ArraySpec, NativeType};
use crate::error::{Error, Result};
use crate::host_array::HostArray;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Device;
use crate::weights::SafetensorsFile;

/// A global array of type [`Array::spec`], split as its
/// [`NamedSharding`] says: one [`Buffer`] per mesh device (in
/// [`crate::sharding::Mesh::devices`] order) holding that device's slice.
///
/// ```no_run
/// use xlayer::{sharding::{Array, Mesh, NamedSharding}, Client, P};
/// let mesh = Mesh::new(&Client::cpu_devices(4)?, &[4], &["data"])?;
/// let x: Vec<f32> = (0..8).map(|i| i as f32).collect();
/// let a = Array::from_host(&x, &[8], &NamedSharding::new(&mesh, P!["data"]))?;
/// assert_eq!(a.shard(1).map(|b| b.dims().to_vec()), Some(vec![2]));
/// assert_eq!(a.to_vec::<f32>()?, x); // gathered
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug)]
pub struct Array {
    spec: ArraySpec,
    sharding: NamedSharding,
    shards: Vec<Buffer>,
}

impl Array {
    /// Scatters host data of shape `dims` over the sharding's devices:
    /// each device receives only its slice (replicated slices are sent to
    /// each device holding them).
    ///
    /// Errors: [`Error::HostDataSize`] when `data` does not fill `dims`;
    /// the sharding's errors ([`NamedSharding::check`]); upload errors.
    pub fn from_host<T: NativeType>(
        data: &[T],
        dims: &[usize],
        sharding: &NamedSharding,
    ) -> Result<Array> {
        let host = HostArray::from_slice(data, dims)?;
        Array::from_bytes(&host.bytes, &host.spec, sharding)
    }

    /// [`Array::from_host`] from raw little-endian bytes of type `spec`.
    ///
    /// Errors: [`Error::HostDataSize`] for a byte count other than the
    /// type's, [`Error::OutOfRange`] for `bool` bytes other than 0 and 1
    /// (the checks of [`crate::Client::buffer_from_bytes`]); the
    /// sharding's errors; upload errors.
    pub fn from_bytes(bytes: &[u8], spec: &ArraySpec, sharding: &NamedSharding) -> Result<Array> {
        crate::pjrt::client::check_host_bytes("Array::from_bytes", bytes, spec)?;
        let name = spec.to_string();
        Array::scatter(bytes, spec.clone(), sharding, &name)
    }

    /// Uploads tensor `name` of a memory-mapped safetensors file laid out by
    /// `sharding`, straight from the mapped bytes: each device receives only
    /// its slice, and no host copy of the whole tensor is made (only each
    /// slice's bytes are gathered, one slice at a time).
    ///
    /// ```no_run
    /// use xlayer::{sharding::{Array, Mesh, NamedSharding}, weights::SafetensorsFile, Client, P};
    /// let mesh = Mesh::new(&Client::cpu_devices(2)?, &[2], &["model"])?;
    /// let file = SafetensorsFile::open("model.safetensors")?;
    /// let w = Array::from_safetensors(&file, "dense.weight", &NamedSharding::new(&mesh, P![None, "model"]))?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    ///
    /// Errors: [`Error::TensorNotInFile`] naming the file and the tensor;
    /// the sharding's errors ([`Error::IndivisibleDimension`],
    /// [`Error::UnknownMeshAxis`], ...) naming the tensor; upload errors.
    pub fn from_safetensors(
        file: &SafetensorsFile,
        name: &str,
        sharding: &NamedSharding,
    ) -> Result<Array> {
        let (spec, bytes) = match (file.spec(name), file.bytes(name)) {
            (Some(s), Some(b)) => (s.clone(), b),
            _ => {
                return Err(Error::TensorNotInFile {
                    path: file.path().to_path_buf(),
                    tensor: name.to_string(),
                })
            }
        };
        Array::scatter(bytes, spec, sharding, name)
    }

    /// Uploads each device's slice of `bytes` (little-endian, of type
    /// `spec`, already checked to fill it), naming `tensor` in the
    /// sharding's errors.
    fn scatter(
        bytes: &[u8],
        spec: ArraySpec,
        sharding: &NamedSharding,
        tensor: &str,
    ) -> Result<Array> {
        let ranges = sharding.shard_ranges(tensor, &spec.dims)?;
        let shard_spec = ArraySpec::new(spec.dtype, sharding.shard_shape(tensor, &spec.dims)?);
        let client = sharding.mesh().client();
        let esize = spec.dtype.size_in_bytes();
        let shards = ranges
            .iter()
            .zip(sharding.mesh().devices())
            .map(|(r, dev)| {
                let block = copy_block(bytes, &spec.dims, r, esize);
                client.buffer_from_bytes(&block, &shard_spec, dev)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Array {
            spec,
            sharding: sharding.clone(),
            shards,
        })
    }

    /// An array from its shards, one per mesh device in order (e.g. the
    /// outputs of a multi-device run), named `tensor` in errors.
    ///
    /// Errors: the sharding's errors; [`Error::DeviceCount`] for a shard
    /// count other than the mesh's size; [`Error::ShardArgumentType`] for
    /// a shard of another type than the sharding gives;
    /// [`Error::ShardArgumentDevice`] for a shard on another device than
    /// its mesh position.
    pub fn from_shards(
        tensor: &str,
        spec: ArraySpec,
        sharding: &NamedSharding,
        shards: Vec<Buffer>,
    ) -> Result<Array> {
        let shard_spec = ArraySpec::new(spec.dtype, sharding.shard_shape(tensor, &spec.dims)?);
        let devices = sharding.mesh().devices();
        if shards.len() != devices.len() {
            return Err(Error::DeviceCount {
                what: format!("the shards of `{tensor}`"),
                expected: devices.len(),
                actual: shards.len(),
            });
        }
        for (d, (b, dev)) in shards.iter().zip(devices).enumerate() {
            if *b.spec() != shard_spec {
                return Err(Error::ShardArgumentType {
                    program: tensor.to_string(),
                    device: d,
                    index: 0,
                    expected: shard_spec,
                    actual: b.spec().clone(),
                });
            }
            if b.device() != dev {
                return Err(Error::ShardArgumentDevice {
                    program: tensor.to_string(),
                    device: d,
                    index: 0,
                    expected: dev.to_string(),
                    actual: b.device().to_string(),
                });
            }
        }
        Ok(Array {
            spec,
            sharding: sharding.clone(),
            shards,
        })
    }

    /// The global type.
    pub fn spec(&self) -> &ArraySpec {
        &self.spec
    }

    /// The global dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.spec.dims
    }

    /// The sharding.
    pub fn sharding(&self) -> &NamedSharding {
        &self.sharding
    }

    /// The shards, one per mesh device in order.
    pub fn shards(&self) -> &[Buffer] {
        &self.shards
    }

    /// The shard of the mesh device at position `i`, if any.
    pub fn shard(&self, i: usize) -> Option<&Buffer> {
        self.shards.get(i)
    }

    /// The shard living on `device`, if the mesh holds it.
    pub fn shard_on(&self, device: &Device) -> Option<&Buffer> {
        self.shards.iter().find(|b| b.device() == device)
    }

    /// The index ranges of the global array each shard holds.
    pub fn shard_ranges(&self) -> Result<Vec<Vec<Range<usize>>>> {
        self.sharding
            .shard_ranges(&self.spec.to_string(), &self.spec.dims)
    }

    /// The shards, one per mesh device in order.
    pub fn into_shards(self) -> Vec<Buffer> {
        self.shards
    }

    /// Gathers the array to the host as little-endian bytes: each slice is
    /// read once, from the first device holding it.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let ranges = self.shard_ranges()?;
        let esize = self.spec.dtype.size_in_bytes();
        let mut out = vec![0u8; self.spec.size_in_bytes()];
        let mut done: Vec<&Vec<Range<usize>>> = Vec::new();
        for (r, b) in ranges.iter().zip(&self.shards) {
            if done.contains(&r) {
                continue;
            }
            put_block(&mut out, &self.spec.dims, r, esize, &b.to_bytes()?);
            done.push(r);
        }
        Ok(out)
    }

    /// Gathers the array to the host as a `Vec<T>`.
    ///
    /// Errors: [`Error::DType`] when `T` is not the array's dtype.
    pub fn to_vec<T: NativeType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.spec.dtype {
            return Err(Error::DType {
                context: format!("gathering the sharded array {}", self.spec),
                expected: T::DTYPE,
                actual: self.spec.dtype,
            });
        }
        let bytes = self.to_bytes()?;
        Ok(bytes
            .chunks_exact(self.spec.dtype.size_in_bytes())
            .map(T::from_le_slice)
            .collect())
    }

    /// The same array laid out by `sharding` (JAX's `jax.device_put(x,
    /// sharding)`), possibly over another mesh of the same client. A shard
    /// whose slice and device are unchanged is copied on the device; the
    /// others go through the host (gather, then scatter).
    ///
    /// Errors: the new sharding's errors; [`Error::ForeignClient`] for a
    /// mesh of another client; transfer errors.
    pub fn reshard(&self, sharding: &NamedSharding) -> Result<Array> {
        let name = self.spec.to_string();
        let new_ranges = sharding.shard_ranges(&name, &self.spec.dims)?;
        let old_ranges = self.shard_ranges()?;
        let target = sharding.mesh().client();
        if target.id() != self.sharding.mesh().client().id() {
            return Err(Error::ForeignClient {
                what: format!("the mesh resharding {name}"),
                other: target.describe(),
                this: self.sharding.mesh().client().describe(),
            });
        }
        let shard_spec = ArraySpec::new(
            self.spec.dtype,
            sharding.shard_shape(&name, &self.spec.dims)?,
        );
        let esize = self.spec.dtype.size_in_bytes();
        let mut host: Option<Vec<u8>> = None;
        let mut shards = Vec::with_capacity(new_ranges.len());
        for (r, dev) in new_ranges.iter().zip(sharding.mesh().devices()) {
            let same = old_ranges
                .iter()
                .zip(&self.shards)
                .find(|(o, b)| *o == r && b.device() == dev);
            let buffer = match same {
                Some((_, b)) => b.copy_to_device(dev)?,
                None => {
                    if host.is_none() {
                        host = Some(self.to_bytes()?);
                    }
                    let all = host.as_deref().unwrap_or_default();
                    let block = copy_block(all, &self.spec.dims, r, esize);
                    target.buffer_from_bytes(&block, &shard_spec, dev)?
                }
            };
            shards.push(buffer);
        }
        Ok(Array {
            spec: self.spec.clone(),
            sharding: sharding.clone(),
            shards,
        })
    }
}

/// Row-major strides (in elements) of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Calls `f(global_offset, local_offset, run)` for each contiguous run (in
/// elements) of the block `ranges` of a row-major array of shape `dims`.
fn for_each_run(dims: &[usize], ranges: &[Range<usize>], mut f: impl FnMut(usize, usize, usize)) {
    if dims.is_empty() {
        f(0, 0, 1);
        return;
    }
    if ranges.iter().any(|r| r.is_empty()) {
        return;
    }
    let st = strides(dims);
    let last = dims.len() - 1;
    let run = ranges[last].len();
    let mut idx: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    let mut local = 0;
    loop {
        let global: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        f(global, local, run);
        local += run;
        // Next index over the outer dimensions (the last one runs whole).
        let mut k = last;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < ranges[k].end {
                break;
            }
            idx[k] = ranges[k].start;
        }
    }
}

/// The bytes of block `ranges` of a row-major array `src` of shape `dims`.
pub(crate) fn copy_block(
    src: &[u8],
    dims: &[usize],
    ranges: &[Range<usize>],
    esize: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    for_each_run(dims, ranges, |g, _, n| {
        out.extend_from_slice(&src[g * esize..(g + n) * esize]);
    });
    out
}

/// Writes `block` (the bytes of block `ranges`) into the row-major array
/// `dst` of shape `dims`.
pub(crate) fn put_block(
    dst: &mut [u8],
    dims: &[usize],
    ranges: &[Range<usize>],
    esize: usize,
    block: &[u8],
) {
    for_each_run(dims, ranges, |g, l, n| {
        dst[g * esize..(g + n) * esize].copy_from_slice(&block[l * esize..(l + n) * esize]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_copy_and_put() {
        let dims = [4, 3, 2];
        let src: Vec<u8> = (0..24).collect();
        let ranges = [1..3, 0..3, 1..2];
        let block = copy_block(&src, &dims, &ranges, 1);
        assert_eq!(block, vec![7, 9, 11, 13, 15, 17]);
        let mut dst = vec![0u8; 24];
        put_block(&mut dst, &dims, &ranges, 1, &block);
        assert_eq!(dst[7], 7);
        assert_eq!(dst[17], 17);
        assert_eq!(dst.iter().filter(|&&b| b != 0).count(), 6);
        // Scalars are one run.
        assert_eq!(copy_block(&[5, 6], &[], &[], 2), vec![5, 6]);
    }
}
