//! Serialized `jax.export` artifacts: what
//! `jax.export.export(jax.jit(f))(*args).serialize()` writes.
//!
//! The artifact is a flatbuffer of JAX's schema
//! `jax/_src/export/serialization.fbs` (root table `Exported`). xlayer reads
//! it with a small bounds-checked reader (no generated code) and keeps what
//! it needs to run the program: the StableHLO module (a portable artifact,
//! MLIR bytecode), the input and output shapes and dtypes, the platforms,
//! the calling-convention version, and which inputs the module kept.
//!
//! [`JaxExport::program`] and [`crate::Client::compile`] refuse what xlayer
//! cannot honour, naming why: a platform list without the client's
//! platform (at compile), more than one platform
//! (the module then takes a platform-index argument), a calling convention
//! outside 9..=10 (those JAX 0.10 writes and reads), ordered effects (token
//! arguments), and symbolic (shape-polymorphic) or unsupported dtypes
//! (detected by [`JaxExport::parse`] already).
//!
//! Artifacts exported for several devices keep their mesh and the
//! `NamedSharding` of every input and output ([`ExportSharding`]); the
//! program then runs over that many devices as one SPMD program
//! ([`crate::sharding::ExportPlan`]).

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::program::{Program, Signature};

/// Calling-convention versions xlayer can run (those of JAX 0.10).
pub const CALLING_CONVENTIONS: std::ops::RangeInclusive<u16> = 9..=10;

/// The parts of a `jax.export` artifact xlayer uses.
#[derive(Debug, Clone, PartialEq)]
pub struct JaxExport {
    /// The exported function's name (`mlp`).
    pub function_name: String,
    /// The schema version written in the artifact (JAX writes 3 for
    /// compatibility, whatever its own version).
    pub serialization_version: u16,
    /// The calling convention of the module (9 or 10 for JAX 0.10).
    pub calling_convention_version: u16,
    /// Platforms the module was lowered for (`cpu`, `cuda`, `tpu`, ...).
    pub platforms: Vec<String>,
    /// Every input of the exported function, in order.
    pub inputs: Vec<ArraySpec>,
    /// Every output.
    pub outputs: Vec<ArraySpec>,
    /// Which inputs the module kept (unused ones are dropped from `@main`).
    pub kept_inputs: Vec<usize>,
    /// Names of the ordered effects (each adds token arguments).
    pub ordered_effects: Vec<String>,
    /// Devices the module was exported for.
    pub nr_devices: u32,
    /// The StableHLO module: a portable artifact (MLIR bytecode).
    pub mlir_module: Vec<u8>,
    /// The sharding of each input (`None`: unspecified).
    pub in_shardings: Vec<Option<ExportSharding>>,
    /// The sharding of each output (`None`: unspecified).
    pub out_shardings: Vec<Option<ExportSharding>>,
}

/// A `NamedSharding` recorded in an artifact: its (abstract) mesh and its
/// `PartitionSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSharding {
    /// The mesh's axis names.
    pub axis_names: Vec<String>,
    /// The mesh's axis sizes.
    pub axis_sizes: Vec<usize>,
    /// Per leading dimension, the mesh axes splitting it (empty: none).
    pub spec: Vec<Vec<String>>,
}

