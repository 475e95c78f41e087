//! xlayer's own CPU kernels, called from compiled programs as XLA FFI
//! custom calls (`stablehlo.custom_call` with `api_version = 4`).
//!
//! The CPU plugin holds XLA's FFI handler registry; PJRT's FFI extension
//! (`PJRT_Extension_Type_FFI`, version 2) exposes `register_handler`, which
//! `register` calls once per plugin for each kernel (platform `Host`,
//! where XLA:CPU looks handlers up). Registering asks the handler for its
//! FFI API version first (a call whose frame carries the metadata
//! extension); the handlers answer with the version of the framework that
//! asks (major 0: the call-frame layout `abi` describes), so the plugin's
//! range check passes. A program calling a kernel compiles only on a
//! plugin where it is registered ("No FFI handler registered for ..."
//! otherwise), which is why [`crate::Client::cpu_kernels`] registers before
//! the builder may emit a call.
//!
//! Kernels: the block-quantized matrix-vector products of GGUF weights
//! ([`Q4_0_MATVEC`], [`Q4_1_MATVEC`], [`Q8_0_MATVEC`]; operands and layout
//! in [`matvec_target`]'s documentation). Each checks its buffers' dtypes
//! and shapes and returns an FFI error naming itself on a mismatch, never
//! reading out of bounds.

mod abi;
mod pool;
mod qmatvec;

use std::ffi::{c_void, CString};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use super::plugin::Plugin;
use super::sys;
use crate::gguf::GgmlType;
use qmatvec::{Kind, Parts};

/// The `Q4_0` matrix-vector kernel's registered name.
pub const Q4_0_MATVEC: &str = "xlayer_q4_0_matvec";
/// The `Q4_1` matrix-vector kernel's registered name.
pub const Q4_1_MATVEC: &str = "xlayer_q4_1_matvec";
/// The `Q8_0` matrix-vector kernel's registered name.
pub const Q8_0_MATVEC: &str = "xlayer_q8_0_matvec";

/// The platform XLA:CPU looks FFI handlers up under.
const PLATFORM: &str = "Host";

/// The kernel computing `y = W x` for a `[rows, 32 nb]` weight of block
/// type `ty` stored as `crate::models::qweight` uploads it, or `None` for
/// other types. Its operands are `x: f32[32 nb]` (any shape of that many
/// elements), then the weight's parts in upload order: `d: f16[rows, nb]`,
/// (`m: f16[rows, nb]` for `Q4_1`), `qs: u8[rows, nb, 16]` (`i8[rows, nb,
/// 32]` for `Q8_0`); its result is `f32[rows]`.
pub fn matvec_target(ty: GgmlType) -> Option<&'static str> {
    match ty {
        GgmlType::Q4_0 => Some(Q4_0_MATVEC),
        GgmlType::Q4_1 => Some(Q4_1_MATVEC),
        GgmlType::Q8_0 => Some(Q8_0_MATVEC),
        _ => None,
    }
}

/// How many times a handler accepted XLA's metadata query (each
/// successful registration makes one).
static METADATA_ANSWERS: AtomicUsize = AtomicUsize::new(0);
/// The FFI API version of the framework that last asked, `major << 32 |
/// minor`, or -1.
static FRAMEWORK_VERSION: AtomicI64 = AtomicI64::new(-1);

/// The XLA FFI API version `(major, minor)` of the plugin that registered
/// the kernels (read from its metadata query), if one did.
pub fn framework_api_version() -> Option<(i32, i32)> {
    let v = FRAMEWORK_VERSION.load(Ordering::Relaxed);
    (v >= 0).then_some(((v >> 32) as i32, (v & 0xffff_ffff) as i32))
}

extern "C" fn q4_0_handler(frame: *mut abi::CallFrame) -> *mut abi::FfiError {
    handle(frame, Kind::Q4_0)
}

extern "C" fn q4_1_handler(frame: *mut abi::CallFrame) -> *mut abi::FfiError {
    handle(frame, Kind::Q4_1)
}

