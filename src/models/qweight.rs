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
//! them ([`QWeight::dequantize`]), so XLA can fuse the dequantization into
//! the op that reads the weight; embedding lookups gather the quantized rows
//! first and dequantize only those ([`QWeight::rows`]). The K-quant types
//! (`Q4_K`, `Q5_K`, `Q6_K`) are dequantized to f32 on the host at load time.
//!
//! Weights are bound by name through the crate's
//! [`VarBuilder`]: [`DeviceWeights::declare`] gives the program's
//! parameters as a tree keyed by the GGUF names (`blk.3.attn_q.weight` is
//! the path `blk/3/attn_q/weight`; a float tensor is a leaf there, a
//! block-quantized one a map of its parts `d`, `m`, `qs`), and
//! [`QWeight::load`] reads one tensor from a `VarBuilder` as a typed
//! quantized weight, checking its parts' specs:
//!
//! ```ignore
//! let vb = VarBuilder::new(&params);
//! let wq = QWeight::load(&vb.pp("blk").pp(3).pp("attn_q"), "weight", &[576, 576])?;
//! let q = wq.linear(&x)?;
//! ```

use std::collections::BTreeMap;

use crate::builder::{Builder, DotDims, Path, Tree, Value, VarBuilder};
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
    let spec = |d: DType, dims: Vec<usize>| ArraySpec::new(d, dims);
    let (ty, parts) = match t.ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => (t.ty, block_parts(t.ty, &t.shape)),
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

