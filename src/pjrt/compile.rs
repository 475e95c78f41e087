//! Compiling programs and loading compiled executables: [`Client::compile`]
//! and [`Client::compile_with`] (devices resolved and checked first,
//! optional isolation in a child process), [`Client::deserialize_executable`],
//! and the count of compiles this process made ([`compile_count`]).

use super::client::{Client, Device};
use super::compile_options::CompileOptions;
use super::executable::Executable;
use super::plugin::{pjrt_call, Args};
use super::sys;
use crate::error::{Error, Result};
use crate::program::{Program, Signature};

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
    /// the plugin's compiler (`crate::pjrt::precheck`). On CPU, options of
    /// [`CompileOptions::new`] get xlayer's measured flags where they apply
    /// ([`crate::pjrt::cpu_tuning`]).
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
    /// [`Error::Isolation`] if the child could not be run;
    /// [`Error::JaxlibKernel`] instead of the compiler's message when the
    /// program calls one of jaxlib's LAPACK kernels (`jax.numpy.linalg` in
    /// a CPU export), which no plugin provides.
    pub fn compile_with(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        let tuned = options.tuned_for(self, program);
        let options = &tuned;
        self.compile_unmapped(program, options)
            .map_err(|e| options.flag_error(e, self.plugin().path()))
            .map_err(|e| super::jaxlib_kernels::explain(program, e))
    }

    fn compile_unmapped(&self, program: &Program, options: &CompileOptions) -> Result<Executable> {
        // A flag of xlayer's (`cpu_tuning`) that this build does not know
        // or refuses: compile without it, as the plugin's defaults would.
        match self.compile_on_devices(program, options) {
            Err(e) => match options.refused_tuning(&e) {
                Some(name) => self.compile_unmapped(program, &options.without_tuning(name)),
                None => Err(e),
            },
            done => done,
        }
    }

    fn compile_on_devices(
        &self,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<Executable> {
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
        // Some CPU builds log a false alarm on every load (see
        // `stderr_filter`); it is kept off stderr while the plugin is quiet.
        super::stderr_filter::without_false_alarms(|| {
            pjrt_call!(
                &self.inner.plugin,
                PJRT_Executable_DeserializeAndLoad,
                &mut a
            )
        })?;
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
