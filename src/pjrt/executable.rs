//! `Executable`: a compiled program, loaded on one device or several, run
//! on buffers.
//!
//! A multi-device executable (compiled with several partitions or
//! replicas, e.g. [`CompileOptions::spmd`]) runs with one argument list per
//! device ([`Executable::execute_sharded`]) and returns one output list per
//! device ([`DeviceOutputs`]). Its [`Executable::signature`] holds the
//! per-device (shard) types, read from the compiled module; the program's
//! global types stay in [`Executable::global_signature`].

use std::fmt;

use super::buffer::{from_pjrt_type, Buffer};
use super::client::{Client, Device};
use super::compile_options::CompileOptions;
use super::plugin::{pjrt_call, Args};
use super::sys;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::program::{Program, Signature};

/// One argument of [`Executable::execute_args`]: a borrowed buffer, or an
/// owned one whose device memory the executable may reuse (donation).
#[derive(Debug)]
pub enum Arg<'a> {
    /// Read only; the buffer stays valid.
    Borrowed(&'a Buffer),
    /// Given to the executable. If the program declares the parameter a
    /// donor, its memory may be reused for an output and the buffer is gone.
    Donated(Buffer),
}

impl<'a> From<&'a Buffer> for Arg<'a> {
    fn from(b: &'a Buffer) -> Self {
        Arg::Borrowed(b)
    }
}

impl From<Buffer> for Arg<'_> {
    fn from(b: Buffer) -> Self {
        Arg::Donated(b)
    }
}

impl Arg<'_> {
    /// The buffer, borrowed or owned.
    pub fn buffer(&self) -> &Buffer {
        match self {
            Arg::Borrowed(b) => b,
            Arg::Donated(b) => b,
        }
    }
}

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

static COMPILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many programs this process has compiled through the plugin
/// ([`Client::compile_with`] calls that reached `PJRT_Client_Compile`):
/// executables loaded from a compilation cache do not count.
pub fn compile_count() -> u64 {
    COMPILES.load(std::sync::atomic::Ordering::Relaxed)
}

impl Client {
    /// Compiles `program` for the default device with default options.
    ///
    /// The executable's parameter and result types are the compiled
    /// module's own; arguments are checked against them.
    ///
    /// Errors: the compiler's own message ([`Error::Pjrt`]) for a program
    /// it rejects (parse errors name the line and column);
    /// [`Error::SignatureMismatch`] when the program's declared signature
    /// differs from the compiled module's types.
    pub fn compile(&self, program: &Program) -> Result<Executable> {
        self.compile_with(program, &CompileOptions::new())
    }

    /// Compiles `program` with `options` (target device, XLA flags, and
    /// whether to compile in a child process: [`CompileOptions::isolated`]).
    ///
    /// Text programs are first checked in Rust for inputs known to crash
    /// the plugin's compiler (`crate::pjrt::precheck`).
    ///
    /// Errors: [`Error::DeviceCount`] for a program partitioned for N > 1
    /// devices ([`Program::device_count`]) compiled for another count;
    /// those of [`CompileOptions::resolve_devices`];
    /// [`Error::ProgramTooDeep`] and [`Error::ConstantDivisionByZero`]
    /// from those checks; [`Error::Export`] for a program exported for
    /// another platform; [`Error::UnknownXlaFlag`] / [`Error::InvalidXlaFlag`]
    /// for an XLA flag of `options` the plugin does not know or refuses; the
    /// compiler's own message ([`Error::Pjrt`]); when isolated,
    /// [`Error::PluginCrashed`] if the compiler crashed the child and
    /// [`Error::Isolation`] if the child could not be run.
    pub fn compile_with(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        self.compile_unmapped(program, options)
            .map_err(|e| options.flag_error(e, self.plugin().path()))
    }

    fn compile_unmapped(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        let devices = options.resolve_devices(self)?;
        // Several CPU devices: without XNNPACK fusions, which deadlock
        // against a blocked all-reduce (`multi_device`); a plugin that does
        // not know the flag has none.
        if let Some(adjusted) = options.multi_device_defaults(self, devices.len()) {
            match self.compile_resolved(program, &adjusted, devices.clone()) {
                Err(e) if super::multi_device::is_unknown_multi_device_flag(&e) => {}
                done => return done,
            }
        }
        self.compile_resolved(program, options, devices)
    }

