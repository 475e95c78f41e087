//! Weights I/O: memory-mapped safetensors files (the crate's one
//! safetensors reader and writer, [`SafetensorsFile`]), loading checkpoint
//! tensors into trees of device buffers by path, and saving trees back.
//!
//! Loading is all-or-nothing: every wanted tensor is found and its shape
//! and dtype checked before the first byte is uploaded (a failed check lists
//! every problem in one [`Error::Weights`]), and the result is a fresh tree,
//! so a failed load leaves the caller's weights as they were.
//!
//! Loading streams: tensors are uploaded a few at a time straight from the
//! memory map (converted or transposed ones through a tensor-sized host
//! buffer each), and each tensor's pages are released once it is on the
//! device, so peak memory stays near the size of the file.
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
//! assert_eq!(back.get("Dense_0/kernel")?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
//! assert!(report.unused.is_empty());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use half::{bf16, f16};

use crate::builder::{Path as TreePath, Tree};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::host_array::NamedArray;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::mapped::MappedFile;
use crate::pjrt::upload::HostBytes;

#[derive(Debug, Clone)]
struct Entry {
    spec: ArraySpec,
    start: usize,
    end: usize,
}

/// A safetensors file mapped into memory, its header parsed and checked
/// (by the `safetensors` crate: offsets, sizes, and that the tensor data
/// exactly fills the file; by xlayer: no tensor name listed twice).
///
/// # A file must not shrink while it is open
///
/// The tensor data is read straight from the memory map. If another
/// process truncates the file while this handle is alive, reading a page
/// past the new end raises `SIGBUS` and the process dies: no Rust code can
/// turn that into an error. Checkpoints are expected to be immutable once
/// written (xlayer itself only ever writes new files by rename, see
/// [`save_tree`]); replace a checkpoint by writing a new file and renaming
/// it over the old one, never by rewriting it in place. A file that is
/// *already* truncated when it is opened is refused by
/// [`SafetensorsFile::open`] with [`Error::Truncated`], naming the first
/// tensor whose data is missing.
#[derive(Debug)]
pub struct SafetensorsFile {
    map: MappedFile,
    entries: BTreeMap<String, Entry>,
}

/// The xlayer dtype of tensor `name` stored as `d` in `path`.
///
/// Errors: [`Error::SafetensorsDtype`] naming the file, the tensor and the
/// dtype, when xlayer does not hold `d`.
fn stored_dtype(path: &Path, name: &str, d: safetensors::Dtype) -> Result<DType> {
    DType::from_safetensors(d).map_err(|_| Error::SafetensorsDtype {
        dtype: d.to_string(),
        file: Some(path.to_path_buf()),
        tensor: Some(name.to_string()),
    })
}

