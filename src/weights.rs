//! Weights I/O: memory-mapped safetensors files, loading checkpoint
//! tensors into trees of device buffers by path, and saving trees back.
//!
//! Loading is all-or-nothing: every wanted tensor is found and its shape
//! and dtype checked before the first byte is uploaded, and the result is a
//! fresh tree, so a failed load leaves the caller's weights as they were.
//!
//! ```
//! use xlayer::builder::Tree;
//! use xlayer::weights::{load_tree, save_tree, NameMap, SafetensorsFile};
//! use xlayer::{ArraySpec, Client};
//! let client = Client::cpu()?;
//! let dir = std::env::temp_dir().join(format!("xlayer-doc-weights-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("w.safetensors");
//! let params = Tree::map([("Dense_0", Tree::map([
//!     ("kernel", Tree::leaf(client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[2, 2])?)),
//!     ("bias", Tree::leaf(client.buffer_from_host(&[0.5f32, -0.5], &[2])?)),
//! ]))]);
//! save_tree(&path, &params, &NameMap::new())?;
//! let file = SafetensorsFile::open(&path)?;
//! assert_eq!(file.names(), vec!["Dense_0/bias", "Dense_0/kernel"]);
//! let wanted = params.map_leaves(&mut |b| b.spec().clone());
//! let (back, report) = load_tree(&client, &file, &wanted, &NameMap::new())?;
//! assert_eq!(back.get("Dense_0/kernel").unwrap().to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
//! assert!(report.unused.is_empty());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::builder::Tree;
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::io::{dtype_from_st, write_host_safetensors};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::mmap::MappedFile;

#[derive(Debug, Clone)]
struct Entry {
    spec: ArraySpec,
    start: usize,
    end: usize,
}

/// A safetensors file mapped into memory, its header parsed and checked.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: MappedFile,
    entries: BTreeMap<String, Entry>,
}

fn bad_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SafetensorsFile {
    /// Maps and validates `path` (header, offsets, sizes, dtypes).
    ///
    /// Errors: [`Error::Io`] if unreadable; [`Error::Safetensors`] naming the
    /// file (and the tensor, when one is at fault) if it is corrupt or holds a
    /// dtype xlayer does not support.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let map = MappedFile::open(path)?;
        let bytes = map.bytes();
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad_file(path, format!("not a valid safetensors file: {e}")))?;
        let mut entries = BTreeMap::new();
        for (name, view) in st.iter() {
            let dtype = dtype_from_st(view.dtype()).ok_or_else(|| {
                bad_file(
                    path,
                    format!(
                        "tensor `{name}` has dtype {:?}, which xlayer does not support",
                        view.dtype()
                    ),
                )
            })?;
            let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            let end = start + view.data().len();
            entries.insert(
                name.to_string(),
                Entry {
                    spec: ArraySpec::new(dtype, view.shape().to_vec()),
                    start,
                    end,
                },
            );
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A tensor's dtype and shape.
    pub fn spec(&self, name: &str) -> Option<&ArraySpec> {
        self.entries.get(name).map(|e| &e.spec)
    }

    /// A tensor's raw little-endian bytes, borrowed from the map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .get(name)
            .map(|e| &self.map.bytes()[e.start..e.end])
    }

    /// Total size of the tensor data in bytes.
    pub fn data_size(&self) -> usize {
        self.entries.values().map(|e| e.end - e.start).sum()
    }
}

/// How tree paths (`Dense_0/kernel`) map to checkpoint tensor names.
///
/// A path is turned into a key by replacing `/` with the separator,
/// applying the renames in order (substring replacements), and prefixing.
///
/// ```
/// use xlayer::weights::NameMap;
/// let m = NameMap::new().separator(".").prefix("encoder").rename("kernel", "weight");
/// assert_eq!(m.key_for("layer_0/dense/kernel"), "encoder.layer_0.dense.weight");
/// ```
#[derive(Debug, Clone)]
pub struct NameMap {
    prefix: String,
    separator: String,
    renames: Vec<(String, String)>,
    transposed: Vec<String>,
    convert_dtypes: bool,
    allow_unused: bool,
}

impl Default for NameMap {
    fn default() -> Self {
        NameMap {
            prefix: String::new(),
            separator: "/".into(),
            renames: Vec::new(),
            transposed: Vec::new(),
            convert_dtypes: false,
            allow_unused: false,
        }
    }
}

impl NameMap {
    /// Paths used as they are (`/`-separated), no prefix, strict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scopes every key under `prefix` (joined with the separator).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// The separator between path parts in keys (`.` for Flax and PyTorch checkpoints).
    pub fn separator(mut self, sep: &str) -> Self {
        self.separator = sep.to_string();
        self
    }

    /// Replaces `from` by `to` in keys (after the separator is applied).
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        self.renames.push((from.to_string(), to.to_string()));
        self
    }

    /// Tensors whose path ends with `suffix` are stored transposed in the
    /// checkpoint (2-D only), e.g. PyTorch's `(out, in)` Linear weights for
    /// Flax's `(in, out)` kernels.
    pub fn transposed(mut self, suffix: &str) -> Self {
        self.transposed.push(suffix.to_string());
        self
    }

    /// Allows f16/bf16/f32/f64 tensors to load into another float dtype.
    pub fn convert_dtypes(mut self, yes: bool) -> Self {
        self.convert_dtypes = yes;
        self
    }

    /// Accepts checkpoint tensors that no path asks for (they are listed in
    /// the report); by default they are an error.
    pub fn allow_unused(mut self, yes: bool) -> Self {
        self.allow_unused = yes;
        self
    }

    /// The checkpoint key of a tree path.
    pub fn key_for(&self, path: &str) -> String {
        let mut key = path.replace('/', &self.separator);
        for (from, to) in &self.renames {
            key = key.replace(from.as_str(), to);
        }
        if self.prefix.is_empty() {
            key
        } else {
            format!("{}{}{key}", self.prefix, self.separator)
        }
    }

    fn is_transposed(&self, path: &str) -> bool {
        self.transposed.iter().any(|s| path.ends_with(s.as_str()))
    }
}

