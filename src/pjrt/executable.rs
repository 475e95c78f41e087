//! `Executable`: a compiled program, loaded on one device or several: its
//! handle, what it was loaded with (devices, parameter and result types
//! read from the compiled module), and serialization.
//!
//! Compiling and loading are in `compile.rs` ([`Client::compile`],
//! [`Client::deserialize_executable`], [`compile_count`]); running on one
//! device in `execute.rs` ([`Executable::execute`], [`Arg`]); running on
//! several in `multi_device` ([`Executable::execute_sharded`]).
//!
//! A multi-device executable (compiled with several partitions or
//! replicas, e.g. [`CompileOptions::spmd`]) runs with one argument list per
//! device ([`Executable::execute_sharded`]) and returns one output list per
//! device ([`DeviceOutputs`]). Its [`Executable::signature`] holds the
//! per-device (shard) types, read from the compiled module; the program's
//! global types stay in [`Executable::global_signature`].
//!
//! [`CompileOptions::spmd`]: super::compile_options::CompileOptions::spmd
//! [`DeviceOutputs`]: super::multi_device::DeviceOutputs

use std::fmt;

use super::buffer::from_pjrt_type;
use super::client::{Client, Device};
use super::plugin::{pjrt_call, Args};
use super::sys;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::program::Signature;

pub use super::compile::compile_count;
pub use super::execute::Arg;

/// A compiled program, ready to run on its device. `Send + Sync`: one
/// executable may run from many threads at once.
///
/// ```no_run
/// use xlayer::{Client, Program};
/// let client = Client::cpu()?;
/// let exe = client.compile(&Program::mlir_text(r#"
/// func.func public @main(%a: tensor<3xf32>, %b: tensor<3xf32>) -> tensor<3xf32> {
///   %0 = stablehlo.add %a, %b : tensor<3xf32>
///   return %0 : tensor<3xf32>
/// }"#)?)?;
/// let a = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3])?;
/// let out = exe.execute(&[&a, &a])?;
/// assert_eq!(out[0].to_vec::<f32>()?, vec![2.0, 4.0, 6.0]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct Executable {
    pub(super) raw: *mut sys::PJRT_LoadedExecutable,
    pub(super) client: Client,
    pub(super) name: String,
    pub(super) signature: Signature,
    /// The program's own signature (global shapes, for SPMD programs).
    pub(super) global_signature: Signature,
    pub(super) device: Device,
    /// The devices one run spans, in the order of the argument lists: the
    /// device assignment's `[replica][partition]` order (one for a
    /// single-device executable).
    pub(super) devices: Vec<Device>,
    pub(super) portable: bool,
    /// Indices of donor parameters, passed as non-donatable when borrowed.
    pub(super) donor_indices: Vec<i64>,
}

// SAFETY: PJRT loaded executables are thread-safe: Execute may be called
// concurrently from several threads. Rust-side fields are immutable.
unsafe impl Send for Executable {}
// SAFETY: as above.
unsafe impl Sync for Executable {}

impl fmt::Debug for Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Executable({} {} on {})",
            self.name, self.signature, self.device
        )
    }
}

impl Drop for Executable {
    fn drop(&mut self) {
        let mut a = sys::PJRT_LoadedExecutable_Destroy_Args::new();
        a.executable = self.raw;
        let _ = pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_Destroy,
            &mut a
        );
    }
}

/// An unloaded `PJRT_Executable` (from `GetExecutable`), destroyed on drop.
struct UnloadedExecutable<'a> {
    raw: *mut sys::PJRT_Executable,
    client: &'a Client,
}

impl Drop for UnloadedExecutable<'_> {
    fn drop(&mut self) {
        let mut a = sys::PJRT_Executable_Destroy_Args::new();
        a.executable = self.raw;
        let _ = pjrt_call!(&self.client.inner.plugin, PJRT_Executable_Destroy, &mut a);
    }
}