extern "C" fn q8_0_handler(frame: *mut abi::CallFrame) -> *mut abi::FfiError {
    handle(frame, Kind::Q8_0)
}

const HANDLERS: [(&str, abi::Handler); 3] = [
    (Q4_0_MATVEC, q4_0_handler),
    (Q4_1_MATVEC, q4_1_handler),
    (Q8_0_MATVEC, q8_0_handler),
];

fn target(kind: Kind) -> &'static str {
    match kind {
        Kind::Q4_0 => Q4_0_MATVEC,
        Kind::Q4_1 => Q4_1_MATVEC,
        Kind::Q8_0 => Q8_0_MATVEC,
    }
}

/// Most threads a kernel call may run on ([`KERNEL_THREADS_VAR`]).
pub(crate) const MAX_KERNEL_THREADS: usize = 64;

/// The environment variable naming how many threads a kernel call runs on.
pub(crate) const KERNEL_THREADS_VAR: &str = "XLAYER_CPU_KERNEL_THREADS";

/// The environment variable naming a lesser implementation of the kernels.
pub(crate) const KERNEL_ISA_VAR: &str = "XLAYER_CPU_KERNEL_ISA";

/// The kernel thread count `value` of [`KERNEL_THREADS_VAR`] names, or why
/// it names none.
pub(crate) fn parse_kernel_threads(value: &str) -> std::result::Result<usize, &'static str> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_KERNEL_THREADS).contains(&n) => Ok(n),
        _ => Err("a whole number of threads from 1 to 64"),
    }
}

/// Checks the kernels' environment variables before any kernel runs (a
/// kernel cannot return such an error): [`KERNEL_THREADS_VAR`] a whole
/// number from 1 to 64, [`KERNEL_ISA_VAR`] `portable` or `avx2`; unset or
/// empty is the default.
///
/// Errors: [`crate::Error::InvalidSetting`] naming the variable and its
/// value.
pub(crate) fn check_environment() -> crate::Result<()> {
    let invalid =
        |field: &'static str, value: String, reason: &'static str| crate::Error::InvalidSetting {
            what: "the environment".into(),
            field,
            value,
            reason,
        };
    if let Some(v) = std::env::var_os(KERNEL_THREADS_VAR).filter(|v| !v.is_empty()) {
        let text = v.to_string_lossy().into_owned();
        parse_kernel_threads(&text).map_err(|reason| invalid(KERNEL_THREADS_VAR, text, reason))?;
    }
    if let Some(v) = std::env::var_os(KERNEL_ISA_VAR).filter(|v| !v.is_empty()) {
        let text = v.to_string_lossy().into_owned();
        if !matches!(text.as_str(), "portable" | "avx2") {
            return Err(invalid(KERNEL_ISA_VAR, text, "`portable` or `avx2`"));
        }
    }
    Ok(())
}

