//! GGUF tensors on the device, still quantized, and their dequantization
//! inside the compiled program.
//!
//! A quantized tensor of shape `[rows, cols]` is uploaded as its blocks'
//! fields, split into plain arrays (the same bytes as in the file,
//! regrouped; nothing is widened):
//!
//! | type | parts |
//! |---|---|
//! | `Q4_0` | `d: f16[rows, nb]`, `qs: u8[rows, nb, 16]` |
//! | `Q4_1` | `d: f16[rows, nb]`, `m: f16[rows, nb]`, `qs: u8[rows, nb, 16]` |
//! | `Q8_0` | `d: f16[rows, nb]`, `qs: i8[rows, nb, 32]` |
//! | `F32`, `F16`, `BF16` | the array itself |
//!
//! (`nb = cols / 32`). The program unpacks the nibbles, converts and scales
//! them ([`Weights::get`]), so XLA can fuse the dequantization into the op
//! that reads the weight; embedding lookups gather the quantized rows first
//! and dequantize only those ([`Weights::rows`]). The K-quant types
//! (`Q4_K`, `Q5_K`, `Q6_K`) are dequantized to f32 on the host at load time.
//!
//! Weights are bound by name: [`Weights::pp`] scopes a path
//! (`w.pp("blk").pp(3).get("attn_q.weight")` reads `blk.3.attn_q.weight`).

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::builder::{Builder, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;

/// How one tensor is held on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantLayout {
    /// The file's type ([`GgmlType::F32`] for K-quants dequantized on load).
    pub ty: GgmlType,
    /// The logical shape, outermost first.
    pub shape: Vec<usize>,
    /// `(part name, spec)` of each uploaded array, in upload order.
    pub parts: Vec<(&'static str, ArraySpec)>,
}

/// The device layout of `t` (see the module documentation).
pub fn layout(t: &TensorInfo) -> QuantLayout {
    let cols = *t.shape.last().unwrap_or(&1);
    let rows = t.elems() / cols.max(1);
    let nb = cols / 32;
    let spec = |d: DType, dims: Vec<usize>| ArraySpec::new(d, dims);
    let (ty, parts) = match t.ty {
        GgmlType::Q4_0 => (
            t.ty,
            vec![
                ("d", spec(DType::F16, vec![rows, nb])),
                ("qs", spec(DType::U8, vec![rows, nb, 16])),
            ],
        ),
        GgmlType::Q4_1 => (
            t.ty,
            vec![
                ("d", spec(DType::F16, vec![rows, nb])),
                ("m", spec(DType::F16, vec![rows, nb])),
                ("qs", spec(DType::U8, vec![rows, nb, 16])),
            ],
        ),
        GgmlType::Q8_0 => (
            t.ty,
            vec![
                ("d", spec(DType::F16, vec![rows, nb])),
                ("qs", spec(DType::I8, vec![rows, nb, 32])),
            ],
        ),
        GgmlType::F16 => (t.ty, vec![("w", spec(DType::F16, t.shape.clone()))]),
        GgmlType::BF16 => (t.ty, vec![("w", spec(DType::BF16, t.shape.clone()))]),
        GgmlType::F32 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => (
            GgmlType::F32,
            vec![("w", spec(DType::F32, t.shape.clone()))],
        ),
    };
    QuantLayout {
        ty,
        shape: t.shape.clone(),
        parts,
    }
}

/// The bytes of each part of `t`, regrouped from its blocks.
fn split_blocks(file: &GgufFile, t: &TensorInfo) -> Result<Vec<Vec<u8>>> {
    let bytes = file.bytes(&t.name)?;
    let fields: &[(usize, usize)] = match t.ty {
        GgmlType::Q4_0 => &[(0, 2), (2, 18)],
        GgmlType::Q4_1 => &[(0, 2), (2, 4), (4, 20)],
        GgmlType::Q8_0 => &[(0, 2), (2, 34)],
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return Ok(vec![bytes.to_vec()]),
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            let x = file.dequantize(&t.name)?;
            return Ok(vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()]);
        }
    };
    let bb = t.ty.block_bytes();
    let nblocks = bytes.len() / bb;
    let mut parts: Vec<Vec<u8>> = fields
        .iter()
        .map(|(a, b)| Vec::with_capacity(nblocks * (b - a)))
        .collect();
    for block in bytes.chunks_exact(bb) {
        for (p, &(a, b)) in parts.iter_mut().zip(fields) {
            p.extend_from_slice(&block[a..b]);
        }
    }
    Ok(parts)
}

/// Every tensor of a GGUF file on the device, in its quantized layout,
/// with the names and layouts a program needs to bind them.
#[derive(Debug)]
pub struct DeviceWeights {
    layouts: BTreeMap<String, QuantLayout>,
    buffers: Vec<Buffer>,
    bytes: usize,
}