impl SafetensorsFile {
    /// Maps and validates `path` (header, offsets, sizes, dtypes).
    ///
    /// Errors: [`Error::IsADirectory`] for a directory; [`Error::Io`] if
    /// unreadable; [`Error::Truncated`] naming the file and the first tensor
    /// whose data lies past its end; [`Error::DuplicateTensor`] naming a
    /// tensor the header lists twice; [`Error::SafetensorsDtype`] naming the
    /// file, the tensor and the dtype for a dtype xlayer does not hold;
    /// [`Error::Safetensors`] naming the file (and the tensor, when one is at
    /// fault) if it is otherwise corrupt.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        crate::st_header::not_a_directory("safetensors file", path)?;
        let map = MappedFile::open(path)?;
        let bytes = map.bytes();
        crate::st_header::check(path, bytes)?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| crate::st_header::refusal(path, &e, bytes))?;
        let mut entries = BTreeMap::new();
        for (name, view) in st.iter() {
            let dtype = stored_dtype(path, name, view.dtype())?;
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
        Ok(SafetensorsFile { map, entries })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> usize {
        self.map.len()
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

    /// Tensor names in file order (the order of their data in the file).
    pub fn names_in_file_order(&self) -> Vec<&str> {
        let mut names: Vec<(&str, usize)> = self
            .entries
            .iter()
            .map(|(n, e)| (n.as_str(), e.start))
            .collect();
        names.sort_by_key(|&(_, start)| start);
        names.into_iter().map(|(n, _)| n).collect()
    }

    /// Writes named host arrays to `path`:
    /// the crate's one safetensors writer. The file is written beside the
    /// target and renamed into place, so it is never left half-written.
    ///
    /// Errors: [`Error::Safetensors`] naming the file and the tensor whose
    /// byte count does not match its spec, or the file when it cannot be
    /// written; [`Error::Io`] when it cannot be moved into place.
    pub fn write(path: &Path, tensors: &[NamedArray]) -> Result<()> {
        let st_err = |reason: String| Error::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let mut views = BTreeMap::new();
        for NamedArray { name, array } in tensors {
            let (spec, bytes) = (&array.spec, &array.bytes);
            let view = safetensors::tensor::TensorView::new(
                spec.dtype.to_safetensors(),
                spec.dims.clone(),
                bytes,
            )
            .map_err(|e| st_err(format!("tensor `{name}` ({spec}): {e}")))?;
            views.insert(name.clone(), view);
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
        let written = safetensors::serialize_to_file(views, None, &tmp)
            .map_err(|e| st_err(format!("cannot write: {e}")))
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(|source| Error::Io {
                    what: "cannot move into place",
                    path: path.to_path_buf(),
                    source,
                })
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Drops a tensor's pages from the resident set (read back from the
    /// file if it is used again).
    fn release(&self, name: &str) {
        if let Some(e) = self.entries.get(name) {
            self.map.release(e.start..e.end);
        }
    }
}

/// How tree paths (`Dense_0/kernel`) map to checkpoint tensor names.
///
/// A path's `/`-separated segments are renamed (each rename replaces whole
/// segments, in the order the renames were added), joined with the
/// separator, and prefixed.
///
/// ```
/// use xlayer::weights::NameMap;
/// let m = NameMap::new().separator(".").prefix("encoder").rename("kernel", "weight");
/// assert_eq!(m.key_for("layer_0/dense/kernel"), "encoder.layer_0.dense.weight");
/// // Whole segments only: `Dense_1` does not rename `Dense_10`.
/// let m = NameMap::new().rename("Dense_1", "out.proj");
/// assert_eq!(m.key_for("Dense_1/kernel"), "out/proj/kernel");
/// assert_eq!(m.key_for("Dense_10/kernel"), "Dense_10/kernel");
/// ```
#[derive(Debug, Clone)]
pub struct NameMap {
    prefix: String,
    separator: String,
    renames: Vec<(TreePath, TreePath)>,
    transposed: Vec<TreePath>,
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

    /// Renames the segments `from` (one segment, or several written with
    /// `/` or `.`: `attention.out`) to those of `to`, wherever they appear
    /// as whole segments of a path; renames apply in the order they were
    /// added, each to the result of the previous ones.
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        self.renames
            .push((TreePath::parse(from), TreePath::parse(to)));
        self
    }

    /// Tensors whose path ends with the segments of `suffix` (whole
    /// segments: `kernel` matches `dense/kernel`, not `dense/my_kernel`) are
    /// stored transposed in the checkpoint (2-D only), e.g. PyTorch's
    /// `(out, in)` Linear weights for Flax's `(in, out)` kernels.
    pub fn transposed(mut self, suffix: &str) -> Self {
        self.transposed.push(TreePath::parse(suffix));
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

    /// The checkpoint key of a tree path (`/`-separated, as
    /// [`Tree::paths`] writes it).
    pub fn key_for(&self, path: &str) -> String {
        let mut p = tree_path(path);
        for (from, to) in &self.renames {
            p = p.replace(from, to);
        }
        let key = p.joined(&self.separator);
        if self.prefix.is_empty() {
            key
        } else {
            format!("{}{}{key}", self.prefix, self.separator)
        }
    }

    /// Whether the tensor of a tree path is stored transposed (see
    /// [`NameMap::transposed`]).
    pub fn is_transposed(&self, path: &str) -> bool {
        let p = tree_path(path);
        self.transposed.iter().any(|s| p.ends_with(s))
    }
}

/// The segments of a `/`-joined tree path (a map key may hold a `.`).
fn tree_path(path: &str) -> TreePath {
    TreePath::from_segments(path.split('/').filter(|s| !s.is_empty()))
}

/// What a load did: which key fed which path, and what was left over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// `(tree path, checkpoint key)` for every loaded tensor.
    pub loaded: Vec<(String, String)>,
    /// Checkpoint tensors no path asked for.
    pub unused: Vec<String>,
}

/// A float read from little-endian bytes of dtype `from` (a float dtype).
fn read_float(c: &[u8], from: DType) -> f64 {
    match from {
        DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f64(),
        DType::BF16 => bf16::from_le_bytes([c[0], c[1]]).to_f64(),
        DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
        _ => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
    }
}

/// Writes `v` as little-endian bytes of dtype `to` (a float dtype).
fn write_float(out: &mut [u8], v: f64, to: DType) {
    match to {
        DType::F16 => out.copy_from_slice(&f16::from_f64(v).to_le_bytes()),
        DType::BF16 => out.copy_from_slice(&bf16::from_f64(v).to_le_bytes()),
        DType::F32 => out.copy_from_slice(&(v as f32).to_le_bytes()),
        _ => out.copy_from_slice(&v.to_le_bytes()),
    }
}

/// A checked tensor, ready to upload.
struct Planned<'a> {
    key: String,
    spec: &'a ArraySpec,
    stored: DType,
    /// `(rows, cols)` as stored, for a tensor stored transposed.
    transpose: Option<(usize, usize)>,
}

/// The bytes to upload for one tensor: borrowed from the map when stored in
/// the wanted dtype (transposed ones read with strides by the plugin), else
/// converted (and transposed) in one pass into one tensor-sized buffer.
fn stage<'a>(bytes: &'a [u8], p: &Planned<'_>) -> HostBytes<'a> {
    let (from, to) = (p.stored, p.spec.dtype);
    if from == to {
        // Straight from the map; a transposed one read with strides by the
        // plugin (no host copy).
        return match p.transpose {
            None => HostBytes::row_major(bytes),
            Some(_) => HostBytes::transposed(bytes),
        };
    }
    let (is, os) = (from.size_in_bytes(), to.size_in_bytes());
    let mut out = vec![0u8; bytes.len() / is * os];
    for (i, src) in bytes.chunks_exact(is).enumerate() {
        let j = match p.transpose {
            Some((rows, cols)) => (i % cols) * rows + i / cols,
            None => i,
        };
        let dst = &mut out[j * os..(j + 1) * os];
        if from == to {
            dst.copy_from_slice(src);
        } else {
            write_float(dst, read_float(src, from), to);
        }
    }
    HostBytes::row_major(out)
}

/// Checks one wanted tensor against the file: every problem it has, in one
/// reason, or its upload plan.
fn check<'a>(
    file: &SafetensorsFile,
    map: &NameMap,
    path: &str,
    key: String,
    spec: &'a ArraySpec,
) -> std::result::Result<Planned<'a>, (String, String)> {
    let Some(have) = file.spec(&key) else {
        let reason = format!("missing (wanted for `{path}` as {spec})");
        return Err((key, reason));
    };
    let transposed = map.is_transposed(path);
    if transposed && spec.rank() != 2 {
        let reason = format!("only 2-D tensors can be transposed, `{path}` is {spec}");
        return Err((key, reason));
    }
    let stored_dims: Vec<usize> = if transposed {
        spec.dims.iter().rev().copied().collect()
    } else {
        spec.dims.clone()
    };
    let mut problems = Vec::new();
    if have.dims != stored_dims {
        let how = if transposed {
            " (stored transposed)"
        } else {
            ""
        };
        problems.push(format!(
            "shape {:?}{how} does not match `{path}`: expected {spec}",
            have.dims
        ));
    }
    let dtype_ok = have.dtype == spec.dtype
        || (map.convert_dtypes && have.dtype.is_float() && spec.dtype.is_float());
    if !dtype_ok {
        problems.push(format!(
            "dtype {} does not match `{path}`: expected {spec}",
            have.dtype
        ));
    }
    if problems.is_empty() && have.dtype == DType::Bool {
        let bytes = file.bytes(&key).unwrap_or_default();
        if let Some(at) = bytes.iter().position(|&b| b > 1) {
            problems.push(format!(
                "bool data holds byte {} at element {at}; bool tensors hold only 0 and 1",
                bytes[at]
            ));
        }
    }
    if !problems.is_empty() {
        return Err((key, problems.join("; ")));
    }
    Ok(Planned {
        key,
        spec,
        stored: have.dtype,
        transpose: transposed.then(|| (stored_dims[0], stored_dims[1])),
    })
}