/// Registers every kernel with `plugin` (call once per plugin).
///
/// Errors (as text, kept by the plugin for messages): the plugin has no FFI
/// extension, or one without `register_handler` (version 1); the plugin
/// refused a registration; or it accepted one without querying the
/// handler's metadata (then nothing was registered).
pub(crate) fn register(plugin: &Plugin) -> std::result::Result<(), String> {
    let api = plugin.api();
    let mut ext = api.extension_start;
    let mut steps = 0;
    let ffi = loop {
        if ext.is_null() {
            return Err("the plugin has no PJRT FFI extension".into());
        }
        // SAFETY: a non-null link of the plugin's extension chain, static
        // data of the plugin (never unloaded); every link starts with
        // PJRT_Extension_Base.
        let base = unsafe { &*ext };
        if base.type_ == sys::PJRT_Extension_Type::PJRT_Extension_Type_FFI {
            break ext.cast::<abi::PjrtFfiExtension>();
        }
        ext = base.next;
        steps += 1;
        if steps > 64 {
            return Err("the plugin's extension chain has more than 64 links".into());
        }
    };
    // SAFETY: `ffi` is the FFI extension found above; its base is readable.
    let size = unsafe { (*ffi).base.struct_size };
    if size < abi::PJRT_FFI_EXTENSION_V2_SIZE {
        return Err(format!(
            "the plugin's FFI extension has {size} bytes, without register_handler (version 2 has {})",
            abi::PJRT_FFI_EXTENSION_V2_SIZE
        ));
    }
    // SAFETY: the extension's struct_size covers `register_handler`.
    let Some(register_handler) = (unsafe { (*ffi).register_handler }) else {
        return Err("the plugin's FFI extension has no register_handler".into());
    };
    for (name, handler) in HANDLERS {
        let before = METADATA_ANSWERS.load(Ordering::SeqCst);
        let mut a = abi::RegisterHandlerArgs {
            struct_size: abi::REGISTER_HANDLER_ARGS_SIZE,
            target_name: name.as_ptr().cast(),
            target_name_size: name.len(),
            handler: handler as *mut c_void,
            platform_name: PLATFORM.as_ptr().cast(),
            platform_name_size: PLATFORM.len(),
            traits: 0,
        };
        // SAFETY: `register_handler` comes from the plugin's extension; the
        // arguments point to static strings and a handler that live for
        // the whole process, as a registration needs.
        let err = unsafe { register_handler(&mut a) };
        plugin
            .check(err, "PJRT_FFI_Register_Handler")
            .map_err(|e| format!("registering {name}: {e}"))?;
        if METADATA_ANSWERS.load(Ordering::SeqCst) == before {
            return Err(format!(
                "the plugin took {name} without asking its API version: not registered"
            ));
        }
    }
    Ok(())
}

/// The handler of every kernel: answers XLA's metadata query, runs the
/// kernel at the execute stage, turns failures into FFI errors.
fn handle(frame: *mut abi::CallFrame, kind: Kind) -> *mut abi::FfiError {
    if frame.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: XLA passes a call frame valid for the duration of the call.
    let f = unsafe { &*frame };
    if !f.extension_start.is_null() {
        // SAFETY: a non-null call-frame extension starts with
        // XLA_FFI_InternalExtension.
        let ext = unsafe { &*f.extension_start };
        if ext.ty == abi::EXTENSION_METADATA {
            return answer_metadata(f, ext, kind);
        }
    }
    if f.stage != abi::STAGE_EXECUTE {
        return std::ptr::null_mut();
    }
    match std::panic::catch_unwind(AssertUnwindSafe(|| execute(f, kind))) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(msg)) => error(
            f.api,
            abi::ERROR_INVALID_ARGUMENT,
            &format!("{}: {msg}", target(kind)),
        ),
        Err(_) => error(
            f.api,
            abi::ERROR_INTERNAL,
            &format!("{}: the kernel panicked", target(kind)),
        ),
    }
}

/// Fills the metadata XLA asks for at registration: the framework's own
/// API version when its major version is 0 (the layout `abi` knows), no
/// traits.
fn answer_metadata(
    f: &abi::CallFrame,
    ext: &abi::InternalExtension,
    kind: Kind,
) -> *mut abi::FfiError {
    if f.api.is_null() || ext.struct_size < std::mem::size_of::<abi::MetadataExtension>() {
        return std::ptr::null_mut();
    }
    // SAFETY: `api` is the framework's API table, valid during the call.
    let api = unsafe { &*f.api };
    if api.struct_size < std::mem::offset_of!(abi::Api, internal_api) {
        return std::ptr::null_mut();
    }
    let (major, minor) = (api.api_version.major_version, api.api_version.minor_version);
    if major != 0 {
        return error(
            f.api,
            abi::ERROR_INVALID_ARGUMENT,
            &format!(
                "{}: xlayer's kernels know XLA FFI API 0.x, the plugin's is {major}.{minor}",
                target(kind)
            ),
        );
    }
    // SAFETY: the extension is a metadata extension (its type said so, its
    // size covers the pointer), whose `metadata` XLA owns for the call.
    let meta = unsafe {
        (*(ext as *const abi::InternalExtension).cast::<abi::MetadataExtension>()).metadata
    };
    if meta.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `meta` is XLA's metadata struct, writable during the call.
    let meta = unsafe { &mut *meta };
    meta.api_version.major_version = major;
    meta.api_version.minor_version = minor;
    meta.traits = 0;
    FRAMEWORK_VERSION.store(
        (i64::from(major) << 32) | i64::from(minor),
        Ordering::Relaxed,
    );
    METADATA_ANSWERS.fetch_add(1, Ordering::SeqCst);
    std::ptr::null_mut()
}

