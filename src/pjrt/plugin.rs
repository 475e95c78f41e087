//! Loading a PJRT plugin and calling through its C API table.
//!
//! A plugin is a shared library exporting `GetPjrtApi`. It is opened once per
//! path (`dlopen`, never closed: buffers and clients may outlive any handle
//! we hold) and initialised once. Every call goes through `pjrt_call!`,
//! which checks that the plugin's table is long enough to hold the function,
//! and turns a returned `PJRT_Error` into [`Error::Pjrt`], freeing it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::sys;
use crate::error::{Error, ErrorCode, Result};

/// The C API major version xlayer was built against.
pub const API_MAJOR: i32 = sys::PJRT_API_MAJOR as i32;
/// The C API minor version of the header xlayer was built against.
pub const API_MINOR: i32 = sys::PJRT_API_MINOR as i32;
/// The oldest minor version accepted: older plugins lack functions and
/// argument fields that xlayer relies on.
pub const MIN_API_MINOR: i32 = 60;

/// The value of a plugin attribute or a named option.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedValue {
    /// A string.
    String(String),
    /// A 64-bit integer.
    Int64(i64),
    /// A list of 64-bit integers.
    Int64List(Vec<i64>),
    /// A float.
    Float(f32),
    /// A boolean.
    Bool(bool),
}

impl std::fmt::Display for NamedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamedValue::String(s) => f.write_str(s),
            NamedValue::Int64(v) => write!(f, "{v}"),
            NamedValue::Int64List(v) => write!(f, "{v:?}"),
            NamedValue::Float(v) => write!(f, "{v}"),
            NamedValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Owned C representations of named values, valid while this lives.
pub(crate) struct RawNamedValues {
    _names: Vec<Vec<u8>>,
    _strings: Vec<Vec<u8>>,
    _lists: Vec<Vec<i64>>,
    pub(crate) values: Vec<sys::PJRT_NamedValue>,
}

impl RawNamedValues {
    pub(crate) fn new(options: &[(String, NamedValue)]) -> RawNamedValues {
        let mut names = Vec::new();
        let mut strings = Vec::new();
        let mut lists = Vec::new();
        let mut values = Vec::new();
        for (name, value) in options {
            let name_bytes = name.as_bytes().to_vec();
            // SAFETY: PJRT_NamedValue is plain C data (pointers, integers, a
            // union of them); all-zero is a valid value of it.
            let mut v: sys::PJRT_NamedValue = unsafe { std::mem::zeroed() };
            v.struct_size = sys::PJRT_NamedValue_STRUCT_SIZE.0 as usize;
            v.name = name_bytes.as_ptr().cast();
            v.name_size = name_bytes.len();
            match value {
                NamedValue::String(s) => {
                    let bytes = s.as_bytes().to_vec();
                    v.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kString;
                    v.__bindgen_anon_1.string_value = bytes.as_ptr().cast();
                    v.value_size = bytes.len();
                    strings.push(bytes);
                }
                NamedValue::Int64(i) => {
                    v.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64;
                    v.__bindgen_anon_1.int64_value = *i;
                    v.value_size = 1;
                }
                NamedValue::Int64List(l) => {
                    let list = l.clone();
                    v.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64List;
                    v.__bindgen_anon_1.int64_array_value = list.as_ptr();
                    v.value_size = list.len();
                    lists.push(list);
                }
                NamedValue::Float(x) => {
                    v.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kFloat;
                    v.__bindgen_anon_1.float_value = *x;
                    v.value_size = 1;
                }
                NamedValue::Bool(b) => {
                    v.type_ = sys::PJRT_NamedValue_Type::PJRT_NamedValue_kBool;
                    v.__bindgen_anon_1.bool_value = *b;
                    v.value_size = 1;
                }
            }
            names.push(name_bytes);
            values.push(v);
        }
        RawNamedValues {
            _names: names,
            _strings: strings,
            _lists: lists,
            values,
        }
    }
}