/// How many tensors [`load_tree`] has on their way to the device at once:
/// the plugin copies them side by side, and at most this many staged
/// (converted or transposed) host copies are held.
const UPLOADS_IN_FLIGHT: usize = 8;

/// Loads, for every leaf of `wanted` (its path and expected spec), the
/// checkpoint tensor `map.key_for(path)` from `file`, uploads them to the
/// client's default device and returns them in the same tree.
///
/// Every tensor is checked before anything is uploaded; then they are
/// uploaded a few at a time ([`Client::upload_streamed`]), each tensor's
/// pages of the map released once it is on the device (see the module
/// documentation).
///
/// Errors (all before anything is uploaded): one [`Error::Weights`] naming
/// the file and listing every problem, each naming its tensor: missing
/// tensors, shape or dtype mismatches, and (unless
/// [`NameMap::allow_unused`]) tensors no path asked for, bool tensors
/// holding bytes other than 0 and 1.
pub fn load_tree(
    client: &Client,
    file: &SafetensorsFile,
    wanted: &Tree<ArraySpec>,
    map: &NameMap,
) -> Result<(Tree<Buffer>, LoadReport)> {
    let mut report = LoadReport::default();
    let mut plan = Vec::new();
    let mut problems = Vec::new();
    for (path, spec) in wanted.entries() {
        let key = map.key_for(&path);
        match check(file, map, &path, key.clone(), spec) {
            Ok(p) => plan.push(p),
            Err(problem) => problems.push(problem),
        }
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
        problems.push((
            report.unused[0].clone(),
            format!("unexpected tensor(s) that no weight asks for: {list}"),
        ));
    }
    let mut problems = problems.into_iter();
    if let Some((tensor, reason)) = problems.next() {
        return Err(Error::Weights {
            file: file.path().to_path_buf(),
            tensor,
            reason,
            more: problems.collect(),
        });
    }
    let specs: Vec<&ArraySpec> = plan.iter().map(|p| p.spec).collect();
    let buffers = client.upload_streamed(
        &specs,
        client.default_device(),
        UPLOADS_IN_FLIGHT,
        |i| {
            Ok(stage(
                file.bytes(&plan[i].key).unwrap_or_default(),
                &plan[i],
            ))
        },
        |i| file.release(&plan[i].key),
    )?;
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
        host.push(NamedArray::new(
            map.key_for(&p),
            b.spec().clone(),
            b.to_bytes()?,
        ));
    }
    SafetensorsFile::write(path, &host)
}

