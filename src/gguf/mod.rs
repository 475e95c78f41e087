//! GGUF files (llama.cpp's model format): header, metadata and tensor
//! infos read over a memory map and validated all-or-nothing, tensor data
//! handed out as byte slices, and host dequantization of the quantized
//! types ([`quant`]).
//!
//! [`GgufFile::open`] checks everything before returning: the magic and
//! version, every count and string against the file's size (checked
//! arithmetic throughout, so a corrupt count is an error, never a huge
//! allocation), every tensor's type, dimensions and block structure, that
//! every tensor's data is aligned, inside the file and overlaps no other.
//! A file that passes can be read without further checks.
//!
//! Written for xlayer rather than taken from a crate: the GGUF crates on
//! crates.io parse headers but do not validate offsets, sizes and overlaps
//! or dequantize, and their errors would not name the file and tensor the
//! way [`Error::Gguf`] does.
//!
//! ```no_run
//! use xlayer::gguf::GgufFile;
//! let f = GgufFile::open("model.gguf")?;
//! println!("{} tensors, architecture {}", f.tensors().len(), f.get_str("general.architecture")?);
//! let t = f.tensor("output_norm.weight")?;
//! let values: Vec<f32> = f.dequantize(&t.name)?;
//! # Ok::<(), xlayer::Error>(())
//! ```

mod parse;
pub mod quant;
#[cfg(feature = "tokenizers")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokenizers")))]
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use parse::GgufProblem;
pub use quant::GgmlType;

use crate::error::{Error, Result};
use crate::pjrt::mapped::MappedFile;
use parse::Cursor;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// `string`.
    String(String),
    /// `array` (of one element type).
    Array(Vec<MetaValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl MetaValue {
    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "a string",
            MetaValue::Array(_) => "an array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(x) => Some(x.into()),
            MetaValue::U16(x) => Some(x.into()),
            MetaValue::U32(x) => Some(x.into()),
            MetaValue::U64(x) => Some(x),
            MetaValue::I8(x) => u64::try_from(x).ok(),
            MetaValue::I16(x) => u64::try_from(x).ok(),
            MetaValue::I32(x) => u64::try_from(x).ok(),
            MetaValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(x) => Some(x.into()),
            MetaValue::F64(x) => Some(x),
            MetaValue::I8(x) => Some(x.into()),
            MetaValue::I16(x) => Some(x.into()),
            MetaValue::I32(x) => Some(x.into()),
            MetaValue::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    /// The string, if the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's description, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its shape, outermost first (the reverse of GGML's `ne`): a GGML
    /// matrix with `ne = [in, out]` is `[out, in]` here, rows contiguous.
    pub shape: Vec<usize>,
    /// Its element type.
    pub ty: GgmlType,
    /// Where its data starts in the file.
    pub start: usize,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated GGUF file, mapped into memory.
#[derive(Debug)]
pub struct GgufFile {
    map: MappedFile,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: usize,
}

fn gguf_err(path: &Path, tensor: Option<&str>, problem: GgufProblem) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_string),
        problem,
    }
}

