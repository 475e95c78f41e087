//! Support for `benches/`, not part of the API: the dispatch floor, one run
//! of a compiled program straight through the plugin's C function table (on
//! one device, [`RawDispatch`], or on every device of a multi-device
//! executable at once, [`RawShardedDispatch`]), so that benches can measure
//! it without the C API types being public.

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
    floor: Floor<'a>,
    args: Vec<*mut sys::PJRT_Buffer>,
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
        Ok(RawDispatch {
            floor: Floor::new(exe)?,
            args: args.iter().map(|b| b.raw()).collect(),
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
        self.floor.run(&arg_list, 1, self.args.len(), &out_list)?;
        self.floor.destroy(out)
    }
}

/// The dispatch floor of a single-output multi-device executable on fixed
/// per-device arguments: [`RawShardedDispatch::execute_and_drop`] is one
/// `PJRT_LoadedExecutable_Execute` over every device (what
/// [`Executable::execute_sharded`] makes) and one `PJRT_Buffer_Destroy` per
/// device's output, with nothing of xlayer's in between. The arguments are
/// checked once, when it is made.
pub struct RawShardedDispatch<'a> {
    floor: Floor<'a>,
    /// Per device, its argument handles.
    lists: Vec<Vec<*mut sys::PJRT_Buffer>>,
    _borrows: PhantomData<(&'a Executable, &'a Buffer)>,
}

/// The most devices [`RawShardedDispatch`] runs (its lists live on the
/// stack, so the floor makes no allocation).
const MAX_DEVICES: usize = 16;

impl<'a> RawShardedDispatch<'a> {
    /// Prepares the floor call of `exe` on `per_device` argument lists.
    ///
    /// Errors: the arguments' errors of [`Executable::execute_sharded`];
    /// more than 16 devices ([`Error::Misuse`]); those of
    /// [`RawDispatch::new`] for the program and plugin.
    pub fn new(exe: &'a Executable, per_device: &[Vec<&'a Buffer>]) -> Result<Self> {
        exe.check_sharded_arguments(per_device)?;
        if per_device.len() > MAX_DEVICES {
            return Err(Error::Misuse {
                what: format!("RawShardedDispatch of `{}`", exe.name),
                reason: "the dispatch floor runs at most 16 devices",
            });
        }
        Ok(RawShardedDispatch {
            floor: Floor::new(exe)?,
            lists: per_device
                .iter()
                .map(|l| l.iter().map(|b| b.raw()).collect())
                .collect(),
            _borrows: PhantomData,
        })
    }

    /// The measured call: execute on every device, then destroy each
    /// device's output.
    ///
    /// Errors: [`Error::Pjrt`] when the plugin fails a call.
    #[inline(never)]
    pub fn execute_and_drop(&self) -> Result<()> {
        let n = self.lists.len();
        let mut outs = [ptr::null_mut::<sys::PJRT_Buffer>(); MAX_DEVICES];
        let mut arg_ptrs = [ptr::null::<*mut sys::PJRT_Buffer>(); MAX_DEVICES];
        let mut out_ptrs = [ptr::null_mut::<*mut sys::PJRT_Buffer>(); MAX_DEVICES];
        for (slot, list) in arg_ptrs.iter_mut().zip(&self.lists) {
            *slot = list.as_ptr();
        }
        for (slot, out) in out_ptrs.iter_mut().zip(outs.iter_mut()) {
            *slot = out;
        }
        let num_args = self.lists.first().map_or(0, Vec::len);
        self.floor
            .run(arg_ptrs.as_ptr(), n, num_args, out_ptrs.as_ptr())?;
        for &out in &outs[..n] {
            self.floor.destroy(out)?;
        }
        Ok(())
    }
}

/// The executable and the two plugin functions a floor calls, found once.
struct Floor<'a> {
    plugin: &'a Plugin,
    exe: *mut sys::PJRT_LoadedExecutable,
    execute_device: *mut sys::PJRT_Device,
    execute: ExecuteFn,
    destroy: DestroyFn,
}

impl<'a> Floor<'a> {
    fn new(exe: &'a Executable) -> Result<Floor<'a>> {
        if exe.signature.outputs.len() != 1 {
            return Err(Error::Misuse {
                what: format!("the dispatch floor of `{}`", exe.name),
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
        Ok(Floor {
            plugin,
            exe: exe.raw_loaded(),
            execute_device: if exe.portable {
                exe.device.raw
            } else {
                ptr::null_mut()
            },
            execute,
            destroy,
        })
    }

    /// One execute over `num_devices` argument lists of `num_args` handles,
    /// each device's one output written through `out_lists`.
    fn run(
        &self,
        arg_lists: *const *const *mut sys::PJRT_Buffer,
        num_devices: usize,
        num_args: usize,
        out_lists: *const *mut *mut sys::PJRT_Buffer,
    ) -> Result<()> {
        let mut options = sys::PJRT_ExecuteOptions::new();
        let mut a = sys::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.exe;
        a.options = &mut options;
        a.argument_lists = arg_lists;
        a.num_devices = num_devices;
        a.num_args = num_args;
        a.output_lists = out_lists;
        a.execute_device = self.execute_device;
        // SAFETY: `execute` is the plugin's own PJRT_LoadedExecutable_Execute
        // (checked to be within its table in `new`); the executable and the
        // argument buffers are borrowed by the dispatch for 'a, so their
        // handles are live; the callers pass `num_devices` argument lists of
        // `num_args` handles, checked against the program when the dispatch
        // was made, and as many one-slot output lists, all outliving the call.
        let err = unsafe { (self.execute)(&mut a) };
        self.plugin.check(err, "PJRT_LoadedExecutable_Execute")
    }

    fn destroy(&self, out: *mut sys::PJRT_Buffer) -> Result<()> {
        let mut d = sys::PJRT_Buffer_Destroy_Args::new();
        d.buffer = out;
        // SAFETY: `destroy` is the plugin's PJRT_Buffer_Destroy; `out` is an
        // output buffer a successful execute returned, owned by the caller
        // and destroyed exactly once.
        let err = unsafe { (self.destroy)(&mut d) };
        self.plugin.check(err, "PJRT_Buffer_Destroy")
    }
}