#[cfg(test)]
mod name_map_tests {
    use super::NameMap;

    /// Regression: renames were substring replacements, so `Dense_1` also
    /// renamed `Dense_10`, and `kernel` anything ending in "kernel".
    #[test]
    fn renames_and_transposes_match_whole_segments() {
        let m = NameMap::new()
            .separator(".")
            .rename("Dense_1", "head")
            .rename("kernel", "weight")
            .transposed("kernel");
        assert_eq!(m.key_for("Dense_1/kernel"), "head.weight");
        assert_eq!(m.key_for("Dense_10/kernel"), "Dense_10.weight");
        assert_eq!(m.key_for("Dense_1/my_kernel"), "head.my_kernel");
        assert_eq!(m.key_for("kernels/bias"), "kernels.bias");
        assert!(m.is_transposed("Dense_10/kernel"));
        assert!(!m.is_transposed("Dense_0/my_kernel"));
        assert!(!m.is_transposed("kernel/bias"));
    }

    #[test]
    fn multi_segment_renames_apply_in_order() {
        let m = NameMap::new()
            .separator(".")
            .prefix("bert")
            .rename("attention/out", "attention.output.dense")
            .rename("dense", "linear")
            .transposed("out/kernel");
        assert_eq!(
            m.key_for("layer/0/attention/out/kernel"),
            "bert.layer.0.attention.output.linear.kernel"
        );
        // `attention_out` is one segment, not `attention` then `out`.
        assert_eq!(
            m.key_for("attention_out/kernel"),
            "bert.attention_out.kernel"
        );
        assert!(m.is_transposed("layer/0/attention/out/kernel"));
        assert!(!m.is_transposed("layer/0/attention/layout/kernel"));
    }
}