impl GgufFile {
    /// Maps and validates `path` (see the module documentation).
    ///
    /// Errors: [`Error::Io`] when it cannot be read; [`Error::Gguf`] naming
    /// the file, the tensor when one is at fault, and the [`GgufProblem`].
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let map = MappedFile::open(path)?;
        let mut f = GgufFile {
            map,
            version: 0,
            metadata: BTreeMap::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
            alignment: 32,
        };
        f.parse()
            .map_err(|(t, p)| gguf_err(path, t.as_deref(), p))?;
        Ok(f)
    }

    fn parse(&mut self) -> std::result::Result<(), (Option<String>, GgufProblem)> {
        let bytes = self.map.bytes();
        let len = bytes.len() as u64;
        let mut c = Cursor { bytes, pos: 0 };
        let none = |p| (None, p);
        let magic = c.take(4, "magic").map_err(none)?;
        if magic != b"GGUF" {
            return Err(none(GgufProblem::Magic {
                found: magic.to_vec(),
            }));
        }
        self.version = c.u32("version").map_err(none)?;
        if !(2..=3).contains(&self.version) {
            return Err(none(GgufProblem::Version {
                version: self.version,
            }));
        }
        // Smallest tensor info: 8-byte name length, n_dims, one dim, type, offset.
        let n_tensors = c.count("tensor count", 28).map_err(none)?;
        // Smallest metadata entry: 8-byte key length, type, one byte.
        let n_kv = c.count("metadata count", 13).map_err(none)?;
        for _ in 0..n_kv {
            let key = c.string("metadata key").map_err(none)?;
            let ty = c.u32("metadata value type").map_err(none)?;
            let value = c.value(ty, &key).map_err(none)?;
            if self.metadata.insert(key.clone(), value).is_some() {
                return Err(none(GgufProblem::Duplicate {
                    what: "metadata key",
                    name: key,
                }));
            }
        }
        if let Some(a) = self.metadata.get("general.alignment") {
            match a {
                MetaValue::U32(x) if x.is_power_of_two() => self.alignment = *x as usize,
                other => {
                    return Err(none(GgufProblem::Alignment {
                        value: format!("{other:?}"),
                    }))
                }
            }
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name").map_err(none)?;
            let info = read_info(&mut c).map_err(|p| (Some(name.clone()), p))?;
            raw.push((name, info));
        }
        let align = self.alignment as u64;
        let data_start = (c.pos as u64).div_ceil(align) * align;
        let mut spans = Vec::with_capacity(raw.len());
        for (i, (name, (shape, ty, offset))) in raw.into_iter().enumerate() {
            let at = |p| (Some(name.clone()), p);
            if !offset.is_multiple_of(align) {
                return Err(at(GgufProblem::Misaligned {
                    offset,
                    alignment: align,
                }));
            }
            let elems: usize = shape.iter().product();
            let size = ty.bytes_for(elems).unwrap_or(usize::MAX) as u64;
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= len => spans.push((start, end, i)),
                _ => {
                    return Err(at(GgufProblem::OutOfBounds {
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    }))
                }
            }
            if self.by_name.insert(name.clone(), i).is_some() {
                return Err(at(GgufProblem::Duplicate {
                    what: "tensor",
                    name: name.clone(),
                }));
            }
            self.tensors.push(TensorInfo {
                name,
                shape,
                ty,
                start: spans[i].0 as usize,
                size: size as usize,
            });
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, prev_end, p), (start, end, i)) = (w[0], w[1]);
            if start < prev_end {
                return Err((
                    Some(self.tensors[i].name.clone()),
                    GgufProblem::Overlap {
                        start,
                        end,
                        other: self.tensors[p].name.clone(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> usize {
        self.map.len()
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn err(&self, tensor: Option<&str>, p: GgufProblem) -> Error {
        gguf_err(self.path(), tensor, p)
    }

    /// The metadata value of `key`.
    ///
    /// Errors: [`Error::Gguf`] with [`GgufProblem::MissingKey`].
    pub fn get(&self, key: &str) -> Result<&MetaValue> {
        self.metadata.get(key).ok_or_else(|| {
            self.err(
                None,
                GgufProblem::MissingKey {
                    key: key.to_string(),
                },
            )
        })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<T> {
        let v = self.get(key)?;
        f(v).ok_or_else(|| {
            self.err(
                None,
                GgufProblem::KeyType {
                    key: key.to_string(),
                    expected,
                    found: v.type_name(),
                },
            )
        })
    }

    /// The string value of `key`.
    ///
    /// Errors: [`Error::Gguf`] when missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// The non-negative integer value of `key` (any integer type).
    ///
    /// Errors: [`Error::Gguf`] when missing, not an integer, negative, or
    /// too large for `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.typed(key, "an unsigned integer", |v| {
            v.as_u64().and_then(|x| usize::try_from(x).ok())
        })
    }

    /// The numeric value of `key` as f64.
    ///
    /// Errors: [`Error::Gguf`] when missing or not a number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    /// The array value of `key`.
    ///
    /// Errors: [`Error::Gguf`] when missing or not an array.
    pub fn get_array(&self, key: &str) -> Result<&[MetaValue]> {
        self.typed(key, "an array", |v| match v {
            MetaValue::Array(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// The array of strings of `key`.
    ///
    /// Errors: [`Error::Gguf`] when missing or not an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of strings", |v| match v {
            MetaValue::Array(a) => a.iter().map(MetaValue::as_str).collect(),
            _ => None,
        })
    }

    /// The description of tensor `name`.
    ///
    /// Errors: [`Error::Weights`] naming the file and the missing tensor.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::Weights {
                file: self.path().to_path_buf(),
                tensor: name.to_string(),
                reason: "missing from the GGUF file".into(),
                more: vec![],
            })
    }

    /// The raw (still quantized) bytes of tensor `name`.
    ///
    /// Errors: as [`GgufFile::tensor`].
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        Ok(&self.map.bytes()[t.start..t.start + t.size])
    }

    /// Tensor `name` dequantized to f32 on the host, row-major in
    /// [`TensorInfo::shape`].
    ///
    /// Errors: as [`GgufFile::tensor`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let bytes = &self.map.bytes()[t.start..t.start + t.size];
        quant::dequantize(t.ty, bytes, t.elems())
            .ok_or_else(|| gguf_err(self.path(), Some(name), GgufProblem::SizeMismatch))
    }

    /// Drops the pages of tensor `name` from this process's resident set
    /// (after uploading it).
    pub fn release(&self, t: &TensorInfo) {
        self.map.release(t.start..t.start + t.size);
    }
}

/// Reads one tensor info after its name: dims, type, offset.
fn read_info(c: &mut Cursor<'_>) -> std::result::Result<(Vec<usize>, GgmlType, u64), GgufProblem> {
    let n_dims = c.u32("tensor rank")?;
    if n_dims == 0 || n_dims > 4 {
        return Err(GgufProblem::Dims {
            dims: vec![n_dims as u64],
        });
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        ne.push(c.u64("tensor dimension")?);
    }
    let type_id = c.u32("tensor type")?;
    let offset = c.u64("tensor offset")?;
    let ty = GgmlType::from_id(type_id).ok_or(match GgmlType::name_of(type_id) {
        Some(name) => GgufProblem::UnsupportedType { name, type_id },
        None => GgufProblem::UnknownType { type_id },
    })?;
    let mut elems = 1usize;
    let mut shape = Vec::with_capacity(ne.len());
    for &d in ne.iter().rev() {
        let du = usize::try_from(d).ok().filter(|&d| d > 0);
        match du.and_then(|d| elems.checked_mul(d).map(|e| (d, e))) {
            Some((d, e)) => {
                elems = e;
                shape.push(d);
            }
            None => return Err(GgufProblem::Dims { dims: ne }),
        }
    }
    if !ne[0].is_multiple_of(ty.block_elems() as u64) {
        return Err(GgufProblem::PartialBlock {
            row: ne[0],
            ty: ty.name(),
            block: ty.block_elems(),
        });
    }
    if ty.bytes_for(elems).is_none() {
        return Err(GgufProblem::Dims { dims: ne });
    }
    Ok((shape, ty, offset))
}
