//! Support for `benches/`, not part of the API: the dispatch floor, one run
//! of a compiled program straight through the plugin's C function table,
//! so that benches can measure it without the C API types being public.

use std::marker::PhantomData;
use std::ptr;

use crate::error::{Error, Result};

use super::buffer::Buffer;
use super::executable::Executable;
use super::plugin::{Args, Plugin};
use super::sys;

type ExecuteFn =
    unsafe extern "C" fn(*mut sys::PJRT_LoadedExecutable_Execute_Args) -> *mut sys::PJRT_Error;
type DestroyFn = unsafe extern "C" fn(*mut sys::PJRT_Buffer_Destroy_Args) -> *mut sys::PJRT_Error;

/// The dispatch floor of one single-output executable on fixed arguments:
/// [`RawDispatch::execute_and_drop`] is one `PJRT_LoadedExecutable_Execute`
/// (no events requested) and one `PJRT_Buffer_Destroy` of the output,
/// called through the plugin's function table with nothing of xlayer's
/// argument checks, allocation or output wrapping in between. The arguments
/// are checked once, when it is made.
///
/// ```
/// use xlayer::pjrt::bench_support::RawDispatch;
/// use xlayer::{Client, Program};
/// let client = Client::cpu()?;
/// let exe = client.compile(&Program::mlir_text(r#"
/// func.func public @main(%a: tensor<3xf32>) -> tensor<3xf32> {
///   %0 = stablehlo.add %a, %a : tensor<3xf32>
///   return %0 : tensor<3xf32>
/// }"#)?)?;
/// let a = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3])?;
/// let raw = RawDispatch::new(&exe, &[&a])?;
/// raw.execute_and_drop()?;
/// assert!(matches!(RawDispatch::new(&exe, &[]), Err(xlayer::Error::ArgumentCount { .. })));
/// # Ok::<(), xlayer::Error>(())
/// ```
pub struct RawDispatch<'a> {
    plugin: &'a Plugin,
    exe: *mut sys::PJRT_LoadedExecutable,
    execute_device: *mut sys::PJRT_Device,
    args: Vec<*mut sys::PJRT_Buffer>,
    execute: ExecuteFn,
    destroy: DestroyFn,
    /// The executable and the argument buffers stay alive (and so their
    /// raw handles valid) while this borrows them.
    _borrows: PhantomData<(&'a Executable, &'a Buffer)>,
}

impl<'a> RawDispatch<'a> {
    /// Prepares the floor call of `exe` on `args`.
    ///
    /// Errors: the arguments' errors of [`Executable::execute`] (count,
    /// type, client, device; a multi-device executable); a program with
    /// other than one output ([`Error::Misuse`]); a plugin without
    /// `PJRT_LoadedExecutable_Execute` or `PJRT_Buffer_Destroy`
    /// ([`Error::Unsupported`]).
    pub fn new(exe: &'a Executable, args: &[&'a Buffer]) -> Result<RawDispatch<'a>> {
        exe.check_arguments(args)?;
        if exe.signature.outputs.len() != 1 {
            return Err(Error::Misuse {
                what: format!("RawDispatch of `{}`", exe.name),
                reason: "the dispatch floor runs programs with exactly one output",
            });
        }
        let plugin: &'a Plugin = &exe.client.inner.plugin;
        let api = plugin.api();
        let has = |offset: usize| plugin.has(offset);
        let execute = has(std::mem::offset_of!(
            sys::PJRT_Api,
            PJRT_LoadedExecutable_Execute
        ))
        .then_some(api.PJRT_LoadedExecutable_Execute)
        .flatten()
        .ok_or(Error::Unsupported {
            function: "PJRT_LoadedExecutable_Execute",
        })?;
        let destroy = has(std::mem::offset_of!(sys::PJRT_Api, PJRT_Buffer_Destroy))
            .then_some(api.PJRT_Buffer_Destroy)
            .flatten()
            .ok_or(Error::Unsupported {
                function: "PJRT_Buffer_Destroy",
            })?;
        Ok(RawDispatch {
            plugin,
            exe: exe.raw_loaded(),
            execute_device: if exe.portable {
                exe.device.raw
            } else {
                ptr::null_mut()
            },
            args: args.iter().map(|b| b.raw()).collect(),
            execute,
            destroy,
            _borrows: PhantomData,
        })
    }

    /// The measured call: execute on the arguments, then destroy the output.
    ///
    /// Errors: [`Error::Pjrt`] when the plugin fails either call.
    #[inline(never)]
    pub fn execute_and_drop(&self) -> Result<()> {
        let mut out: *mut sys::PJRT_Buffer = ptr::null_mut();
        let arg_list: *const *mut sys::PJRT_Buffer = self.args.as_ptr();
        let out_list: *mut *mut sys::PJRT_Buffer = &mut out;
        let mut options = sys::PJRT_ExecuteOptions::new();
        let mut a = sys::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.exe;
        a.options = &mut options;
        a.argument_lists = &arg_list;
        a.num_devices = 1;
        a.num_args = self.args.len();
        a.output_lists = &out_list;
        a.execute_device = self.execute_device;
        // SAFETY: `execute` is the plugin's own PJRT_LoadedExecutable_Execute
        // (checked to be within its table in `new`); the executable and the
        // argument buffers are borrowed for 'a, so their handles are live;
        // the argument lists, options and one-slot output list outlive the
        // call, and the arguments were checked against the program in `new`.
        let err = unsafe { (self.execute)(&mut a) };
        self.plugin.check(err, "PJRT_LoadedExecutable_Execute")?;
        let mut d = sys::PJRT_Buffer_Destroy_Args::new();
        d.buffer = out;
        // SAFETY: `destroy` is the plugin's PJRT_Buffer_Destroy; `out` is the
        // one output buffer the successful execute above returned, owned here
        // and destroyed exactly once.
        let err = unsafe { (self.destroy)(&mut d) };
        self.plugin.check(err, "PJRT_Buffer_Destroy")
    }
}