impl Executable {
    /// Takes the parameter and result types from the compiled executable
    /// itself and checks the declared signature against them, so that
    /// arguments are validated against what really runs: declared results
    /// must match (left empty, they are taken as compiled), and declared
    /// parameters must match the compiled module's (read from its optimized
    /// HLO; kept as declared only when the plugin cannot return it).
    ///
    /// A multi-device executable's signature is the per-device one, taken
    /// from the compiled module without comparing it to the declared
    /// (global) one; its parameters must then be readable.
    pub(super) fn finish_load(&mut self) -> Result<()> {
        self.devices = self.addressable_devices()?;
        if self.devices.len() > 1 {
            self.device = self.devices[0].clone();
            let outputs = self.compiled_output_specs()?;
            let Some(params) = self.compiled_parameter_specs()? else {
                return Err(Error::NotSupported(format!(
                    "`{}` runs on {} devices, but the plugin does not return its optimized HLO, so the per-device argument types cannot be checked",
                    self.name,
                    self.devices.len()
                )));
            };
            self.signature.inputs = params;
            self.signature.outputs = outputs;
            if self.signature.donors.len() != self.signature.inputs.len() {
                self.signature.donors = vec![false; self.signature.inputs.len()];
            }
            self.donor_indices = donor_indices(&self.signature);
            return Ok(());
        }
        self.devices = vec![self.device.clone()];
        let outputs = self.compiled_output_specs()?;
        if !self.signature.outputs.is_empty() && outputs != self.signature.outputs {
            return Err(Error::SignatureMismatch {
                program: self.name.clone(),
                part: "results",
                declared: self.signature.outputs.clone(),
                compiled: outputs,
            });
        }
        self.signature.outputs = outputs;
        self.global_signature.outputs = self.signature.outputs.clone();
        if let Some(params) = self.compiled_parameter_specs()? {
            if params != self.signature.inputs {
                return Err(Error::SignatureMismatch {
                    program: self.name.clone(),
                    part: "parameters",
                    declared: self.signature.inputs.clone(),
                    compiled: params,
                });
            }
        }
        self.donor_indices = donor_indices(&self.signature);
        Ok(())
    }

