//! The C structs of XLA's FFI (`xla/ffi/api/c_api.h`) and of PJRT's FFI
//! extension (`xla/pjrt/c/pjrt_c_api_ffi_extension.h`, version 2) that
//! xlayer's kernels use, written by hand from those headers' layouts (the
//! generated `sys` covers `pjrt_c_api.h` only). Only the fields read or
//! written here are typed; trailing fields a struct may have are never
//! touched. C enums are `u32`/`i32` (an `int` on every target XLA builds
//! for).
// Fields that are never read keep the C layouts whole.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_void};

use super::super::sys;

/// `XLA_FFI_Extension_Metadata`: the call frame's extension when XLA asks a
/// handler for its API version and traits (at registration).
pub(crate) const EXTENSION_METADATA: u32 = 1;
/// `XLA_FFI_ExecutionStage_EXECUTE`.
pub(crate) const STAGE_EXECUTE: u32 = 3;
/// `XLA_FFI_ArgType_BUFFER` / `XLA_FFI_RetType_BUFFER`.
pub(crate) const BUFFER: u32 = 1;
/// `XLA_FFI_Error_Code_INVALID_ARGUMENT`.
pub(crate) const ERROR_INVALID_ARGUMENT: u32 = 3;
/// `XLA_FFI_Error_Code_INTERNAL`.
pub(crate) const ERROR_INTERNAL: u32 = 13;

/// `XLA_FFI_DataType` values of the dtypes the kernels take.
pub(crate) mod dtype {
    /// `S8`.
    pub(crate) const S8: u32 = 2;
    /// `U8`.
    pub(crate) const U8: u32 = 6;
    /// `F16`.
    pub(crate) const F16: u32 = 10;
    /// `F32`.
    pub(crate) const F32: u32 = 11;
}

/// `XLA_FFI_Api_Version`.
#[repr(C)]
pub(crate) struct ApiVersion {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) major_version: c_int,
    pub(crate) minor_version: c_int,
}

/// `XLA_FFI_InternalExtension` (the base of XLA's own call-frame extensions).
#[repr(C)]
pub(crate) struct InternalExtension {
    pub(crate) struct_size: usize,
    pub(crate) ty: u32,
    pub(crate) next: *mut InternalExtension,
}

/// `XLA_FFI_Metadata`.
#[repr(C)]
pub(crate) struct Metadata {
    pub(crate) struct_size: usize,
    pub(crate) api_version: ApiVersion,
    pub(crate) traits: u32,
}

/// `XLA_FFI_Metadata_Extension`.
#[repr(C)]
pub(crate) struct MetadataExtension {
    pub(crate) base: InternalExtension,
    pub(crate) metadata: *mut Metadata,
}

/// `XLA_FFI_Buffer`: one argument or result array.
#[repr(C)]
pub(crate) struct Buffer {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) dtype: u32,
    pub(crate) data: *mut c_void,
    pub(crate) rank: i64,
    pub(crate) dims: *const i64,
}

/// `XLA_FFI_Args` / `XLA_FFI_Rets` (same layout): `size` entries of
/// `types` and pointers.
#[repr(C)]
pub(crate) struct List {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) size: i64,
    pub(crate) types: *const u32,
    pub(crate) ptrs: *const *mut c_void,
}

/// `XLA_FFI_Attrs`.
#[repr(C)]
pub(crate) struct Attrs {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) size: i64,
    pub(crate) types: *const u32,
    pub(crate) names: *const *const c_void,
    pub(crate) attrs: *const *mut c_void,
}

/// `XLA_FFI_CallFrame`.
#[repr(C)]
pub(crate) struct CallFrame {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut InternalExtension,
    pub(crate) api: *const Api,
    pub(crate) ctx: *mut c_void,
    pub(crate) stage: u32,
    pub(crate) args: List,
    pub(crate) rets: List,
    pub(crate) attrs: Attrs,
}

/// `XLA_FFI_Error` (opaque).
#[repr(C)]
pub(crate) struct FfiError {
    _unused: [u8; 0],
}

/// `XLA_FFI_Error_Create_Args`.
#[repr(C)]
pub(crate) struct ErrorCreateArgs {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) message: *const c_char,
    pub(crate) errc: u32,
}

/// The head of `XLA_FFI_Api`, up to `XLA_FFI_Error_Create`.
#[repr(C)]
pub(crate) struct Api {
    pub(crate) struct_size: usize,
    pub(crate) extension_start: *mut c_void,
    pub(crate) api_version: ApiVersion,
    pub(crate) internal_api: *const c_void,
    pub(crate) error_create: Option<unsafe extern "C" fn(*mut ErrorCreateArgs) -> *mut FfiError>,
}

/// `XLA_FFI_Handler`.
pub(crate) type Handler = unsafe extern "C" fn(*mut CallFrame) -> *mut FfiError;

/// `PJRT_FFI_Register_Handler_Args` (FFI extension version 2) as the
/// pinned plugin reads it: no `api_version` field between the name and the
/// handler (which some revisions of the header have). Its
/// `PJRT_FFI_Register_Handler` requires a struct size of at least 52 and
/// reads the name at 8/16, the handler at 24, the platform at 32/40 and
/// the traits at 48 (from its machine code); a struct with `api_version`
/// made it read the handler pointer as a string length and throw.
#[repr(C)]
pub(crate) struct RegisterHandlerArgs {
    pub(crate) struct_size: usize,
    pub(crate) target_name: *const c_char,
    pub(crate) target_name_size: usize,
    pub(crate) handler: *mut c_void,
    pub(crate) platform_name: *const c_char,
    pub(crate) platform_name_size: usize,
    pub(crate) traits: u32,
}

/// The header's `PJRT_FFI_Register_Handler_Args_STRUCT_SIZE`: up to and
/// including `traits`.
pub(crate) const REGISTER_HANDLER_ARGS_SIZE: usize =
    std::mem::offset_of!(RegisterHandlerArgs, traits) + std::mem::size_of::<u32>();

/// `PJRT_FFI_Extension` (version 2: with `register_handler`).
#[repr(C)]
pub(crate) struct PjrtFfiExtension {
    pub(crate) base: sys::PJRT_Extension_Base,
    pub(crate) type_id_register: *const c_void,
    pub(crate) user_data_add: *const c_void,
    pub(crate) register_handler:
        Option<unsafe extern "C" fn(*mut RegisterHandlerArgs) -> *mut sys::PJRT_Error>,
}

/// The extension's struct size when it has `register_handler`.
pub(crate) const PJRT_FFI_EXTENSION_V2_SIZE: usize = std::mem::size_of::<PjrtFfiExtension>();

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The offsets the headers give on x86-64 / aarch64 (LP64).
    #[test]
    fn layouts_match_the_headers() {
        assert_eq!(size_of::<ApiVersion>(), 24);
        assert_eq!(offset_of!(Buffer, data), 24);
        assert_eq!(offset_of!(Buffer, dims), 40);
        assert_eq!(size_of::<List>(), 40);
        assert_eq!(offset_of!(CallFrame, stage), 32);
        assert_eq!(offset_of!(CallFrame, args), 40);
        assert_eq!(offset_of!(CallFrame, rets), 80);
        assert_eq!(offset_of!(CallFrame, attrs), 120);
        assert_eq!(offset_of!(Api, error_create), 48);
        assert_eq!(offset_of!(Metadata, traits), 32);
        assert_eq!(offset_of!(MetadataExtension, metadata), 24);
        assert_eq!(REGISTER_HANDLER_ARGS_SIZE, 52);
        assert_eq!(PJRT_FFI_EXTENSION_V2_SIZE, 48);
    }
}
