//! What the compiler says about an [`Executable`]: cost analysis, the
//! optimized program, a fingerprint, and compiled memory statistics.
//!
//! Facts about the `cpu-xla-pjrt` build (`xla-cpu-pjrt` 0.0.1, C API 0.81),
//! checked by the tests of this crate:
//! - `PJRT_Executable_GetCostAnalysis` returns float properties `flops`,
//!   `bytes accessed`, `bytes accessed{i}{}` per operand and
//!   `bytes accessedout{}`, `utilization{i}{}`, and `transcendentals` only
//!   when nonzero (absent means 0). For a `M×K · K×N` matmul it reports
//!   `2·M·N·K` flops; adding a bias adds `M·N` more (one per added element).
//!   Other builds (the default ZML build, `cpu-lammps`) answer
//!   `Unimplemented`; there
//!   [`Executable::cost_analysis`] counts flops, transcendentals and bytes
//!   from the optimized program itself ([`CostSource::Counted`]).
//! - `PJRT_Executable_OptimizedProgram` returns format `hlo_with_config`: a
//!   serialized `xla.HloModuleProtoWithConfig` (binary protobuf), never
//!   text. See [`OptimizedProgram`] and [`crate::Client::compile_with_hlo_text`].
//! - `PJRT_Executable_Fingerprint` is implemented and returns a decimal
//!   string; the deprecated `PJRT_LoadedExecutable_Fingerprint` is tried
//!   when it is not.
//! - `PJRT_Executable_GetCompiledMemoryStats` is implemented (argument,
//!   output, temp and peak bytes; the generated code size reads 0).

use std::collections::BTreeMap;
use std::fmt;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::client::Client;
use super::compile_options::CompileOptions;
use super::executable::Executable;
use super::hlo_cost::count_module;
use super::hlo_proto::{decode_module, dtype_from_primitive};
use super::plugin::{pjrt_call, read_named_values, Args, NamedValue};
use super::sys;
use crate::error::{Error, Result};
use crate::program::Program;

/// The cost of one execution, as named properties: the compiler's
/// estimate, or xlayer's own count where the plugin gives none (see
/// [`CostAnalysis::source`]).
///
/// ```no_run
/// # use xlayer::{Client, Program};
/// let client = Client::cpu()?;
/// let exe = client.compile(&Program::mlir_text(r#"
/// func.func public @main(%a: tensor<4x8xf32>, %b: tensor<8x2xf32>) -> tensor<4x2xf32> {
///   %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x2xf32>) -> tensor<4x2xf32>
///   return %0 : tensor<4x2xf32>
/// }"#)?)?;
/// assert_eq!(exe.cost_analysis()?.flops(), Some(2.0 * 4.0 * 2.0 * 8.0));
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostAnalysis {
    /// Every property the plugin reported, by name (or the three xlayer
    /// counted: `flops`, `transcendentals`, `bytes accessed`).
    pub properties: BTreeMap<String, NamedValue>,
    /// Who computed the properties.
    pub source: CostSource,
}

/// Who computed a [`CostAnalysis`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CostSource {
    /// The plugin's compiler (`PJRT_Executable_GetCostAnalysis`).
    #[default]
    Compiler,
    /// xlayer, from the optimized HLO module the plugin returned, because
    /// the plugin implements no cost analysis. Flops and transcendentals
    /// follow XLA's `HloCostAnalysis` rules; bytes accessed count each
    /// top-level instruction's operands and result once, so they can exceed
    /// the compiler's figure for fusions that read part of an operand.
    Counted,
}

impl fmt::Display for CostSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CostSource::Compiler => "the compiler's cost analysis",
            CostSource::Counted => {
                "counted by xlayer from the optimized HLO (the plugin has no cost analysis)"
            }
        })
    }
}

impl CostAnalysis {
    /// A property as a number (floats, integers and booleans convert).
    pub fn get(&self, name: &str) -> Option<f64> {
        match self.properties.get(name)? {
            NamedValue::Float(v) => Some(f64::from(*v)),
            NamedValue::Int64(v) => Some(*v as f64),
            NamedValue::Bool(b) => Some(f64::from(u8::from(*b))),
            NamedValue::String(_) | NamedValue::Int64List(_) => None,
        }
    }

