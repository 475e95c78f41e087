//! A minimal safetensors checkpoint loader for the models of this folder:
//! memory-mapped, header validated against the file size, every wanted
//! tensor checked (presence, dtype, shape) before anything is uploaded,
//! unused tensors reported.
//!
//! (The general weight loader, `crate::weights`, is being written on
//! another branch; this one does only what the models here need.)

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::mapped::MappedFile;

/// How a checkpoint tensor becomes a model parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's path in the model, e.g. `layer_0/attention/query/kernel`.
    pub path: String,
    /// The tensor's name in the checkpoint.
    pub checkpoint_name: String,
    /// The parameter's shape (after the transpose, if any).
    pub dims: Vec<usize>,
    /// A PyTorch `Linear` weight `(out, in)` stored as a kernel `(in, out)`.
    pub transpose: bool,
}

/// One tensor of the file: dtype, shape, byte range of its data.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Option<DType>,
    dtype_name: String,
    dims: Vec<usize>,
    range: Range<usize>,
}

/// An opened, validated safetensors file.
#[derive(Debug)]
pub struct Checkpoint {
    file: MappedFile,
    entries: BTreeMap<String, Entry>,
}

/// What [`Checkpoint::load`] uploaded and what it left alone.
#[derive(Debug)]
pub struct Loaded {
    /// One buffer per requested parameter, in order.
    pub buffers: Vec<Buffer>,
    /// Checkpoint tensors no parameter used.
    pub unused: Vec<String>,
    /// Bytes uploaded.
    pub bytes: usize,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Maps `path` and validates its header: JSON, known fields, every
    /// tensor's byte range inside the file and consistent with its shape.
    ///
    /// Errors: [`Error::Io`] (cannot open), [`Error::Safetensors`] naming the
    /// file and what is wrong (truncated file, bad header, bad offsets).
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let file = MappedFile::open(path.as_ref())?;
        let path = file.path().to_path_buf();
        let bytes = file.bytes();
        if bytes.len() < 8 {
            return Err(bad(
                &path,
                format!(
                    "file is {} bytes: too short for a header (truncated?)",
                    bytes.len()
                ),
            ));
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        let header_end = 8u64.checked_add(n).filter(|&e| e <= bytes.len() as u64);
        let Some(header_end) = header_end.map(|e| e as usize) else {
            return Err(bad(
                &path,
                format!(
                    "header claims {n} bytes but the file has {} (truncated, or not safetensors)",
                    bytes.len()
                ),
            ));
        };
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end])
            .map_err(|e| bad(&path, format!("header is not valid JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| bad(&path, "header is not a JSON object"))?;
        let data_len = bytes.len() - header_end;
        let mut entries = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let field = |k: &str| {
                v.get(k)
                    .ok_or_else(|| bad(&path, format!("tensor `{name}` has no `{k}`")))
            };
            let dtype_name = field("dtype")?
                .as_str()
                .ok_or_else(|| bad(&path, format!("tensor `{name}`: dtype is not a string")))?
                .to_string();
            let dims: Vec<usize> = field("shape")?
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad(&path, format!("tensor `{name}`: bad shape")))?;
            let offs: Vec<usize> = field("data_offsets")?
                .as_array()
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .filter(|o: &Vec<usize>| o.len() == 2 && o[0] <= o[1])
                .ok_or_else(|| bad(&path, format!("tensor `{name}`: bad data_offsets")))?;
            if offs[1] > data_len {
                return Err(bad(
                    &path,
                    format!(
                        "tensor `{name}` ends at byte {} of the data, but the file holds {data_len} bytes of data (truncated?)",
                        offs[1]
                    ),
                ));
            }
            let dtype = DType::ALL
                .into_iter()
                .find(|t| t.safetensors_name() == dtype_name);
            if let Some(dt) = dtype {
                let want = dims.iter().product::<usize>() * dt.size_in_bytes();
                if want != offs[1] - offs[0] {
                    return Err(bad(
                        &path,
                        format!(
                            "tensor `{name}` ({dtype_name} {dims:?}) needs {want} bytes, its offsets span {}",
                            offs[1] - offs[0]
                        ),
                    ));
                }
            }
            entries.insert(
                name.clone(),
                Entry {
                    dtype,
                    dtype_name,
                    dims,
                    range: header_end + offs[0]..header_end + offs[1],
                },
            );
        }
        Ok(Checkpoint { file, entries })
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> usize {
        self.file.len()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Checks every parameter against the file (all problems at once), then
    /// uploads them to `client`'s default device, straight from the mapping
    /// (transposed kernels go through one small host buffer each).
    ///
    /// Errors: [`Error::CheckpointMismatch`] listing every missing tensor and every
    /// dtype or shape mismatch; nothing is uploaded then.
    pub fn load(&self, client: &Client, params: &[Param]) -> Result<Loaded> {
        let mut problems = Vec::new();
        for p in params {
            let Some(e) = self.entries.get(&p.checkpoint_name) else {
                problems.push(format!("`{}` (for {}): missing", p.checkpoint_name, p.path));
                continue;
            };
            if e.dtype != Some(DType::F32) {
                problems.push(format!(
                    "`{}` (for {}): dtype {}, expected F32",
                    p.checkpoint_name, p.path, e.dtype_name
                ));
            }
            let stored: Vec<usize> = if p.transpose && p.dims.len() == 2 {
                vec![p.dims[1], p.dims[0]]
            } else {
                p.dims.clone()
            };
            if e.dims != stored {
                problems.push(format!(
                    "`{}` (for {}): shape {:?}, expected {:?}",
                    p.checkpoint_name, p.path, e.dims, stored
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::CheckpointMismatch {
                path: self.file.path().to_path_buf(),
                problems,
            });
        }
        let device = client.default_device();
        let mut buffers = Vec::with_capacity(params.len());
        let mut total = 0;
        for p in params {
            let e = &self.entries[&p.checkpoint_name];
            let data = &self.file.bytes()[e.range.clone()];
            let spec = ArraySpec::new(DType::F32, p.dims.clone());
            let buf = if p.transpose {
                let (rows, cols) = (e.dims[0], e.dims[1]);
                let mut t = vec![0f32; rows * cols];
                for (i, chunk) in data.chunks_exact(4).enumerate() {
                    let (r, c) = (i / cols, i % cols);
                    t[c * rows + r] = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
                client.buffer_from_host(&t, &p.dims)?
            } else {
                client.buffer_from_bytes(data, &spec, device)?
            };
            self.file.release(e.range.clone());
            total += data.len();
            buffers.push(buf);
        }
        let used: std::collections::BTreeSet<&str> =
            params.iter().map(|p| p.checkpoint_name.as_str()).collect();
        let unused = self
            .entries
            .keys()
            .filter(|k| !used.contains(k.as_str()))
            .cloned()
            .collect();
        Ok(Loaded {
            buffers,
            unused,
            bytes: total,
        })
    }
}
