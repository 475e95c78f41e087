//! The GGUF byte layout: a bounds-checked little-endian cursor, metadata
//! values, and the problems a file can have.

use super::MetaValue;

/// What is wrong with a GGUF file (carried by [`crate::Error::Gguf`], which
/// adds the file and, when one is at fault, the tensor).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufProblem {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (it starts with {found:02x?}, not \"GGUF\")")]
    Magic {
        /// The first four bytes.
        found: Vec<u8>,
    },
    /// A format version xlayer does not read.
    #[error("GGUF version {version} is not supported (2 and 3 are)")]
    Version {
        /// The file's version.
        version: u32,
    },
    /// The file ends inside a structure.
    #[error("truncated: {what} needs bytes {start}..{end}, the file has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's size.
        len: u64,
    },
    /// A count or size does not fit the file (or the address space).
    #[error("{what} of {count} cannot fit in the {len}-byte file")]
    Count {
        /// What was counted.
        what: &'static str,
        /// The count read.
        count: u64,
        /// The file's size.
        len: u64,
    },
    /// A metadata value of a type GGUF does not define.
    #[error("metadata `{key}`: unknown value type {type_id}")]
    ValueType {
        /// The key.
        key: String,
        /// The type read.
        type_id: u32,
    },
    /// A string that is not UTF-8.
    #[error("{what} at byte {at} is not UTF-8")]
    Utf8 {
        /// What the string is.
        what: &'static str,
        /// Where it starts.
        at: u64,
    },
    /// A metadata key or tensor name appears twice.
    #[error("duplicate {what} `{name}`")]
    Duplicate {
        /// `"metadata key"` or `"tensor"`.
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// `general.alignment` is zero, not a power of two, or not a `u32`.
    #[error("general.alignment {value} is not a power of two")]
    Alignment {
        /// The value (as written).
        value: String,
    },
    /// A metadata key the caller needs is missing.
    #[error("metadata `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata value has another type than the caller needs.
    #[error("metadata `{key}` is {found}, expected {expected}")]
    KeyType {
        /// The key.
        key: String,
        /// The type wanted.
        expected: &'static str,
        /// The value's type.
        found: &'static str,
    },
    /// A tensor type id GGML does not define.
    #[error("unknown tensor type id {type_id}")]
    UnknownType {
        /// The id read.
        type_id: u32,
    },
    /// A GGML tensor type xlayer does not read.
    #[error("tensor type {name} (id {type_id}) is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K are)")]
    UnsupportedType {
        /// GGML's name for it.
        name: &'static str,
        /// Its id.
        type_id: u32,
    },
    /// A tensor with no dimension, more than four, or a zero-sized one.
    #[error("dimensions {dims:?}: 1 to 4 non-zero dimensions are supported")]
    Dims {
        /// The dimensions as stored (innermost first).
        dims: Vec<u64>,
    },
    /// A row is not a whole number of quantization blocks.
    #[error("rows of {row} elements are not whole {ty} blocks of {block}")]
    PartialBlock {
        /// Innermost dimension.
        row: u64,
        /// The type.
        ty: &'static str,
        /// Elements per block.
        block: usize,
    },
    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        /// Offset within the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor's data reaches past the end of the file.
    #[error("data at bytes {start}..{end} reaches past the end of the {len}-byte file")]
    OutOfBounds {
        /// First byte (in the file).
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The file's size.
        len: u64,
    },
    /// Two tensors' data overlap.
    #[error("data at bytes {start}..{end} overlaps tensor `{other}`")]
    Overlap {
        /// First byte (in the file).
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The other tensor.
        other: String,
    },
    /// The file describes a model xlayer does not run.
    #[error("architecture `{found}` is not supported ({expected})")]
    Architecture {
        /// `general.architecture`.
        found: String,
        /// What is.
        expected: &'static str,
    },
    /// A tensor's data has another size than its type and shape need.
    #[error("the tensor's data size does not match its type and shape")]
    SizeMismatch,
    /// The attention hyper-parameters do not fit together.
    #[error("{heads} query heads, {kv_heads} key/value heads, width {hidden} and head size {head_dim} do not make a llama attention (heads must divide the width, key/value heads the heads, and the head size must be even)")]
    Attention {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
        /// Model width.
        hidden: usize,
        /// Head size.
        head_dim: usize,
    },
}

/// A bounds-checked little-endian reader over the file's bytes.
pub(super) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

type R<T> = std::result::Result<T, GgufProblem>;

impl<'a> Cursor<'a> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn take(&mut self, n: u64, what: &'static str) -> R<&'a [u8]> {
        let start = self.pos as u64;
        let end = start.checked_add(n).ok_or(GgufProblem::Count {
            what,
            count: n,
            len: self.len(),
        })?;
        if end > self.len() {
            return Err(GgufProblem::Truncated {
                what,
                start,
                end,
                len: self.len(),
            });
        }
        let s = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &'static str) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    pub fn u32(&mut self, what: &'static str) -> R<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> R<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against
    /// what is left of the file (so no allocation follows a corrupt count).
    pub fn count(&mut self, what: &'static str, min_size: u64) -> R<usize> {
        let count = self.u64(what)?;
        let left = self.len() - self.pos as u64;
        match count.checked_mul(min_size) {
            Some(n) if n <= left => Ok(count as usize),
            _ => Err(GgufProblem::Count {
                what,
                count,
                len: self.len(),
            }),
        }
    }

    pub fn string(&mut self, what: &'static str) -> R<String> {
        let len = self.u64(what)?;
        let at = self.pos as u64;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufProblem::Utf8 { what, at })
    }

    /// One metadata value of type `ty` (for `key`, in messages).
    pub fn value(&mut self, ty: u32, key: &str) -> R<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>("metadata value")?[0]),
            1 => MetaValue::I8(self.arr::<1>("metadata value")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr("metadata value")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr("metadata value")?)),
            4 => MetaValue::U32(self.u32("metadata value")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr("metadata value")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr("metadata value")?)),
            7 => MetaValue::Bool(self.arr::<1>("metadata value")?[0] != 0),
            8 => MetaValue::String(self.string("metadata string")?),
            9 => {
                let inner = self.u32("metadata array type")?;
                if inner > 12 {
                    return Err(GgufProblem::ValueType {
                        key: key.to_string(),
                        type_id: inner,
                    });
                }
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    9 => 12,
                    _ => 8,
                };
                let n = self.count("metadata array length", min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, key)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64("metadata value")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr("metadata value")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr("metadata value")?)),
            other => {
                return Err(GgufProblem::ValueType {
                    key: key.to_string(),
                    type_id: other,
                })
            }
        })
    }
}