impl DeviceWeights {
    /// Uploads every tensor of `file` (in name order), releasing each
    /// tensor's pages once it is on the device.
    ///
    /// Errors: [`Error::Weights`] naming the tensor, or a PJRT error.
    pub fn upload(client: &Client, file: &GgufFile) -> Result<DeviceWeights> {
        let mut infos: Vec<&TensorInfo> = file.tensors().iter().collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let mut layouts = BTreeMap::new();
        let mut buffers = Vec::new();
        let mut bytes = 0;
        let device = client.default_device();
        for t in infos {
            let l = layout(t);
            let parts = split_blocks(file, t)?;
            for ((_, spec), data) in l.parts.iter().zip(&parts) {
                bytes += data.len();
                buffers.push(client.buffer_from_bytes(data, spec, device)?);
            }
            file.release(t);
            layouts.insert(t.name.clone(), l);
        }
        Ok(DeviceWeights {
            layouts,
            buffers,
            bytes,
        })
    }

    /// The buffers, in the order [`DeviceWeights::declare`] binds them.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Bytes on the device.
    pub fn device_bytes(&self) -> usize {
        self.bytes
    }

    /// The layout of each tensor, by name.
    pub fn layouts(&self) -> &BTreeMap<String, QuantLayout> {
        &self.layouts
    }

    /// Declares one program parameter per uploaded array (named
    /// `TENSOR/PART`), in buffer order, and returns the name-keyed accessor.
    ///
    /// Errors: from [`Builder::parameter`].
    pub fn declare(&self, b: &Builder) -> Result<Weights> {
        let mut map = BTreeMap::new();
        for (name, l) in &self.layouts {
            let mut parts = Vec::with_capacity(l.parts.len());
            for (part, spec) in &l.parts {
                parts.push(b.parameter(spec.clone(), &format!("{name}/{part}"))?);
            }
            map.insert(name.clone(), (l.clone(), parts));
        }
        Ok(Weights {
            map: Rc::new(map),
            prefix: String::new(),
        })
    }
}

type Bound = BTreeMap<String, (QuantLayout, Vec<Value>)>;

/// Traced weights bound by name, with a path prefix (a minimal name-keyed
/// accessor in the style of a `VarBuilder`).
#[derive(Debug, Clone)]
pub struct Weights {
    map: Rc<Bound>,
    prefix: String,
}

fn missing(name: &str) -> Error {
    Error::Weights {
        file: "<program>".into(),
        tensor: name.to_string(),
        reason: "no such tensor is bound".into(),
        more: vec![],
    }
}

impl Weights {
    /// The same weights under `prefix.segment`.
    pub fn pp(&self, segment: impl std::fmt::Display) -> Weights {
        Weights {
            map: self.map.clone(),
            prefix: self.path(&segment.to_string()),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn entry(&self, name: &str) -> Result<(&QuantLayout, &[Value], String)> {
        let full = self.path(name);
        let (l, v) = self.map.get(&full).ok_or_else(|| missing(&full))?;
        Ok((l, v, full))
    }

    /// The layout of tensor `name` (under the prefix).
    ///
    /// Errors: [`Error::Weights`] when no such tensor is bound.
    pub fn layout(&self, name: &str) -> Result<&QuantLayout> {
        Ok(self.entry(name)?.0)
    }

    /// Tensor `name` dequantized to f32 inside the program.
    ///
    /// Errors: [`Error::Weights`] when no such tensor is bound.
    pub fn get(&self, name: &str) -> Result<Value> {
        let (l, parts, _) = self.entry(name)?;
        let x = dequant(l.ty, parts)?;
        x.reshape(&l.shape)
    }

    /// Rows `ids` (`i32[n]`) of 2-D tensor `name`, gathered while still
    /// quantized and then dequantized: `f32[n, cols]`.
    ///
    /// Errors: [`Error::Weights`] when no such tensor is bound or it is not
    /// 2-D.
    pub fn rows(&self, name: &str, ids: &Value) -> Result<Value> {
        let (l, parts, full) = self.entry(name)?;
        if l.shape.len() != 2 {
            return Err(Error::Weights {
                file: "<program>".into(),
                tensor: full,
                reason: format!("rows of a {}-D tensor", l.shape.len()),
                more: vec![],
            });
        }
        let picked = parts
            .iter()
            .map(|p| p.take(ids, 0))
            .collect::<Result<Vec<_>>>()?;
        dequant(l.ty, &picked)?.reshape(&[ids.element_count(), l.shape[1]])
    }
}

/// The f32 values of one tensor's parts (shape `[rows, nb, 32]` for the
/// block types, the tensor's own shape otherwise).
fn dequant(ty: GgmlType, p: &[Value]) -> Result<Value> {
    let unpack = |qs: &Value| -> Result<Value> {
        let lo = qs.and(&qs.scalar_like(15.0)?)?;
        let hi = qs.shift_right_logical(&qs.scalar_like(4.0)?)?;
        Value::concatenate(&[lo, hi], qs.rank() - 1)?.convert(DType::F32)
    };
    let scale = |d: &Value| d.convert(DType::F32)?.expand_dims(d.rank());
    match ty {
        GgmlType::Q4_0 => (unpack(&p[1])? - 8.0)? * scale(&p[0])?,
        GgmlType::Q4_1 => (unpack(&p[2])? * scale(&p[0])?)? + scale(&p[1])?,
        GgmlType::Q8_0 => p[1].convert(DType::F32)? * scale(&p[0])?,
        _ => p[0].convert(DType::F32),
    }
}