    /// The executable's addressable devices, as the client's [`Device`]s:
    /// more than one for a multi-device executable. Empty when the plugin
    /// reports none (a portable executable).
    fn addressable_devices(&self) -> Result<Vec<Device>> {
        let mut a = sys::PJRT_LoadedExecutable_AddressableDevices_Args::new();
        a.executable = self.raw;
        pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_AddressableDevices,
            &mut a
        )?;
        if a.addressable_devices.is_null() || a.num_addressable_devices == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the plugin returned an array of `num_addressable_devices`
        // device pointers owned by the executable, alive here.
        let raws =
            unsafe { std::slice::from_raw_parts(a.addressable_devices, a.num_addressable_devices) };
        raws.iter()
            .map(|&raw| {
                self.client
                    .devices()
                    .iter()
                    .find(|d| d.raw == raw)
                    .cloned()
                    .ok_or_else(|| {
                        Error::NotSupported(format!(
                            "`{}` runs on a device that is not among its client's addressable devices",
                            self.name
                        ))
                    })
            })
            .collect()
    }

    /// The entry parameters of the compiled module, from its optimized
    /// HLO; `None` when the plugin does not return an HLO proto xlayer can
    /// read.
    fn compiled_parameter_specs(&self) -> Result<Option<Vec<ArraySpec>>> {
        match self.optimized_hlo() {
            Ok(hlo) => Ok(hlo.parameter_specs()),
            Err(Error::Unsupported { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The raw loaded executable (valid while `self` lives).
    pub(super) fn raw_loaded(&self) -> *mut sys::PJRT_LoadedExecutable {
        self.raw
    }

    /// Runs `f` on the unloaded executable, destroyed afterwards.
    pub(super) fn with_unloaded<T>(
        &self,
        f: impl FnOnce(*mut sys::PJRT_Executable) -> Result<T>,
    ) -> Result<T> {
        let mut g = sys::PJRT_LoadedExecutable_GetExecutable_Args::new();
        g.loaded_executable = self.raw;
        pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_GetExecutable,
            &mut g
        )?;
        let unloaded = UnloadedExecutable {
            raw: g.executable,
            client: &self.client,
        };
        f(unloaded.raw)
    }

    fn compiled_output_specs(&self) -> Result<Vec<ArraySpec>> {
        let plugin = &self.client.inner.plugin;
        self.with_unloaded(|raw| {
            let mut t = sys::PJRT_Executable_OutputElementTypes_Args::new();
            t.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_OutputElementTypes, &mut t)?;
            let mut d = sys::PJRT_Executable_OutputDimensions_Args::new();
            d.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_OutputDimensions, &mut d)?;
            let n = t.num_output_types;
            if d.num_outputs != n {
                return Err(Error::NotSupported(format!(
                    "executable reports {n} output types but {} output shapes",
                    d.num_outputs
                )));
            }
            if n == 0 {
                return Ok(Vec::new());
            }
            // SAFETY: the plugin returned arrays of `n` types, `n` ranks, and
            // sum(ranks) dimensions, owned by the executable alive here.
            let (types, ranks) = unsafe {
                (
                    std::slice::from_raw_parts(t.output_types, n),
                    std::slice::from_raw_parts(d.dim_sizes, n),
                )
            };
            let total: usize = ranks.iter().sum();
            // SAFETY: as above; `dims` holds `total` entries.
            let dims = if total == 0 {
                &[][..]
            } else {
                unsafe { std::slice::from_raw_parts(d.dims, total) }
            };
            let mut out = Vec::with_capacity(n);
            let mut at = 0;
            for (ty, &rank) in types.iter().zip(ranks) {
                let dtype = from_pjrt_type(*ty)?;
                let raw = &dims[at..at + rank];
                let spec = ArraySpec::new(
                    dtype,
                    raw.iter()
                        .map(|&x| usize::try_from(x).ok())
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            Error::NotSupported(format!(
                                "the executable's output {} has dimensions {raw:?} (dynamic or negative)",
                                out.len()
                            ))
                        })?,
                );
                spec.check_size(|| format!("output {} of the executable", out.len()))?;
                out.push(spec);
                at += rank;
            }
            Ok(out)
        })
    }

    /// Serializes the compiled executable (valid only for the same plugin build).
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let plugin = &self.client.inner.plugin;
        self.with_unloaded(|raw| {
            let mut s = sys::PJRT_Executable_Serialize_Args::new();
            s.executable = raw;
            pjrt_call!(plugin, PJRT_Executable_Serialize, &mut s)?;
            let bytes = if s.serialized_bytes.is_null() {
                Vec::new()
            } else {
                // SAFETY: the plugin returned `serialized_bytes_size` bytes owned
                // by `serialized_executable`, freed just below.
                unsafe {
                    std::slice::from_raw_parts(
                        s.serialized_bytes.cast::<u8>(),
                        s.serialized_bytes_size,
                    )
                }
                .to_vec()
            };
            if let Some(deleter) = s.serialized_executable_deleter {
                // SAFETY: the deleter the plugin gave for this object, called once.
                unsafe { deleter(s.serialized_executable) };
            }
            Ok(bytes)
        })
    }

    /// The module name of the program.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parameter and result types.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The device it runs on (the first, for a multi-device executable).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every device one run spans, in the order
    /// [`Executable::execute_sharded`] takes argument lists (one for a
    /// single-device executable).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The program's signature as declared: for an SPMD program, the global
    /// shapes (while [`Executable::signature`] holds each device's shard).
    /// For a single-device executable, the same as the signature.
    pub fn global_signature(&self) -> &Signature {
        &self.global_signature
    }

    /// The client it was compiled by.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Indices of the donor parameters of `signature`.
fn donor_indices(signature: &Signature) -> Vec<i64> {
    signature
        .donors
        .iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .map(|(i, _)| i as i64)
        .collect()
}