/// What a load did: which key fed which path, and what was left over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// `(tree path, checkpoint key)` for every loaded tensor.
    pub loaded: Vec<(String, String)>,
    /// Checkpoint tensors no path asked for.
    pub unused: Vec<String>,
}

/// Converts little-endian float bytes from one float dtype to another.
fn convert_floats(bytes: &[u8], from: DType, to: DType) -> Vec<u8> {
    let size = from.size_in_bytes();
    let read = |c: &[u8]| -> f64 {
        match from {
            DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f64(),
            DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            _ => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        }
    };
    let mut out = Vec::with_capacity(bytes.len() / size * to.size_in_bytes());
    for c in bytes.chunks_exact(size) {
        let v = read(c);
        match to {
            DType::F16 => out.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Transposes a row-major 2-D array of `rows x cols` elements of `size` bytes.
fn transpose_2d(bytes: &[u8], rows: usize, cols: usize, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    for r in 0..rows {
        for c in 0..cols {
            let src = (r * cols + c) * size;
            let dst = (c * rows + r) * size;
            out[dst..dst + size].copy_from_slice(&bytes[src..src + size]);
        }
    }
    out
}

/// Loads, for every leaf of `wanted` (its path and expected spec), the
/// checkpoint tensor `map.key_for(path)` from `file`, uploads them to the
/// client's default device and returns them in the same tree.
///
/// Errors (all before anything is uploaded), each naming the tensor and the
/// file: [`Error::Weights`] for a missing tensor, a shape or dtype mismatch,
/// or (unless [`NameMap::allow_unused`]) tensors no path asked for.
pub fn load_tree(
    client: &Client,
    file: &SafetensorsFile,
    wanted: &Tree<ArraySpec>,
    map: &NameMap,
) -> Result<(Tree<Buffer>, LoadReport)> {
    let err = |key: &str, reason: String| Error::Weights {
        file: file.path().to_path_buf(),
        tensor: key.to_string(),
        reason,
    };
    let mut report = LoadReport::default();
    let mut staged: Vec<(Cow<'_, [u8]>, ArraySpec)> = Vec::new();
    for (path, spec) in wanted.entries() {
        let key = map.key_for(&path);
        let (have, bytes) = match (file.spec(&key), file.bytes(&key)) {
            (Some(s), Some(b)) => (s, b),
            _ => {
                return Err(err(
                    &key,
                    format!("missing (wanted for `{path}` as {spec})"),
                ))
            }
        };
        let transposed = map.is_transposed(&path);
        let stored_dims: Vec<usize> = if transposed {
            spec.dims.iter().rev().copied().collect()
        } else {
            spec.dims.clone()
        };
        if transposed && spec.rank() != 2 {
            return Err(err(
                &key,
                format!("only 2-D tensors can be transposed, `{path}` is {spec}"),
            ));
        }
        if have.dims != stored_dims {
            let how = if transposed {
                " (stored transposed)"
            } else {
                ""
            };
            return Err(err(
                &key,
                format!(
                    "shape {:?}{how} does not match `{path}`: expected {spec}",
                    have.dims
                ),
            ));
        }
        let dtype_ok = have.dtype == spec.dtype
            || (map.convert_dtypes && have.dtype.is_float() && spec.dtype.is_float());
        if !dtype_ok {
            return Err(err(
                &key,
                format!(
                    "dtype {} does not match `{path}`: expected {spec}",
                    have.dtype
                ),
            ));
        }
        let mut data: Cow<'_, [u8]> = Cow::Borrowed(bytes);
        if have.dtype != spec.dtype {
            data = Cow::Owned(convert_floats(&data, have.dtype, spec.dtype));
        }
        if transposed {
            data = Cow::Owned(transpose_2d(
                &data,
                stored_dims[0],
                stored_dims[1],
                spec.dtype.size_in_bytes(),
            ));
        }
        staged.push((data, spec.clone()));
        report.loaded.push((path, key));
    }
    let used: BTreeSet<&str> = report.loaded.iter().map(|(_, k)| k.as_str()).collect();
    report.unused = file
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .map(String::from)
        .collect();
    if !map.allow_unused && !report.unused.is_empty() {
        let list = report.unused.join(", ");
        return Err(err(
            &report.unused[0],
            format!("unexpected tensor(s) that no weight asks for: {list}"),
        ));
    }
    let device = client.default_device();
    let buffers = staged
        .iter()
        .map(|(bytes, spec)| client.buffer_from_bytes(bytes, spec, device))
        .collect::<Result<Vec<_>>>()?;
    Ok((wanted.structure().unflatten(buffers)?, report))
}

/// Saves a tree of buffers to a safetensors file, keys from `map`
/// (written to a temporary file and renamed: never half-written).
pub fn save_tree<B: AsRef<Buffer>>(
    path: impl AsRef<Path>,
    tree: &Tree<B>,
    map: &NameMap,
) -> Result<()> {
    let path = path.as_ref();
    let mut host = Vec::new();
    for (p, b) in tree.entries() {
        let b = b.as_ref();
        host.push((map.key_for(&p), b.spec().clone(), b.to_bytes()?));
    }
    write_host_safetensors(path, &host)
}