    /// Floating-point operations (`flops`).
    pub fn flops(&self) -> Option<f64> {
        self.get("flops")
    }

    /// Transcendental operations (`transcendentals`: exp, log, tanh, ...).
    pub fn transcendentals(&self) -> Option<f64> {
        self.get("transcendentals")
    }

    /// Bytes read and written (`bytes accessed`).
    pub fn bytes_accessed(&self) -> Option<f64> {
        self.get("bytes accessed")
    }

    /// Whether the plugin reported nothing.
    pub fn is_empty(&self) -> bool {
        self.properties.is_empty()
    }
}

impl fmt::Display for CostAnalysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.properties {
            writeln!(f, "{k}: {v}")?;
        }
        Ok(())
    }
}

/// The optimized program of an executable, as the plugin returns it.
///
/// The C API returns bytes and a format name. The CPU plugin returns
/// format `hlo_with_config`: a binary `xla.HloModuleProtoWithConfig`, not
/// HLO text. xlayer does not link XLA and cannot print the proto as XLA's
/// HLO text; for a readable form, [`crate::Client::compile_with_hlo_text`]
/// asks the compiler to dump its own text (`xla_dump_to`), and
/// [`OptimizedProgram::text`] is `Some` only when a plugin returns text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizedProgram {
    /// The format name the plugin set (`hlo`, `hlo_with_config`, `mlir`...).
    pub format: String,
    /// The serialized program.
    pub bytes: Vec<u8>,
}

impl OptimizedProgram {
    /// The program as text, if the plugin returned a text format (valid
    /// UTF-8 and not a protobuf format).
    pub fn text(&self) -> Option<&str> {
        if self.format.starts_with("hlo") {
            return None;
        }
        std::str::from_utf8(&self.bytes).ok()
    }
}

/// Memory the compiled program needs, from `xla::CompiledMemoryStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompiledMemoryStats {
    /// Size of the generated code.
    pub generated_code_size_in_bytes: i64,
    /// Size of the arguments.
    pub argument_size_in_bytes: i64,
    /// Size of the outputs.
    pub output_size_in_bytes: i64,
    /// Bytes of arguments reused for outputs.
    pub alias_size_in_bytes: i64,
    /// Temporary memory.
    pub temp_size_in_bytes: i64,
    /// Host: generated code.
    pub host_generated_code_size_in_bytes: i64,
    /// Host: arguments.
    pub host_argument_size_in_bytes: i64,
    /// Host: outputs.
    pub host_output_size_in_bytes: i64,
    /// Host: aliased bytes.
    pub host_alias_size_in_bytes: i64,
    /// Host: temporaries.
    pub host_temp_size_in_bytes: i64,
    /// Peak device memory (0 when the plugin does not compute it).
    pub peak_memory_in_bytes: i64,
}

impl Executable {
    /// The cost of one execution: the compiler's cost analysis
    /// (`PJRT_Executable_GetCostAnalysis`), or, where the plugin lacks it or
    /// answers `Unimplemented`, xlayer's count from the optimized program
    /// ([`OptimizedProgram::counted_cost`]; `source` says which).
    ///
    /// Errors: the plugin's own error; where it has no cost analysis, the
    /// error of [`Executable::optimized_hlo`], or that error again when the
    /// optimized program is not an HLO module xlayer can read.
    pub fn cost_analysis(&self) -> Result<CostAnalysis> {
        match self.compiler_cost_analysis() {
            Err(e) if e.is_unimplemented() => self.optimized_hlo()?.counted_cost().ok_or(e),
            other => other,
        }
    }