// Field ids of table `Exported` (declaration order in serialization.fbs).
const F_SERIALIZATION_VERSION: usize = 0;
const F_FUNCTION_NAME: usize = 1;
const F_IN_AVALS: usize = 3;
const F_OUT_AVALS: usize = 5;
const F_NR_DEVICES_SHORT: usize = 6;
const F_PLATFORMS: usize = 9;
const F_ORDERED_EFFECTS: usize = 10;
const F_MLIR_MODULE: usize = 13;
const F_CALLING_CONVENTION: usize = 14;
const F_KEPT_VAR_IDX: usize = 15;
const F_NR_DEVICES: usize = 18;
const F_UNIQUE_AVALS: usize = 19;
const F_IN_AVALS_IDXS: usize = 22;
const F_OUT_AVALS_IDXS: usize = 23;
const F_IN_SHARDINGS: usize = 7;
const F_OUT_SHARDINGS: usize = 8;
const F_UNIQUE_NAMED_SHARDINGS: usize = 21;
const F_IN_SHARDINGS_IDXS: usize = 24;
const F_OUT_SHARDINGS_IDXS: usize = 25;
// Table `Sharding`: kind, hlo_sharding_proto, named_sharding.
const S_HLO_PROTO: usize = 1;
const S_NAMED: usize = 2;
// Table `NamedSharding`: mesh, spec. `AbstractMesh`: axis_sizes, axis_names.
// `PartitionSpec`: partitions, reduced, unreduced. `PartitionSpecOneAxis`: axes.
const NS_MESH: usize = 0;
const NS_SPEC: usize = 1;
const M_AXIS_SIZES: usize = 0;
const M_AXIS_NAMES: usize = 1;
const PS_PARTITIONS: usize = 0;
const PS_REDUCED: usize = 1;
const PS_UNREDUCED: usize = 2;
const PSA_AXES: usize = 0;
// Table `AbstractValue`: kind, shape, dtype, memory_space.
const A_KIND: usize = 0;
const A_SHAPE: usize = 1;
const A_DTYPE: usize = 2;
// Table `Effect`: type_name.
const E_TYPE_NAME: usize = 0;

fn err(msg: impl Into<String>) -> Error {
    Error::Export(msg.into())
}

/// A bounds-checked view of a flatbuffer.
struct Fb<'a> {
    buf: &'a [u8],
}