    fn compile_resolved(
        &self,
        program: &Program,
        options: &CompileOptions,
        devices: Vec<Device>,
    ) -> Result<Executable> {
        if program.device_count() > 1 && devices.len() != program.device_count() {
            return Err(Error::DeviceCount {
                what: format!(
                    "`{}` (partitioned for {} devices; compile it with CompileOptions::spmd({}))",
                    program.name(),
                    program.device_count(),
                    program.device_count()
                ),
                expected: program.device_count(),
                actual: devices.len(),
            });
        }
        let device = devices[0].clone();
        if let Some(platforms) = program.platforms() {
            let mine = self.platform_name().to_ascii_lowercase();
            let same = |p: &String| {
                let p = p.to_ascii_lowercase();
                p == mine || (p == "cuda" && mine == "gpu") || (p == "gpu" && mine == "cuda")
            };
            if !platforms.iter().any(same) {
                return Err(Error::Export(format!(
                    "`{}` was exported for platform(s) [{}], but this client's platform is `{}`; re-export it with platforms=[\"{mine}\"]",
                    program.name(),
                    platforms.join(", "),
                    self.platform_name()
                )));
            }
        }
        super::precheck::check(program)?;
        if let Some(child) = &options.isolation {
            return super::isolate::compile_isolated(
                self,
                program,
                options,
                child.as_deref(),
                device,
            );
        }
        let format = b"mlir";
        let mut p = sys::PJRT_Program::new();
        // The C API takes a mutable pointer but does not write through it.
        p.code = program.code().as_ptr() as *mut std::ffi::c_char;
        p.code_size = program.code().len();
        p.format = format.as_ptr().cast();
        p.format_size = format.len();
        let opts = if devices.len() > 1 && options.assignment.is_none() {
            options.clone().device_assignment(&devices).to_bytes()
        } else {
            options.to_bytes()
        };
        let mut a = sys::PJRT_Client_Compile_Args::new();
        a.client = self.inner.raw;
        a.program = &p;
        a.compile_options = opts.as_ptr().cast();
        a.compile_options_size = opts.len();
        COMPILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pjrt_call!(&self.inner.plugin, PJRT_Client_Compile, &mut a)?;
        let mut exe = Executable {
            raw: a.executable,
            client: self.clone(),
            name: program.name().to_string(),
            signature: program.signature().clone(),
            global_signature: program.signature().clone(),
            device,
            devices: Vec::new(),
            portable: options.device_index.is_some() && devices.len() == 1,
            donor_indices: Vec::new(),
        };
        exe.finish_load()?;
        Ok(exe)
    }

    /// Loads what an isolated child compiled from `program` with `options`
    /// ([`crate::pjrt::isolate`]), checked as a compile's result is.
    pub(crate) fn load_compiled(
        &self,
        bytes: &[u8],
        program: &Program,
        options: &CompileOptions,
        device: Device,
    ) -> Result<Executable> {
        self.deserialize_and_load(
            bytes,
            program.name(),
            program.signature().clone(),
            device,
            options.device_index.is_some(),
        )
    }

    /// Loads an executable serialized by [`Executable::serialize`] with the
    /// same plugin build. `signature` is the program's, as it was compiled
    /// (outputs may be left empty).
    ///
    /// Errors: [`Error::SignatureMismatch`] when `signature` differs from
    /// the deserialized executable's own parameter or result types.
    pub fn deserialize_executable(
        &self,
        bytes: &[u8],
        name: &str,
        signature: Signature,
    ) -> Result<Executable> {
        let device = self.default_device().clone();
        self.deserialize_and_load(bytes, name, signature, device, false)
    }