/// An FFI error with `message`, made by the framework's `Error_Create`
/// (null, i.e. no error, only if the framework gives no way to make one).
fn error(api: *const abi::Api, code: u32, message: &str) -> *mut abi::FfiError {
    if api.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the API table of the framework calling us, valid during the call.
    let api = unsafe { &*api };
    if api.struct_size < std::mem::offset_of!(abi::Api, error_create) + std::mem::size_of::<usize>()
    {
        return std::ptr::null_mut();
    }
    let Some(create) = api.error_create else {
        return std::ptr::null_mut();
    };
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let mut a = abi::ErrorCreateArgs {
        struct_size: std::mem::offset_of!(abi::ErrorCreateArgs, errc) + std::mem::size_of::<u32>(),
        extension_start: std::ptr::null_mut(),
        message: text.as_ptr(),
        errc: code,
    };
    // SAFETY: `create` is the framework's Error_Create; it copies the
    // message, which lives until after the call.
    unsafe { create(&mut a) }
}

/// One argument or result: its dtype, dimensions, data pointer.
struct Buf {
    dtype: u32,
    dims: Vec<usize>,
    data: *mut c_void,
}

impl Buf {
    fn elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }

    fn describe(&self) -> String {
        let ty = match self.dtype {
            abi::dtype::F32 => "f32",
            abi::dtype::F16 => "f16",
            abi::dtype::U8 => "u8",
            abi::dtype::S8 => "i8",
            _ => "?",
        };
        format!("{ty}{:?} (XLA dtype {})", self.dims, self.dtype)
    }

    /// The data as `n` values of `T`.
    ///
    /// Errors: a null or misaligned pointer, or `n` past the buffer.
    fn slice<T>(&self, n: usize, what: &str) -> std::result::Result<&[T], String> {
        if self.elements() != Some(n) {
            return Err(format!("{what} has {}, not {n} elements", self.describe()));
        }
        if n == 0 {
            return Ok(&[]);
        }
        if self.data.is_null() || !(self.data as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(format!("{what}'s data pointer is null or misaligned"));
        }
        // SAFETY: XLA's buffer holds `elements() == n` values of its dtype
        // (checked by the caller to be `T`'s), aligned (checked), alive for
        // the call; nothing writes it while the kernel runs.
        Ok(unsafe { std::slice::from_raw_parts(self.data.cast::<T>(), n) })
    }
}