    /// The compiler's cost analysis alone (`PJRT_Executable_GetCostAnalysis`).
    ///
    /// Errors: [`Error::Unsupported`] if the plugin lacks the function, or
    /// the plugin's own error (`Unimplemented` on the `cpu-zml` and
    /// `cpu-lammps` builds).
    pub fn compiler_cost_analysis(&self) -> Result<CostAnalysis> {
        let plugin = &self.client().inner.plugin;
        self.with_unloaded(|raw| {
            let mut a = sys::PJRT_Executable_GetCostAnalysis_Args::new();
            a.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_GetCostAnalysis, &mut a)?;
            // SAFETY: the plugin returned `num_properties` values owned by
            // the executable, which is alive for this closure; they are
            // copied out here.
            let values = unsafe { read_named_values(a.properties, a.num_properties) };
            Ok(CostAnalysis {
                properties: values.into_iter().collect(),
                source: CostSource::Compiler,
            })
        })
    }

    /// The optimized program (`PJRT_Executable_OptimizedProgram`): asked
    /// once for its size, then copied into a buffer of that size.
    pub fn optimized_hlo(&self) -> Result<OptimizedProgram> {
        let plugin = &self.client().inner.plugin;
        self.with_unloaded(|raw| {
            let mut program = sys::PJRT_Program::new();
            let mut a = sys::PJRT_Executable_OptimizedProgram_Args::new();
            a.executable = raw;
            a.program = &mut program;
            pjrt_call!(plugin, PJRT_Executable_OptimizedProgram, &mut a)?;
            let mut bytes = vec![0u8; program.code_size];
            if !bytes.is_empty() {
                program.code = bytes.as_mut_ptr().cast();
                let mut a = sys::PJRT_Executable_OptimizedProgram_Args::new();
                a.executable = raw;
                a.program = &mut program;
                pjrt_call!(plugin, PJRT_Executable_OptimizedProgram, &mut a)?;
                // The second call may report a smaller size; never a larger
                // one (it wrote into our buffer of the first size).
                if program.code_size > bytes.len() {
                    return Err(Error::NotSupported(format!(
                        "PJRT_Executable_OptimizedProgram reported {} bytes after announcing {}",
                        program.code_size,
                        bytes.len()
                    )));
                }
                bytes.truncate(program.code_size);
            }
            let format = if program.format.is_null() {
                String::new()
            } else {
                // SAFETY: the plugin set `format`/`format_size` to a string it
                // owns, valid while the executable lives (here).
                let f = unsafe {
                    std::slice::from_raw_parts(program.format.cast::<u8>(), program.format_size)
                };
                String::from_utf8_lossy(f).into_owned()
            };
            Ok(OptimizedProgram { format, bytes })
        })
    }

    /// A fingerprint of the executable: equal for executables compiled from
    /// identical inputs by the same compiler (`PJRT_Executable_Fingerprint`,
    /// else the deprecated `PJRT_LoadedExecutable_Fingerprint`).
    ///
    /// Errors: [`Error::Unsupported`] if the plugin implements neither.
    pub fn fingerprint(&self) -> Result<String> {
        let plugin = &self.client().inner.plugin;
        let from_unloaded = self.with_unloaded(|raw| {
            let mut a = sys::PJRT_Executable_Fingerprint_Args::new();
            a.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_Fingerprint, &mut a)?;
            // SAFETY: the string lives as long as the executable (alive here).
            Ok(unsafe {
                fingerprint_string(a.executable_fingerprint, a.executable_fingerprint_size)
            })
        });
        match from_unloaded {
            Err(e) if e.is_unimplemented() => {
                let mut a = sys::PJRT_LoadedExecutable_Fingerprint_Args::new();
                a.executable = self.raw_loaded();
                pjrt_call!(plugin, PJRT_LoadedExecutable_Fingerprint, &mut a)?;
                // SAFETY: the string lives as long as the loaded executable.
                Ok(unsafe {
                    fingerprint_string(a.executable_fingerprint, a.executable_fingerprint_size)
                })
            }
            other => other,
        }
    }

    /// Memory statistics of the compiled program
    /// (`PJRT_Executable_GetCompiledMemoryStats`).
    ///
    /// Errors: [`Error::Unsupported`] if the plugin lacks the function.
    pub fn compiled_memory_stats(&self) -> Result<CompiledMemoryStats> {
        let plugin = &self.client().inner.plugin;
        self.with_unloaded(|raw| {
            let mut a = sys::PJRT_Executable_GetCompiledMemoryStats_Args::new();
            a.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_GetCompiledMemoryStats, &mut a)?;
            Ok(CompiledMemoryStats {
                generated_code_size_in_bytes: a.generated_code_size_in_bytes,
                argument_size_in_bytes: a.argument_size_in_bytes,
                output_size_in_bytes: a.output_size_in_bytes,
                alias_size_in_bytes: a.alias_size_in_bytes,
                temp_size_in_bytes: a.temp_size_in_bytes,
                host_generated_code_size_in_bytes: a.host_generated_code_size_in_bytes,
                host_argument_size_in_bytes: a.host_argument_size_in_bytes,
                host_output_size_in_bytes: a.host_output_size_in_bytes,
                host_alias_size_in_bytes: a.host_alias_size_in_bytes,
                host_temp_size_in_bytes: a.host_temp_size_in_bytes,
                peak_memory_in_bytes: a.peak_memory_in_bytes,
            })
        })
    }
}