/// The parts of a `Q4_0`/`Q4_1`/`Q8_0` tensor of logical `shape` (see the
/// module documentation); empty for other types.
/// The device parts of a block-quantized (`Q4_0`, `Q4_1`, `Q8_0`) tensor of
/// logical `shape`, in upload order; empty for other types.
pub(crate) fn block_parts(ty: GgmlType, shape: &[usize]) -> Vec<(&'static str, ArraySpec)> {
    let cols = *shape.last().unwrap_or(&1);
    let rows = shape.iter().product::<usize>() / cols.max(1);
    let nb = cols / 32;
    let spec = |d: DType, dims: Vec<usize>| ArraySpec::new(d, dims);
    match ty {
        GgmlType::Q4_0 => vec![
            ("d", spec(DType::F16, vec![rows, nb])),
            ("qs", spec(DType::U8, vec![rows, nb, 16])),
        ],
        GgmlType::Q4_1 => vec![
            ("d", spec(DType::F16, vec![rows, nb])),
            ("m", spec(DType::F16, vec![rows, nb])),
            ("qs", spec(DType::U8, vec![rows, nb, 16])),
        ],
        GgmlType::Q8_0 => vec![
            ("d", spec(DType::F16, vec![rows, nb])),
            ("qs", spec(DType::I8, vec![rows, nb, 32])),
        ],
        _ => vec![],
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
    /// `TENSOR/PART`), in buffer order, and returns them as a tree keyed by
    /// the tensors' GGUF names (`blk.0.attn_q.weight` at the path
    /// `blk/0/attn_q/weight`): a float tensor is a leaf, a block-quantized
    /// one a map of its parts. Bind it with [`VarBuilder::new`] and read
    /// each tensor with [`QWeight::load`].
    ///
    /// Errors: from [`Builder::parameter`] or [`Tree::from_paths`].
    pub fn declare(&self, b: &Builder) -> Result<Tree<Value>> {
        let mut leaves = Vec::with_capacity(self.buffers.len());
        for (name, l) in &self.layouts {
            let single = l.parts.len() == 1;
            for (part, spec) in &l.parts {
                let path = if single {
                    Path::parse(name)
                } else {
                    Path::parse(name).join(part)
                };
                leaves.push((path, b.parameter(spec.clone(), &format!("{name}/{part}"))?));
            }
        }
        Tree::from_paths(leaves)
    }
}

/// One GGUF tensor as a program reads it, bound by name from a
/// [`VarBuilder`]: a float array, or the parts of a block-quantized one
/// (`Q4_0`, `Q4_1`, `Q8_0`), kept quantized until an op needs its values.
#[derive(Debug, Clone)]
pub struct QWeight {
    ty: GgmlType,
    shape: Vec<usize>,
    parts: Vec<Value>,
}

impl QWeight {
    /// The tensor `name` under `vb`, of logical `shape` (outermost first,
    /// GGUF's `[out, in]` for a linear weight): a leaf there is a float
    /// weight (f32, f16 or bf16); a node with parts `d`, (`m`,) `qs` is a
    /// block-quantized one, its type told by the parts present and the
    /// dtype of `qs` (`u8` with `m`: `Q4_1`, without: `Q4_0`; `i8`: `Q8_0`).
    ///
    /// Errors: [`Error::UnknownPath`] naming the tensor's full path when
    /// there is nothing there (or a part is missing, naming the part);
    /// [`Error::SpecMismatch`] naming the tensor or part with both specs
    /// when it is of another shape or dtype.
    pub fn load(vb: &VarBuilder, name: &str, shape: &[usize]) -> Result<QWeight> {
        let path = vb.path().join(name);
        if let Ok(v) = vb.get(name) {
            let ty = match v.dtype() {
                DType::F32 => Some(GgmlType::F32),
                DType::F16 => Some(GgmlType::F16),
                DType::BF16 => Some(GgmlType::BF16),
                _ => None,
            };
            return match ty {
                Some(ty) if v.dims() == shape => Ok(QWeight {
                    ty,
                    shape: shape.to_vec(),
                    parts: vec![v],
                }),
                _ => Err(Error::SpecMismatch {
                    path,
                    expected: ArraySpec::new(DType::F32, shape.to_vec()),
                    found: v.spec().clone(),
                }),
            };
        }
        let q = vb.pp(name);
        let qs = q.get("qs").map_err(|_| Error::UnknownPath { path })?;
        let ty = match (qs.dtype(), q.contains("m")) {
            (DType::I8, _) => GgmlType::Q8_0,
            (_, true) => GgmlType::Q4_1,
            _ => GgmlType::Q4_0,
        };
        let parts = block_parts(ty, shape)
            .into_iter()
            .map(|(part, spec)| q.get_checked(part, &spec.dims, spec.dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(QWeight {
            ty,
            shape: shape.to_vec(),
            parts,
        })
    }

    /// The tensor's type on the device.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor dequantized to f32 inside the program, of its logical
    /// shape.
    ///
    /// Errors: op errors (none for a weight from [`QWeight::load`]).
    pub fn dequantize(&self) -> Result<Value> {
        dequant(self.ty, &self.parts)?.reshape(&self.shape)
    }

    /// Rows `ids` (`i32[n]`) of a 2-D weight, gathered while still
    /// quantized and then dequantized: `f32[n, cols]`.
    ///
    /// Errors: [`Error::OutOfRange`] when the weight is not 2-D.
    pub fn rows(&self, ids: &Value) -> Result<Value> {
        if self.shape.len() != 2 {
            return Err(Error::OutOfRange {
                function: "QWeight::rows",
                what: "rank of the weight".into(),
                value: self.shape.len().to_string(),
                expected: "2".into(),
            });
        }
        let picked = self
            .parts
            .iter()
            .map(|p| p.take(ids, 0))
            .collect::<Result<Vec<_>>>()?;
        dequant(self.ty, &picked)?.reshape(&[ids.element_count(), self.shape[1]])
    }

    /// `x @ w.T` for this weight stored `[out, in]`, `x: f32[.., in]`.
    ///
    /// With one row in `x` (a decode step) and a block-quantized weight, the
    /// product is computed block by block straight from the quantized
    /// parts: `sum_b d[o,b] * sum_j q[o,b,j] x[b,j] (+ m[o,b] * sum_j
    /// x[b,j])`, an elementwise product and two reductions that XLA fuses
    /// into loops reading the 4- or 8-bit data, so the f32 weight is never
    /// written to memory; when the builder may use the CPU kernels
    /// ([`Builder::set_cpu_kernels`]) it is a call of the kernel instead
    /// ([`super::qmatvec::quantized_matvec`]), which streams the quantized
    /// data at memory speed. Otherwise the weight is dequantized and
    /// multiplied with `dot_general`.
    ///
    /// Errors: op errors for an `x` whose last axis is not the weight's
    /// `in`, or a weight that is not 2-D.
    pub fn linear(&self, x: &Value) -> Result<Value> {
        let rows = x.element_count() / x.dims().last().copied().unwrap_or(1).max(1);
        let blocky = matches!(self.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0);
        if rows == 1 && blocky && self.shape.len() == 2 {
            let mut out_dims = x.dims().to_vec();
            if let Some(last) = out_dims.last_mut() {
                *last = self.shape[0];
            }
            let y = if x.builder().cpu_kernels() {
                super::qmatvec::quantized_matvec(
                    self.ty,
                    self.shape[0],
                    self.shape[1],
                    x,
                    &self.parts,
                )?
            } else {
                block_matvec(self.ty, &self.shape, &self.parts, x)?
            };
            return y.reshape(&out_dims);
        }
        let w = dequant_after(self.ty, &self.parts, Some(x))?.reshape(&self.shape)?;
        x.dot_general(
            &w,
            &DotDims {
                lhs_batch: vec![],
                rhs_batch: vec![],
                lhs_contract: vec![x.rank() - 1],
                rhs_contract: vec![1],
            },
        )
    }
}

/// A bias-free linear layer over the GGUF weight `vb/weight`
/// (`[out, in]`, `in` the last axis of `x`): `x @ weight.T`.
///
/// Errors: as [`QWeight::load`] and [`QWeight::linear`].
pub fn linear(vb: &VarBuilder, x: &Value, out: usize) -> Result<Value> {
    let inp = x.dims().last().copied().unwrap_or(1);
    QWeight::load(vb, "weight", &[out, inp])?.linear(x)
}

/// One row `x` (`in` elements) times a block-quantized `[out, in]` weight,
/// without dequantizing the weight to memory: `f32[out]`.
fn block_matvec(ty: GgmlType, shape: &[usize], p: &[Value], x: &Value) -> Result<Value> {
    let nb = shape[1] / 32;
    let xb = x.reshape(&[1, nb, 32])?;
    let scale = |d: &Value| d.convert(DType::F32);
    if ty == GgmlType::Q8_0 {
        let t = (p[1].convert(DType::F32)? * xb)?.sum(&[2], false)?;
        return (t * scale(&p[0])?)?.sum(&[1], false);
    }
    let qs = if ty == GgmlType::Q4_1 { &p[2] } else { &p[1] };
    let halves = xb.reshape(&[1, nb, 2, 16])?;
    let x_lo = halves.slice_axis(2, 0, 1)?.reshape(&[1, nb, 16])?;
    let x_hi = halves.slice_axis(2, 1, 2)?.reshape(&[1, nb, 16])?;
    let lo = qs.and(&qs.scalar_like(15.0)?)?.convert(DType::F32)?;
    let hi = qs
        .shift_right_logical(&qs.scalar_like(4.0)?)?
        .convert(DType::F32)?;
    let t = ((lo * x_lo)? + (hi * x_hi)?)?.sum(&[2], false)?;
    let xsum = xb.sum(&[2], false)?;
    let y = match ty {
        GgmlType::Q4_1 => ((t * scale(&p[0])?)? + (scale(&p[1])? * xsum)?)?,
        _ => ((t - (xsum * 8.0)?)? * scale(&p[0])?)?,
    };
    y.sum(&[1], false)
}

/// The f32 values of one tensor's parts (shape `[rows, nb, 32]` for the
/// block types, the tensor's own shape otherwise).
fn dequant(ty: GgmlType, p: &[Value]) -> Result<Value> {
    dequant_after(ty, p, None)
}

/// [`dequant`], made to depend on `after` (a value of the program) when
/// given: a zero computed from its first element is added to the block
/// scales. XLA orders work only by data dependencies, and the
/// dequantization of a weight depends on nothing but parameters, so without
/// this the scheduler may run every layer's dequantization at the start of
/// the program and keep them all alive at once (408 MiB of temporaries for
/// SmolLM2's 128-token prefill); tied to the op's input, each one runs when
/// its layer does, and at most a layer's worth is alive.
fn dequant_after(ty: GgmlType, p: &[Value], after: Option<&Value>) -> Result<Value> {
    let zero = match after {
        Some(x) => Some(
            (x.reshape(&[x.element_count()])?
                .slice_axis(0, 0, 1)?
                .reshape(&[])?
                .convert(DType::F32)?
                * 0.0)?,
        ),
        None => None,
    };
    let unpack = |qs: &Value| -> Result<Value> {
        let lo = qs.and(&qs.scalar_like(15.0)?)?;
        let hi = qs.shift_right_logical(&qs.scalar_like(4.0)?)?;
        Value::concatenate(&[lo, hi], qs.rank() - 1)?.convert(DType::F32)
    };
    let scale = |d: &Value| -> Result<Value> {
        let d32 = d.convert(DType::F32)?;
        let d32 = match &zero {
            Some(z) => (d32 + z)?,
            None => d32,
        };
        d32.expand_dims(d.rank())
    };
    match ty {
        GgmlType::Q4_0 => (unpack(&p[1])? - 8.0)? * scale(&p[0])?,
        GgmlType::Q4_1 => (unpack(&p[2])? * scale(&p[0])?)? + scale(&p[1])?,
        GgmlType::Q8_0 => p[1].convert(DType::F32)? * scale(&p[0])?,
        _ => p[0].convert(DType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with one Q4_1 weight `[4, 64]` and one f32 norm `[64]`, as
    /// [`DeviceWeights::declare`] lays them out.
    fn params(b: &Builder) -> Tree<Value> {
        let mut leaves = vec![(
            Path::parse("blk.0.norm.weight"),
            b.parameter(ArraySpec::of::<f32>([64]), "n").unwrap(),
        )];
        for (part, spec) in block_parts(GgmlType::Q4_1, &[4, 64]) {
            let v = b.parameter(spec, part).unwrap();
            leaves.push((Path::parse("blk.0.attn_q.weight").join(part), v));
        }
        Tree::from_paths(leaves).unwrap()
    }

    #[test]
    fn load_tells_the_type_and_checks_specs() {
        let b = Builder::new();
        let p = params(&b);
        let vb = VarBuilder::new(&p);
        let l = vb.pp("blk").pp(0);
        let w = QWeight::load(&l.pp("attn_q"), "weight", &[4, 64]).unwrap();
        assert_eq!((w.ty(), w.shape()), (GgmlType::Q4_1, &[4usize, 64][..]));
        let x = b.parameter(ArraySpec::of::<f32>([3, 64]), "x").unwrap();
        assert_eq!(w.linear(&x).unwrap().dims(), &[3, 4]);
        let x1 = b.parameter(ArraySpec::of::<f32>([1, 64]), "x1").unwrap();
        assert_eq!(w.linear(&x1).unwrap().dims(), &[1, 4]);
        let n = QWeight::load(&l.pp("norm"), "weight", &[64]).unwrap();
        assert_eq!(n.ty(), GgmlType::F32);
        assert!(matches!(
            n.rows(&b.parameter(ArraySpec::of::<i32>([2]), "ids").unwrap()),
            Err(Error::OutOfRange { .. })
        ));
        match QWeight::load(&l.pp("attn_q"), "weight", &[4, 96]) {
            Err(Error::SpecMismatch { path, found, .. }) => {
                assert_eq!(path.to_string(), "blk/0/attn_q/weight/d");
                assert_eq!(found.dims, vec![4, 2]);
            }
            other => panic!("expected SpecMismatch, got {other:?}"),
        }
        match QWeight::load(&l.pp("norm"), "weight", &[32]) {
            Err(Error::SpecMismatch { path, .. }) => {
                assert_eq!(path.to_string(), "blk/0/norm/weight")
            }
            other => panic!("expected SpecMismatch, got {other:?}"),
        }
        match QWeight::load(&vb.pp("blk").pp(1).pp("attn_q"), "weight", &[4, 64]) {
            Err(Error::UnknownPath { path }) => {
                assert_eq!(path.to_string(), "blk/1/attn_q/weight")
            }
            other => panic!("expected UnknownPath, got {other:?}"),
        }
    }
}