/// Reads an array of C named values into owned Rust values.
///
/// # Safety
/// `ptr` must point to `len` valid `PJRT_NamedValue`s (or be null with len 0).
pub(crate) unsafe fn read_named_values(
    ptr: *const sys::PJRT_NamedValue,
    len: usize,
) -> Vec<(String, NamedValue)> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `len` valid values at `ptr`.
    let raw = unsafe { std::slice::from_raw_parts(ptr, len) };
    raw.iter()
        .filter_map(|v| {
            // SAFETY: name/name_size and the union member selected by `type_`
            // are valid for the lifetime the plugin documents (at least the
            // duration of this call).
            unsafe {
                let name = String::from_utf8_lossy(std::slice::from_raw_parts(
                    v.name.cast::<u8>(),
                    v.name_size,
                ))
                .into_owned();
                let value = match v.type_ {
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kString => {
                        let p = v.__bindgen_anon_1.string_value.cast::<u8>();
                        let s = if p.is_null() {
                            &[][..]
                        } else {
                            std::slice::from_raw_parts(p, v.value_size)
                        };
                        NamedValue::String(String::from_utf8_lossy(s).into_owned())
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64 => {
                        NamedValue::Int64(v.__bindgen_anon_1.int64_value)
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kInt64List => {
                        let p = v.__bindgen_anon_1.int64_array_value;
                        let s = if p.is_null() {
                            &[][..]
                        } else {
                            std::slice::from_raw_parts(p, v.value_size)
                        };
                        NamedValue::Int64List(s.to_vec())
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kFloat => {
                        NamedValue::Float(v.__bindgen_anon_1.float_value)
                    }
                    sys::PJRT_NamedValue_Type::PJRT_NamedValue_kBool => {
                        NamedValue::Bool(v.__bindgen_anon_1.bool_value)
                    }
                    _ => return None,
                };
                Some((name, value))
            }
        })
        .collect()
}

/// Argument structs of the C API: each starts with `struct_size`, set to the
/// header's `*_STRUCT_SIZE`, then `extension_start`.
pub(crate) trait Args: Sized {
    const STRUCT_SIZE: usize;
    /// A zeroed struct with `struct_size` set.
    fn new() -> Self;
}

macro_rules! impl_args {
    ($($t:ident => $size:ident),* $(,)?) => {$(
        impl Args for sys::$t {
            const STRUCT_SIZE: usize = sys::$size.0 as usize;
            fn new() -> Self {
                // SAFETY: every argument struct of the PJRT C API is plain C
                // data (integers, raw pointers, nullable function pointers),
                // for which all-zero bytes are a valid value.
                let mut a: Self = unsafe { std::mem::zeroed() };
                a.struct_size = Self::STRUCT_SIZE;
                a
            }
        }
    )*};
}

impl_args! {
    PJRT_Error_Destroy_Args => PJRT_Error_Destroy_Args_STRUCT_SIZE,
    PJRT_Error_Message_Args => PJRT_Error_Message_Args_STRUCT_SIZE,
    PJRT_Error_GetCode_Args => PJRT_Error_GetCode_Args_STRUCT_SIZE,
    PJRT_Plugin_Initialize_Args => PJRT_Plugin_Initialize_Args_STRUCT_SIZE,
    PJRT_Plugin_Attributes_Args => PJRT_Plugin_Attributes_Args_STRUCT_SIZE,
    PJRT_Event_Destroy_Args => PJRT_Event_Destroy_Args_STRUCT_SIZE,
    PJRT_Event_Await_Args => PJRT_Event_Await_Args_STRUCT_SIZE,
    PJRT_Client_Create_Args => PJRT_Client_Create_Args_STRUCT_SIZE,
    PJRT_Client_Destroy_Args => PJRT_Client_Destroy_Args_STRUCT_SIZE,
    PJRT_Client_PlatformName_Args => PJRT_Client_PlatformName_Args_STRUCT_SIZE,
    PJRT_Client_PlatformVersion_Args => PJRT_Client_PlatformVersion_Args_STRUCT_SIZE,
    PJRT_Client_AddressableDevices_Args => PJRT_Client_AddressableDevices_Args_STRUCT_SIZE,
    PJRT_Client_Devices_Args => PJRT_Client_Devices_Args_STRUCT_SIZE,
    PJRT_Client_Compile_Args => PJRT_Client_Compile_Args_STRUCT_SIZE,
    PJRT_Client_BufferFromHostBuffer_Args => PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE,
    PJRT_Program => PJRT_Program_STRUCT_SIZE,
    PJRT_Device_GetDescription_Args => PJRT_Device_GetDescription_Args_STRUCT_SIZE,
    PJRT_DeviceDescription_Id_Args => PJRT_DeviceDescription_Id_Args_STRUCT_SIZE,
    PJRT_DeviceDescription_Kind_Args => PJRT_DeviceDescription_Kind_Args_STRUCT_SIZE,
    PJRT_DeviceDescription_ToString_Args => PJRT_DeviceDescription_ToString_Args_STRUCT_SIZE,
    PJRT_LoadedExecutable_Destroy_Args => PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE,
    PJRT_LoadedExecutable_Execute_Args => PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE,
    PJRT_LoadedExecutable_GetExecutable_Args => PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE,
    PJRT_LoadedExecutable_AddressableDevices_Args => PJRT_LoadedExecutable_AddressableDevices_Args_STRUCT_SIZE,
    PJRT_ExecuteOptions => PJRT_ExecuteOptions_STRUCT_SIZE,
    PJRT_Executable_Destroy_Args => PJRT_Executable_Destroy_Args_STRUCT_SIZE,
    PJRT_Executable_Name_Args => PJRT_Executable_Name_Args_STRUCT_SIZE,
    PJRT_Executable_NumOutputs_Args => PJRT_Executable_NumOutputs_Args_STRUCT_SIZE,
    PJRT_Executable_OutputElementTypes_Args => PJRT_Executable_OutputElementTypes_Args_STRUCT_SIZE,
    PJRT_Executable_OutputDimensions_Args => PJRT_Executable_OutputDimensions_Args_STRUCT_SIZE,
    PJRT_Executable_Serialize_Args => PJRT_Executable_Serialize_Args_STRUCT_SIZE,
    PJRT_Executable_DeserializeAndLoad_Args => PJRT_Executable_DeserializeAndLoad_Args_STRUCT_SIZE,
    PJRT_Buffer_Destroy_Args => PJRT_Buffer_Destroy_Args_STRUCT_SIZE,
    PJRT_Buffer_ToHostBuffer_Args => PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE,
    PJRT_Buffer_CopyToDevice_Args => PJRT_Buffer_CopyToDevice_Args_STRUCT_SIZE,
    PJRT_Buffer_ReadyEvent_Args => PJRT_Buffer_ReadyEvent_Args_STRUCT_SIZE,
    PJRT_Buffer_IsDeleted_Args => PJRT_Buffer_IsDeleted_Args_STRUCT_SIZE,
    PJRT_Executable_GetCostAnalysis_Args => PJRT_Executable_GetCostAnalysis_Args_STRUCT_SIZE,
    PJRT_Executable_OptimizedProgram_Args => PJRT_Executable_OptimizedProgram_Args_STRUCT_SIZE,
    PJRT_Executable_Fingerprint_Args => PJRT_Executable_Fingerprint_Args_STRUCT_SIZE,
    PJRT_LoadedExecutable_Fingerprint_Args => PJRT_LoadedExecutable_Fingerprint_Args_STRUCT_SIZE,
    PJRT_Executable_GetCompiledMemoryStats_Args => PJRT_Executable_GetCompiledMemoryStats_Args_STRUCT_SIZE,
}

/// Calls a C API function of a [`Plugin`] with an argument struct, turning a
/// returned `PJRT_Error` into [`Error::Pjrt`].
///
/// Expands to `Result<()>`; the function must exist in the plugin's table
/// (else [`Error::Unsupported`]).
macro_rules! pjrt_call {
    ($plugin:expr, $func:ident, $args:expr) => {{
        let plugin: &$crate::pjrt::plugin::Plugin = $plugin;
        match plugin.has(::std::mem::offset_of!($crate::pjrt::sys::PJRT_Api, $func)) {
            false => Err($crate::error::Error::Unsupported {
                function: stringify!($func),
            }),
            true => match plugin.api().$func {
                None => Err($crate::error::Error::Unsupported {
                    function: stringify!($func),
                }),
                Some(f) => {
                    let args = $args;
                    // SAFETY: `f` comes from the plugin's own table (checked to
                    // be within its declared size); `args` is a properly
                    // initialised argument struct whose pointers are valid for
                    // the duration of the call, as the C API requires.
                    let err = unsafe { f(args) };
                    plugin.check(err, stringify!($func))
                }
            },
        }
    }};
}
pub(crate) use pjrt_call;

/// What identifies a file's content without reading it: device, inode, size,
/// and modification and status-change times (ns). Any write, replacement
/// (rename), truncation, `touch` or `chmod` changes at least one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// The device holding the file.
    pub dev: u64,
    /// Its inode number.
    pub ino: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Last modification, ns since the epoch.
    pub mtime_ns: i128,
    /// Last status change, ns since the epoch (not settable by `touch`).
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// A loaded PJRT plugin: its C API table and attributes.
///
/// Obtain one with [`Plugin::load`], [`Plugin::cpu`] or
/// [`Plugin::default_plugin`]; it stays loaded for the life of the process.
pub struct Plugin {
    path: PathBuf,
    stamp: FileStamp,
    api: &'static sys::PJRT_Api,
    version: (i32, i32),
    attributes: Vec<(String, NamedValue)>,
    /// Whether xlayer's CPU kernels are registered with it (or why not),
    /// once tried ([`Plugin::cpu_kernels`]).
    kernels: OnceLock<std::result::Result<(), String>>,
}

// SAFETY: the PJRT_Api table is immutable static data of the plugin, and the
// C API is documented as thread-safe: functions may be called from any thread.
unsafe impl Send for Plugin {}
// SAFETY: as above; `Plugin` exposes no interior mutability.
unsafe impl Sync for Plugin {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Plugin>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    LOADED.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Plugin {
    /// Loads (once per process and path) the PJRT plugin at `path`.
    ///
    /// Errors: [`Error::PluginLoad`] if the file cannot be opened as a shared
    /// library, [`Error::NotAPlugin`] if it has no `GetPjrtApi`,
    /// [`Error::ApiVersion`] if its C API version is unsupported, and the
    /// plugin's own error if its initialisation fails.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Plugin>> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::PluginLoad {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let key = path.canonicalize().map_err(|e| Error::PluginLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut loaded = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = loaded.get(&key) {
            return Ok(p.clone());
        }
        let plugin = Arc::new(Self::open(&key)?);
        loaded.insert(key, plugin.clone());
        Ok(plugin)
    }

    /// The CPU plugin, provisioned by `xla-build` on first use (download,
    /// sha256 check, cache in `$XLAYER_HOME`).
    pub fn cpu() -> Result<Arc<Plugin>> {
        Self::load(xla_build::ensure(xla_build::Target::Cpu)?)
    }

    /// The default plugin: `XLAYER_PJRT_PLUGIN` if set, else the CPU plugin.
    pub fn default_plugin() -> Result<Arc<Plugin>> {
        Self::load(xla_build::default_plugin()?)
    }

    fn open(path: &Path) -> Result<Plugin> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        let load_err = |e: libloading::Error| Error::PluginLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // The file as it is when opened: what the compilation cache's key
        // identifies (it refuses to hash a file whose stamp changed since).
        let stamp = std::fs::metadata(path)
            .map(|m| FileStamp::of(&m))
            .map_err(|e| Error::PluginLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        // Quiet by default: the plugin reads its log level once (see logging).
        super::logging::before_first_plugin_load();
        // SAFETY: loading a shared library runs its initialisers; the file is
        // one the user (or our provisioning) designated as a PJRT plugin.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(load_err)?;
        type GetApi = unsafe extern "C" fn() -> *const sys::PJRT_Api;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin.
        let get_api =
            unsafe { lib.get::<GetApi>(b"GetPjrtApi\0") }.map_err(|_| Error::NotAPlugin {
                path: path.to_path_buf(),
                reason: "it exports no `GetPjrtApi` symbol".into(),
            })?;
        // SAFETY: calling the plugin's entry point; it takes no arguments.
        let api_ptr = unsafe { get_api() };
        // The library stays loaded for the life of the process: PJRT objects
        // may outlive any handle we hold, and plugins do not support unloading.
        std::mem::forget(lib);
        if api_ptr.is_null() {
            return Err(Error::NotAPlugin {
                path: path.to_path_buf(),
                reason: "GetPjrtApi returned null".into(),
            });
        }
        // SAFETY: non-null pointer to the plugin's static API table, valid for
        // the life of the process (the library is never closed).
        let api: &'static sys::PJRT_Api = unsafe { &*api_ptr };
        let version = (
            api.pjrt_api_version.major_version,
            api.pjrt_api_version.minor_version,
        );
        if version.0 != API_MAJOR
            || version.1 < MIN_API_MINOR
            || api.struct_size < std::mem::offset_of!(sys::PJRT_Api, PJRT_Plugin_Attributes)
        {
            return Err(Error::ApiVersion {
                path: path.to_path_buf(),
                major: version.0,
                minor: version.1,
                need_major: API_MAJOR,
                need_minor: MIN_API_MINOR,
            });
        }
        let mut plugin = Plugin {
            path: path.to_path_buf(),
            stamp,
            api,
            version,
            attributes: Vec::new(),
            kernels: OnceLock::new(),
        };
        pjrt_call!(
            &plugin,
            PJRT_Plugin_Initialize,
            &mut sys::PJRT_Plugin_Initialize_Args::new()
        )?;
        let mut args = sys::PJRT_Plugin_Attributes_Args::new();
        if pjrt_call!(&plugin, PJRT_Plugin_Attributes, &mut args).is_ok() {
            // SAFETY: the plugin returned `num_attributes` values that live as
            // long as the process.
            plugin.attributes = unsafe { read_named_values(args.attributes, args.num_attributes) };
        }
        Ok(plugin)
    }

    /// The file this plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stamp (inode, size, times) of [`Plugin::path`] when it was
    /// loaded: a file on disk with another stamp is not the code that runs.
    pub fn file_stamp(&self) -> FileStamp {
        self.stamp
    }

    /// The C API version the plugin implements, `(major, minor)`.
    pub fn api_version(&self) -> (i32, i32) {
        self.version
    }

    /// The plugin's attributes (`xla_version`, `stablehlo_current_version`, ...).
    pub fn attributes(&self) -> &[(String, NamedValue)] {
        &self.attributes
    }

    /// One attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&NamedValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Registers xlayer's CPU kernels (`crate::pjrt::ffi`) with this plugin
    /// on the first call; returns whether they are registered, or why not
    /// (no FFI extension, one without `register_handler`, or the plugin's
    /// refusal, in words). Registering also on a non-CPU plugin is
    /// harmless (the kernels are registered for the `Host` platform only);
    /// [`crate::Client::cpu_kernels`] asks only for CPU clients.
    pub fn cpu_kernels(&self) -> std::result::Result<(), &str> {
        self.kernels
            .get_or_init(|| super::ffi::register(self))
            .as_ref()
            .map(|_| ())
            .map_err(String::as_str)
    }

    pub(crate) fn api(&self) -> &'static sys::PJRT_Api {
        self.api
    }

    /// Whether the plugin's table covers the function at byte `offset`.
    pub(crate) fn has(&self, offset: usize) -> bool {
        offset + std::mem::size_of::<*const c_void>() <= self.api.struct_size
    }

    /// Converts a returned `PJRT_Error*` into a `Result`, freeing the error.
    pub(crate) fn check(&self, err: *mut sys::PJRT_Error, function: &'static str) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        let mut message = String::from("(no message)");
        if let Some(f) = self.api.PJRT_Error_Message {
            let mut a = sys::PJRT_Error_Message_Args::new();
            a.error = err;
            // SAFETY: `err` is a live error returned by the plugin.
            unsafe { f(&mut a) };
            if !a.message.is_null() {
                // SAFETY: message/message_size describe a buffer owned by `err`,
                // which is still alive here.
                let bytes =
                    unsafe { std::slice::from_raw_parts(a.message.cast::<u8>(), a.message_size) };
                message = String::from_utf8_lossy(bytes).into_owned();
            }
        }
        let mut code = ErrorCode::Unknown;
        if let Some(f) = self.api.PJRT_Error_GetCode {
            let mut a = sys::PJRT_Error_GetCode_Args::new();
            a.error = err;
            // SAFETY: `err` is a live error returned by the plugin.
            let e2 = unsafe { f(&mut a) };
            if e2.is_null() {
                code = ErrorCode::from_raw(a.code.0);
            } else {
                self.destroy_error(e2);
            }
        }
        self.destroy_error(err);
        Err(Error::Pjrt {
            function,
            code,
            message,
        })
    }

    fn destroy_error(&self, err: *mut sys::PJRT_Error) {
        if let Some(f) = self.api.PJRT_Error_Destroy {
            let mut a = sys::PJRT_Error_Destroy_Args::new();
            a.error = err;
            // SAFETY: `err` is a live error owned by us; it is not used again.
            unsafe { f(&mut a) };
        }
    }
}