/// Renders a fingerprint: as text when it is printable, else as hex.
///
/// # Safety
/// `ptr` must point to `len` readable bytes (or be null).
unsafe fn fingerprint_string(ptr: *const std::ffi::c_char, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

impl Client {
    /// Compiles `program` and returns, with the executable, the optimized
    /// HLO as XLA's own text, dumped by the compiler
    /// (`xla_dump_to` + `xla_dump_hlo_as_text` set for this compile only, into
    /// a temporary folder removed afterwards). XLA logs one line about the
    /// dump to stderr.
    ///
    /// Errors: the compile's errors; [`Error::NotSupported`] if the plugin
    /// wrote no `*after_optimizations.txt` (a plugin that ignores these flags).
    pub fn compile_with_hlo_text(
        &self,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<(Executable, String)> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xlayer-hlo-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let opts = options
            .clone()
            .xla_flag("xla_dump_to", dir.to_string_lossy().into_owned())
            .xla_flag("xla_dump_hlo_as_text", true);
        let result = self
            .compile_with(program, &opts)
            .and_then(|exe| Ok((exe, read_after_optimizations(&dir)?)));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

fn read_after_optimizations(dir: &Path) -> Result<String> {
    let io = |source| Error::Io {
        what: "cannot read the HLO dump folder",
        path: dir.to_path_buf(),
        source,
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("after_optimizations.txt"))
        })
        .collect();
    found.sort();
    let path = found.pop().ok_or_else(|| {
        Error::NotSupported(format!(
            "the plugin wrote no optimized HLO text into {}",
            dir.display()
        ))
    })?;
    std::fs::read_to_string(&path).map_err(|source| Error::Io {
        what: "cannot read the HLO dump",
        path,
        source,
    })
}

impl OptimizedProgram {
    /// xlayer's count of the program's `flops`, `transcendentals` and
    /// `bytes accessed` ([`CostSource::Counted`]); `None` when the format is
    /// not an HLO proto xlayer can decode.
    pub fn counted_cost(&self) -> Option<CostAnalysis> {
        let counts = count_module(&decode_module(&self.format, &self.bytes)?)?;
        let properties = [
            ("flops", counts.flops),
            ("transcendentals", counts.transcendentals),
            ("bytes accessed", counts.bytes_accessed),
        ]
        .into_iter()
        .map(|(k, v)| {
            // Whole counts stay exact as integers (an f32 rounds above 2^24).
            let value = if v.fract() == 0.0 && v.abs() < 9.0e18 {
                NamedValue::Int64(v as i64)
            } else {
                NamedValue::Float(v as f32)
            };
            (k.to_string(), value)
        })
        .collect();
        Some(CostAnalysis {
            properties,
            source: CostSource::Counted,
        })
    }

    /// The entry computation's parameter types, read from the HLO proto
    /// (`host_program_shape`); `None` when the format is not an HLO proto or
    /// a parameter has a type xlayer cannot hold.
    pub fn parameter_specs(&self) -> Option<Vec<crate::ArraySpec>> {
        let module = decode_module(&self.format, &self.bytes)?;
        module
            .host_program_shape?
            .parameters
            .iter()
            .map(|p| {
                let dims = p
                    .dimensions
                    .iter()
                    .map(|&d| usize::try_from(d).ok())
                    .collect::<Option<Vec<_>>>()?;
                Some(crate::ArraySpec::new(
                    dtype_from_primitive(p.element_type)?,
                    dims,
                ))
            })
            .collect()
    }
}