/// The buffers of an argument or result list.
fn buffers(list: &abi::List, what: &str) -> std::result::Result<Vec<Buf>, String> {
    let n = usize::try_from(list.size).map_err(|_| format!("{} {what}s", list.size))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if list.types.is_null() || list.ptrs.is_null() {
        return Err(format!("the {what} list is null"));
    }
    // SAFETY: XLA's lists hold `size` types and pointers, valid for the call.
    let (types, ptrs) = unsafe {
        (
            std::slice::from_raw_parts(list.types, n),
            std::slice::from_raw_parts(list.ptrs, n),
        )
    };
    let mut out = Vec::with_capacity(n);
    for (i, (&ty, &p)) in types.iter().zip(ptrs).enumerate() {
        if ty != abi::BUFFER || p.is_null() {
            return Err(format!("{what} {i} is not an array buffer"));
        }
        // SAFETY: a BUFFER entry points to an XLA_FFI_Buffer valid for the call.
        let b = unsafe { &*p.cast::<abi::Buffer>() };
        let rank =
            usize::try_from(b.rank).map_err(|_| format!("{what} {i} has rank {}", b.rank))?;
        let dims: &[i64] = if rank == 0 {
            &[]
        } else if b.dims.is_null() {
            return Err(format!("{what} {i} has no dimensions"));
        } else {
            // SAFETY: `dims` holds `rank` values, valid for the call.
            unsafe { std::slice::from_raw_parts(b.dims, rank) }
        };
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("{what} {i} has dimension {d}")))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        out.push(Buf {
            dtype: b.dtype,
            dims,
            data: b.data,
        });
    }
    Ok(out)
}

/// Checks the call's buffers against the kernel's signature and runs it.
fn execute(f: &abi::CallFrame, kind: Kind) -> std::result::Result<(), String> {
    let args = buffers(&f.args, "argument")?;
    let rets = buffers(&f.rets, "result")?;
    let parts = if kind == Kind::Q4_1 { 3 } else { 2 };
    if args.len() != parts + 1 || rets.len() != 1 {
        return Err(format!(
            "takes {} arguments and returns 1 array, got {} and {}",
            parts + 1,
            args.len(),
            rets.len()
        ));
    }
    let (x, d, qs, out) = (&args[0], &args[1], &args[parts], &rets[0]);
    let bq = kind.block_qs();
    let qs_dtype = if kind == Kind::Q8_0 {
        abi::dtype::S8
    } else {
        abi::dtype::U8
    };
    let [rows, nb] = d.dims[..] else {
        return Err(format!("d must be f16[rows, nb], got {}", d.describe()));
    };
    let ok = x.dtype == abi::dtype::F32
        && x.elements() == nb.checked_mul(32)
        && d.dtype == abi::dtype::F16
        && qs.dtype == qs_dtype
        && qs.dims == [rows, nb, bq]
        && out.dtype == abi::dtype::F32
        && out.elements() == Some(rows)
        && (kind != Kind::Q4_1 || (args[2].dtype == abi::dtype::F16 && args[2].dims == d.dims));
    if !ok {
        let got: Vec<String> = args.iter().map(Buf::describe).collect();
        return Err(format!(
            "operands {} -> {} do not fit a [{rows}, {}] weight (want x: f32[{}], d{}: f16[{rows}, {nb}], qs: {}[{rows}, {nb}, {bq}] -> f32[{rows}])",
            got.join(", "),
            out.describe(),
            nb * 32,
            nb * 32,
            if kind == Kind::Q4_1 { ", m" } else { "" },
            if kind == Kind::Q8_0 { "i8" } else { "u8" },
        ));
    }
    let n = rows * nb;
    let p = Parts {
        kind,
        x: x.slice::<f32>(nb * 32, "x")?,
        d: d.slice::<u16>(n, "d")?,
        m: if kind == Kind::Q4_1 {
            Some(args[2].slice::<u16>(n, "m")?)
        } else {
            None
        },
        qs: qs.slice::<u8>(n * bq, "qs")?,
    };
    if out.data.is_null() && rows > 0 {
        return Err("the result's data pointer is null".into());
    }
    if !(out.data as usize).is_multiple_of(std::mem::align_of::<f32>()) {
        return Err("the result's data pointer is misaligned".into());
    }
    let y: &mut [f32] = if rows == 0 {
        &mut []
    } else {
        // SAFETY: the result buffer holds `rows` f32 (checked), aligned,
        // alive for the call, and no argument aliases it (the call declares
        // no operand aliasing).
        unsafe { std::slice::from_raw_parts_mut(out.data.cast::<f32>(), rows) }
    };
    qmatvec::run(&p, y);
    Ok(())
}