    /// The one deserialize-and-load path: the plugin's call, then the
    /// signature check every loaded executable gets.
    fn deserialize_and_load(
        &self,
        bytes: &[u8],
        name: &str,
        signature: Signature,
        device: Device,
        portable: bool,
    ) -> Result<Executable> {
        let mut a = sys::PJRT_Executable_DeserializeAndLoad_Args::new();
        a.client = self.inner.raw;
        a.serialized_executable = bytes.as_ptr().cast();
        a.serialized_executable_size = bytes.len();
        pjrt_call!(
            &self.inner.plugin,
            PJRT_Executable_DeserializeAndLoad,
            &mut a
        )?;
        let mut exe = Executable {
            raw: a.loaded_executable,
            client: self.clone(),
            name: name.to_string(),
            global_signature: signature.clone(),
            signature,
            device,
            devices: Vec::new(),
            portable,
            donor_indices: Vec::new(),
        };
        exe.finish_load()?;
        Ok(exe)
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
    fn finish_load(&mut self) -> Result<()> {
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

    /// Runs the program on borrowed buffers and returns its outputs.
    ///
    /// Every argument is checked first: count, dtype, shape, client and
    /// device ([`Error::ArgumentCount`], [`Error::ArgumentType`],
    /// [`Error::ForeignClient`], [`Error::ArgumentDevice`]). Execution is
    /// asynchronous: reading an output waits for it. A multi-device
    /// executable is refused ([`Error::MultiDeviceExecutable`]): use
    /// [`Executable::execute_sharded`].
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i])?;
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let raws = raw_list(&mut inline, &mut heap, args.iter().map(|b| b.raw()));
        self.launch(raws, &self.donor_indices)
    }

    /// Runs the program on a mix of borrowed and donated buffers.
    ///
    /// A donated buffer whose parameter the program declares a donor may be
    /// reused for an output; it is consumed either way.
    pub fn execute_args(&self, args: Vec<Arg<'_>>) -> Result<Vec<Buffer>> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i].buffer())?;
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let raws = raw_list(
            &mut inline,
            &mut heap,
            args.iter().map(|a| a.buffer().raw()),
        );
        let keep: Vec<i64> = self
            .donor_indices
            .iter()
            .copied()
            .filter(|&i| matches!(args[i as usize], Arg::Borrowed(_)))
            .collect();
        let out = self.launch(raws, &keep);
        drop(args);
        out
    }

    /// Checks arguments as [`Executable::execute`] does, without running:
    /// count, dtype, shape, client and device of each.
    pub fn check_arguments(&self, args: &[&Buffer]) -> Result<()> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i])
    }

    fn single_device(&self) -> Result<()> {
        if self.devices.len() > 1 {
            return Err(Error::MultiDeviceExecutable {
                program: self.name.clone(),
                devices: self.devices.len(),
            });
        }
        Ok(())
    }

    fn validate<'b>(&self, count: usize, arg: impl Fn(usize) -> &'b Buffer) -> Result<()> {
        let inputs = &self.signature.inputs;
        if count != inputs.len() {
            return Err(Error::ArgumentCount {
                program: self.name.clone(),
                expected: inputs.len(),
                actual: count,
            });
        }
        for (index, expected) in inputs.iter().enumerate() {
            let b = arg(index);
            self.client.check_same_client(b.client(), || {
                format!("argument {index} of `{}`", self.name)
            })?;
            if b.spec() != expected {
                return Err(Error::ArgumentType {
                    program: self.name.clone(),
                    index,
                    expected: expected.clone(),
                    actual: b.spec().clone(),
                });
            }
            if *b.device() != self.device {
                return Err(Error::ArgumentDevice {
                    program: self.name.clone(),
                    index,
                    expected: self.device.to_string(),
                    actual: b.device().to_string(),
                });
            }
        }
        Ok(())
    }

    fn launch(&self, args: &[*mut sys::PJRT_Buffer], non_donatable: &[i64]) -> Result<Vec<Buffer>> {
        let n_out = self.signature.outputs.len();
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let outputs = raw_list(
            &mut inline,
            &mut heap,
            std::iter::repeat_n(std::ptr::null_mut(), n_out),
        );
        let arg_list: *const *mut sys::PJRT_Buffer = args.as_ptr();
        let out_list: *mut *mut sys::PJRT_Buffer = outputs.as_mut_ptr();
        let mut options = sys::PJRT_ExecuteOptions::new();
        options.non_donatable_input_indices = non_donatable.as_ptr();
        options.num_non_donatable_input_indices = non_donatable.len();
        let mut a = sys::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw;
        a.options = &mut options;
        a.argument_lists = &arg_list;
        a.num_devices = 1;
        a.num_args = args.len();
        a.output_lists = &out_list;
        if self.portable {
            a.execute_device = self.device.raw;
        }
        pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_Execute,
            &mut a
        )?;
        Ok(outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(&raw, spec)| {
                Buffer::from_raw(self.client.clone(), raw, spec.clone(), self.device.clone())
            })
            .collect())
    }
}

/// Up to this many argument or output handles are gathered on the stack:
/// a call with few arrays then makes no heap allocation for them.
const INLINE: usize = 8;

/// Collects `raws` into `inline` when they fit, else into `heap`, and returns
/// the filled slice.
fn raw_list<'s>(
    inline: &'s mut [*mut sys::PJRT_Buffer; INLINE],
    heap: &'s mut Vec<*mut sys::PJRT_Buffer>,
    raws: impl ExactSizeIterator<Item = *mut sys::PJRT_Buffer>,
) -> &'s mut [*mut sys::PJRT_Buffer] {
    let n = raws.len();
    if n <= INLINE {
        for (slot, raw) in inline.iter_mut().zip(raws) {
            *slot = raw;
        }
        &mut inline[..n]
    } else {
        heap.extend(raws);
        heap
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_list_uses_the_stack_when_it_fits_and_the_heap_otherwise() {
        let handle = |i: usize| (i + 1) as *mut sys::PJRT_Buffer;
        for n in [0, 1, INLINE, INLINE + 1, 3 * INLINE] {
            let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
            let list = raw_list(&mut inline, &mut heap, (0..n).map(handle));
            assert_eq!(list.len(), n);
            assert!(list.iter().enumerate().all(|(i, &p)| p == handle(i)));
            assert_eq!(heap.is_empty(), n <= INLINE);
        }
    }
}