#[derive(Clone, Copy)]
struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Fb<'a> {
    fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8]> {
        at.checked_add(n)
            .and_then(|end| self.buf.get(at..end))
            .ok_or_else(|| err(format!("truncated or corrupt flatbuffer (read of {n} bytes at offset {at}, file has {})", self.buf.len())))
    }
    fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.bytes(at, 1)?[0])
    }
    fn u16(&self, at: usize) -> Result<u16> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Result<u32> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Follows a `uoffset` stored at `at`.
    fn follow(&self, at: usize) -> Result<usize> {
        let off = self.u32(at)? as usize;
        at.checked_add(off)
            .filter(|&p| p < self.buf.len())
            .ok_or_else(|| err(format!("offset at {at} points outside the file")))
    }
    fn table(&self, pos: usize) -> Result<Table> {
        let soff = self.u32(pos)? as i32 as i64;
        let vtable = usize::try_from(pos as i64 - soff)
            .map_err(|_| err(format!("bad vtable offset of the table at {pos}")))?;
        let vtable_len = self.u16(vtable)? as usize;
        Ok(Table {
            pos,
            vtable,
            vtable_len,
        })
    }
    fn root(&self) -> Result<Table> {
        let pos = self.follow(0)?;
        self.table(pos)
    }
    /// Position of field `id`, or None when absent.
    fn field(&self, t: Table, id: usize) -> Result<Option<usize>> {
        let slot = 4 + 2 * id;
        if slot + 2 > t.vtable_len {
            return Ok(None);
        }
        let off = self.u16(t.vtable + slot)? as usize;
        Ok((off != 0).then_some(t.pos + off))
    }
    fn scalar_u16(&self, t: Table, id: usize) -> Result<Option<u16>> {
        self.field(t, id)?.map(|p| self.u16(p)).transpose()
    }
    fn scalar_u32(&self, t: Table, id: usize) -> Result<Option<u32>> {
        self.field(t, id)?.map(|p| self.u32(p)).transpose()
    }
    fn scalar_u8(&self, t: Table, id: usize) -> Result<Option<u8>> {
        self.field(t, id)?.map(|p| self.u8(p)).transpose()
    }
    /// A vector field: (position of the first element, length).
    fn vector(&self, t: Table, id: usize) -> Result<Option<(usize, usize)>> {
        let Some(p) = self.field(t, id)? else {
            return Ok(None);
        };
        let v = self.follow(p)?;
        let len = self.u32(v)? as usize;
        Ok(Some((v + 4, len)))
    }
    fn bytes_field(&self, t: Table, id: usize) -> Result<Option<&'a [u8]>> {
        match self.vector(t, id)? {
            None => Ok(None),
            Some((at, len)) => self.bytes(at, len).map(Some),
        }
    }
    fn string_at(&self, at: usize) -> Result<String> {
        let s = self.follow(at)?;
        let len = self.u32(s)? as usize;
        let b = self.bytes(s + 4, len)?;
        String::from_utf8(b.to_vec()).map_err(|_| err(format!("string at offset {s} is not UTF-8")))
    }
    fn string_field(&self, t: Table, id: usize) -> Result<Option<String>> {
        self.field(t, id)?.map(|p| self.string_at(p)).transpose()
    }
    fn strings(&self, t: Table, id: usize) -> Result<Vec<String>> {
        let Some((at, len)) = self.vector(t, id)? else {
            return Ok(Vec::new());
        };
        (0..len).map(|i| self.string_at(at + 4 * i)).collect()
    }
    fn tables(&self, t: Table, id: usize) -> Result<Vec<Table>> {
        let Some((at, len)) = self.vector(t, id)? else {
            return Ok(Vec::new());
        };
        (0..len)
            .map(|i| self.follow(at + 4 * i).and_then(|p| self.table(p)))
            .collect()
    }
    fn u16s(&self, t: Table, id: usize) -> Result<Option<Vec<u16>>> {
        let Some((at, len)) = self.vector(t, id)? else {
            return Ok(None);
        };
        (0..len)
            .map(|i| self.u16(at + 2 * i))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
    fn u32s(&self, t: Table, id: usize) -> Result<Option<Vec<u32>>> {
        let Some((at, len)) = self.vector(t, id)? else {
            return Ok(None);
        };
        (0..len)
            .map(|i| self.u32(at + 4 * i))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// JAX's `DType` enum of serialization.fbs, for the dtypes xlayer holds.
fn dtype_from_jax(code: u8) -> std::result::Result<DType, &'static str> {
    Ok(match code {
        0 => DType::Bool,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::I64,
        5 => DType::U8,
        6 => DType::U16,
        7 => DType::U32,
        8 => DType::U64,
        9 => DType::F16,
        10 => DType::F32,
        11 => DType::F64,
        14 => DType::BF16,
        12 => return Err("c64"),
        13 => return Err("c128"),
        15 => return Err("i4"),
        16 => return Err("ui4"),
        17..=21 | 23..=26 => return Err("a float8/float4 type"),
        22 => return Err("float0"),
        27..=29 => return Err("a PRNG key type"),
        _ => return Err("an unknown dtype"),
    })
}

fn read_aval(fb: &Fb<'_>, t: Table, what: &str) -> Result<ArraySpec> {
    if fb.scalar_u8(t, A_KIND)?.unwrap_or(0) != 0 {
        return Err(err(format!("{what} is not an array (abstract token)")));
    }
    let code = fb.scalar_u8(t, A_DTYPE)?.unwrap_or(0);
    let dtype = dtype_from_jax(code).map_err(|name| {
        err(format!(
            "{what} has dtype {name} (code {code}), which xlayer does not support"
        ))
    })?;
    let dims = fb
        .strings(t, A_SHAPE)?
        .into_iter()
        .map(|d| {
            d.trim().parse::<usize>().map_err(|_| {
                err(format!("{what} has the symbolic dimension `{d}` (shape polymorphism is not supported; export with concrete shapes)"))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ArraySpec::new(dtype, dims))
}

fn read_avals(
    fb: &Fb<'_>,
    root: Table,
    idxs_field: usize,
    legacy_field: usize,
    unique: &[Table],
    what: &str,
) -> Result<Vec<ArraySpec>> {
    match fb.u32s(root, idxs_field)? {
        Some(idxs) if !idxs.is_empty() => idxs
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let t = unique.get(k as usize).ok_or_else(|| {
                    err(format!(
                        "{what} {i} refers to abstract value {k}, but there are {}",
                        unique.len()
                    ))
                })?;
                read_aval(fb, *t, &format!("{what} {i}"))
            })
            .collect(),
        _ => fb
            .tables(root, legacy_field)?
            .into_iter()
            .enumerate()
            .map(|(i, t)| read_aval(fb, t, &format!("{what} {i}")))
            .collect(),
    }
}

/// A `NamedSharding` table of the artifact.
fn read_named_sharding(fb: &Fb<'_>, t: Table, what: &str) -> Result<ExportSharding> {
    let mesh = fb
        .field(t, NS_MESH)?
        .map(|p| fb.follow(p).and_then(|p| fb.table(p)))
        .transpose()?
        .ok_or_else(|| err(format!("the sharding of {what} has no mesh")))?;
    let axis_names = fb.strings(mesh, M_AXIS_NAMES)?;
    let axis_sizes: Vec<usize> = fb
        .u32s(mesh, M_AXIS_SIZES)?
        .unwrap_or_default()
        .into_iter()
        .map(|s| s as usize)
        .collect();
    if axis_names.len() != axis_sizes.len() {
        return Err(err(format!(
            "the mesh of {what} has {} axis names but {} sizes",
            axis_names.len(),
            axis_sizes.len()
        )));
    }
    let mut spec = Vec::new();
    if let Some(p) = fb.field(t, NS_SPEC)? {
        let ps = fb.table(fb.follow(p)?)?;
        for axis in [PS_REDUCED, PS_UNREDUCED] {
            if !fb.strings(ps, axis)?.is_empty() {
                return Err(err(format!(
                    "the sharding of {what} has reduced/unreduced axes, which xlayer does not support"
                )));
            }
        }
        for one in fb.tables(ps, PS_PARTITIONS)? {
            spec.push(fb.strings(one, PSA_AXES)?);
        }
    }
    Ok(ExportSharding {
        axis_names,
        axis_sizes,
        spec,
    })
}

/// The shardings of the inputs or outputs: through the unique-sharding
/// indices when present (0 = unspecified), else the per-value tables.
fn read_shardings(
    fb: &Fb<'_>,
    root: Table,
    idxs_field: usize,
    legacy_field: usize,
    count: usize,
    what: &str,
) -> Result<Vec<Option<ExportSharding>>> {
    let out = match fb.u32s(root, idxs_field)? {
        Some(idxs) if !idxs.is_empty() => {
            let unique = fb.tables(root, F_UNIQUE_NAMED_SHARDINGS)?;
            idxs.iter()
                .enumerate()
                .map(|(i, &k)| match k {
                    0 => Ok(None),
                    k => {
                        let t = unique.get(k as usize - 1).ok_or_else(|| {
                            err(format!(
                                "{what} {i} refers to sharding {k}, but there are {}",
                                unique.len()
                            ))
                        })?;
                        read_named_sharding(fb, *t, &format!("{what} {i}")).map(Some)
                    }
                })
                .collect::<Result<Vec<_>>>()?
        }
        _ => fb
            .tables(root, legacy_field)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                if let Some(p) = fb.field(s, S_NAMED)? {
                    let t = fb.table(fb.follow(p)?)?;
                    return read_named_sharding(fb, t, &format!("{what} {i}")).map(Some);
                }
                if fb.field(s, S_HLO_PROTO)?.is_some() {
                    return Err(err(format!(
                        "{what} {i} has an HLO sharding (an artifact of an older JAX); re-export it with JAX 0.12"
                    )));
                }
                Ok(None)
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if out.is_empty() {
        return Ok(vec![None; count]);
    }
    if out.len() != count {
        return Err(err(format!(
            "the artifact has {} {what} shardings for {count} {what}s",
            out.len()
        )));
    }
    Ok(out)
}

impl JaxExport {
    /// Parses a serialized artifact.
    ///
    /// Errors: [`Error::Export`] for a file that is not a well-formed
    /// artifact, and for inputs or outputs with symbolic dimensions or
    /// dtypes xlayer does not hold.
    pub fn parse(bytes: &[u8]) -> Result<JaxExport> {
        if bytes.len() < 8 {
            return Err(err(format!(
                "{} bytes is too short for a jax.export artifact",
                bytes.len()
            )));
        }
        let fb = Fb { buf: bytes };
        let root = fb.root()?;
        let mlir_module = fb
            .bytes_field(root, F_MLIR_MODULE)?
            .ok_or_else(|| err("the artifact holds no StableHLO module"))?
            .to_vec();
        let unique = fb.tables(root, F_UNIQUE_AVALS)?;
        let inputs = read_avals(&fb, root, F_IN_AVALS_IDXS, F_IN_AVALS, &unique, "input")?;
        let outputs = read_avals(&fb, root, F_OUT_AVALS_IDXS, F_OUT_AVALS, &unique, "output")?;
        let kept_inputs: Vec<usize> = match fb.u16s(root, F_KEPT_VAR_IDX)? {
            Some(v) => v.into_iter().map(usize::from).collect(),
            None => (0..inputs.len()).collect(),
        };
        if let Some(&k) = kept_inputs.iter().find(|&&k| k >= inputs.len()) {
            return Err(err(format!(
                "the module keeps input {k}, but the function has {} inputs",
                inputs.len()
            )));
        }
        let ordered_effects = fb
            .tables(root, F_ORDERED_EFFECTS)?
            .into_iter()
            .map(|t| Ok(fb.string_field(t, E_TYPE_NAME)?.unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let nr_devices = match fb.scalar_u32(root, F_NR_DEVICES)? {
            Some(n) if n > 0 => n,
            _ => u32::from(fb.scalar_u16(root, F_NR_DEVICES_SHORT)?.unwrap_or(1)),
        };
        let in_shardings = read_shardings(
            &fb,
            root,
            F_IN_SHARDINGS_IDXS,
            F_IN_SHARDINGS,
            inputs.len(),
            "input",
        )?;
        let out_shardings = read_shardings(
            &fb,
            root,
            F_OUT_SHARDINGS_IDXS,
            F_OUT_SHARDINGS,
            outputs.len(),
            "output",
        )?;
        Ok(JaxExport {
            in_shardings,
            out_shardings,
            function_name: fb.string_field(root, F_FUNCTION_NAME)?.unwrap_or_default(),
            serialization_version: fb.scalar_u16(root, F_SERIALIZATION_VERSION)?.unwrap_or(0),
            calling_convention_version: fb.scalar_u16(root, F_CALLING_CONVENTION)?.unwrap_or(0),
            platforms: fb.strings(root, F_PLATFORMS)?,
            inputs,
            outputs,
            kept_inputs,
            ordered_effects,
            nr_devices,
            mlir_module,
        })
    }

    /// The program: the module's bytecode with the signature of the inputs
    /// it kept, each mapped back to its position among the function's
    /// inputs ([`Program::input_positions`]), and the artifact's platforms,
    /// which [`crate::Client::compile`] checks against the client's.
    ///
    /// Errors: [`Error::Export`] naming what cannot be honoured (see the
    /// module docs).
    pub fn program(&self) -> Result<Program> {
        if self.platforms.is_empty() {
            return Err(err(format!("`{}` names no platform", self.function_name)));
        }
        if self.platforms.len() > 1 {
            return Err(err(format!(
                "`{}` was exported for several platforms [{}]; its module then takes a platform-index argument, which xlayer does not supply yet; export for one platform",
                self.function_name,
                self.platforms.join(", ")
            )));
        }
        if !CALLING_CONVENTIONS.contains(&self.calling_convention_version) {
            return Err(err(format!(
                "`{}` uses calling convention {}; xlayer supports {}..={}",
                self.function_name,
                self.calling_convention_version,
                CALLING_CONVENTIONS.start(),
                CALLING_CONVENTIONS.end()
            )));
        }
        if !self.ordered_effects.is_empty() {
            return Err(err(format!(
                "`{}` has ordered effects [{}], whose token arguments xlayer does not supply",
                self.function_name,
                self.ordered_effects.join(", ")
            )));
        }
        if self.nr_devices == 0 {
            return Err(err(format!(
                "`{}` was exported for 0 devices",
                self.function_name
            )));
        }
        let inputs = self
            .kept_inputs
            .iter()
            .map(|&k| self.inputs[k].clone())
            .collect::<Vec<_>>();
        let signature = Signature {
            donors: vec![false; inputs.len()],
            inputs,
            outputs: self.outputs.clone(),
        };
        let program = Program::mlir_bytecode(self.mlir_module.clone(), signature)?;
        Ok(program
            .with_name(&self.function_name)
            .for_export(
                self.kept_inputs.clone(),
                self.inputs.len(),
                self.platforms.clone(),
            )
            .with_devices(
                self.nr_devices as usize,
                self.in_shardings.clone(),
                self.out_shardings.clone(),
            ))
    }
}
