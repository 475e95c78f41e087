//! The floor: one compiled program run through the PJRT C API directly,
//! with nothing of xlayer's safe API in between (only its bindgen types).
//!
//! Setup loads the plugin (`dlopen` + `GetPjrtApi`), initialises it, creates
//! a client, compiles, and uploads the arguments to the first device. The
//! measured call is [`RawPjrt::execute_and_drop`]: one
//! `PJRT_LoadedExecutable_Execute` with no events requested, then
//! `PJRT_Buffer_Destroy` of the output. Any error panics: this is a bench.

use std::path::Path;
use std::ptr;

use xlayer::pjrt::sys;

/// A zeroed argument struct of the C API with `struct_size` set to the
/// header's `*_STRUCT_SIZE`: `args!(PJRT_Foo_Args, PJRT_Foo_Args_STRUCT_SIZE)`.
macro_rules! args {
    ($t:ident, $size:ident) => {{
        // SAFETY: every argument struct of the PJRT C API is plain C data
        // (integers, raw pointers, nullable function pointers), for which
        // all-zero bytes are a valid value.
        let mut a: sys::$t = unsafe { std::mem::zeroed() };
        a.struct_size = sys::$size.0 as usize;
        a
    }};
}

/// Calls a function of the table, panicking on a returned `PJRT_Error`.
macro_rules! call {
    ($api:expr, $func:ident, $args:expr) => {{
        let f = $api.$func.expect(stringify!($func));
        let args = $args;
        // SAFETY: `f` comes from the plugin's table; `args` is a zeroed
        // argument struct with `struct_size` set, whose pointers are valid
        // for the duration of the call.
        let err = unsafe { f(args) };
        check($api, err, stringify!($func));
    }};
}

fn check(api: &sys::PJRT_Api, err: *mut sys::PJRT_Error, what: &str) {
    if err.is_null() {
        return;
    }
    let mut m = args!(PJRT_Error_Message_Args, PJRT_Error_Message_Args_STRUCT_SIZE);
    m.error = err;
    // SAFETY: `err` is a live error returned by the plugin; the message it
    // points to is owned by `err`, read before the panic unwinds.
    let message = unsafe {
        api.PJRT_Error_Message.expect("PJRT_Error_Message")(&mut m);
        String::from_utf8_lossy(std::slice::from_raw_parts(
            m.message.cast::<u8>(),
            m.message_size,
        ))
        .into_owned()
    };
    panic!("{what} failed: {message}");
}

/// A client, a compiled program and its uploaded arguments.
pub struct RawPjrt {
    api: &'static sys::PJRT_Api,
    client: *mut sys::PJRT_Client,
    exe: *mut sys::PJRT_LoadedExecutable,
    args: Vec<*mut sys::PJRT_Buffer>,
}

impl RawPjrt {
    /// Loads the plugin at `path`, compiles `mlir` (StableHLO text) with
    /// `compile_options` (a serialized `CompileOptionsProto`) and uploads
    /// each `(data, dims)` of `inputs` as an f32 array on the first device.
    pub fn new(
        path: &Path,
        mlir: &str,
        compile_options: &[u8],
        inputs: &[(&[f32], &[i64])],
    ) -> RawPjrt {
        // SAFETY: loading the PJRT plugin runs its initialisers. xlayer may
        // have loaded the same file: dlopen then returns the same handle.
        let lib = unsafe { libloading::Library::new(path) }.expect("dlopen");
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin; the
        // table it returns is static data of the library, which is never
        // unloaded (forgotten below).
        let api: &'static sys::PJRT_Api = unsafe {
            let get_api = lib
                .get::<unsafe extern "C" fn() -> *const sys::PJRT_Api>(b"GetPjrtApi\0")
                .expect("GetPjrtApi");
            &*get_api()
        };
        std::mem::forget(lib);

        call!(
            api,
            PJRT_Plugin_Initialize,
            &mut args!(
                PJRT_Plugin_Initialize_Args,
                PJRT_Plugin_Initialize_Args_STRUCT_SIZE
            )
        );
        let mut c = args!(PJRT_Client_Create_Args, PJRT_Client_Create_Args_STRUCT_SIZE);
        call!(api, PJRT_Client_Create, &mut c);
        let client = c.client;

        let mut d = args!(
            PJRT_Client_AddressableDevices_Args,
            PJRT_Client_AddressableDevices_Args_STRUCT_SIZE
        );
        d.client = client;
        call!(api, PJRT_Client_AddressableDevices, &mut d);
        assert!(d.num_addressable_devices > 0);
        // SAFETY: the plugin returned a non-empty array of devices owned by the client.
        let device = unsafe { *d.addressable_devices };

        let format = b"mlir";
        let mut program = args!(PJRT_Program, PJRT_Program_STRUCT_SIZE);
        program.code = mlir.as_ptr() as *mut std::ffi::c_char; // read only
        program.code_size = mlir.len();
        program.format = format.as_ptr().cast();
        program.format_size = format.len();
        let mut comp = args!(
            PJRT_Client_Compile_Args,
            PJRT_Client_Compile_Args_STRUCT_SIZE
        );
        comp.client = client;
        comp.program = &program;
        comp.compile_options = compile_options.as_ptr().cast();
        comp.compile_options_size = compile_options.len();
        call!(api, PJRT_Client_Compile, &mut comp);

        let mut args = Vec::new();
        for (data, dims) in inputs {
            let mut u = args!(
                PJRT_Client_BufferFromHostBuffer_Args,
                PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE
            );
            u.client = client;
            u.data = data.as_ptr().cast();
            u.type_ = sys::PJRT_Buffer_Type::PJRT_Buffer_Type_F32;
            u.dims = dims.as_ptr();
            u.num_dims = dims.len();
            u.host_buffer_semantics = sys::PJRT_HostBufferSemantics::PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes;
            u.device = device;
            call!(api, PJRT_Client_BufferFromHostBuffer, &mut u);
            // `data` is borrowed only for this function: wait until the
            // plugin is done reading it, then free the event.
            let mut w = args!(PJRT_Event_Await_Args, PJRT_Event_Await_Args_STRUCT_SIZE);
            w.event = u.done_with_host_buffer;
            call!(api, PJRT_Event_Await, &mut w);
            let mut e = args!(PJRT_Event_Destroy_Args, PJRT_Event_Destroy_Args_STRUCT_SIZE);
            e.event = u.done_with_host_buffer;
            call!(api, PJRT_Event_Destroy, &mut e);
            args.push(u.buffer);
        }
        RawPjrt {
            api,
            client,
            exe: comp.executable,
            args,
        }
    }

    /// The measured call: execute on the uploaded arguments (the program has
    /// one output), then destroy the output buffer.
    #[inline(never)]
    pub fn execute_and_drop(&self) {
        let mut out: *mut sys::PJRT_Buffer = ptr::null_mut();
        let arg_list: *const *mut sys::PJRT_Buffer = self.args.as_ptr();
        let out_list: *mut *mut sys::PJRT_Buffer = &mut out;
        let mut options = args!(PJRT_ExecuteOptions, PJRT_ExecuteOptions_STRUCT_SIZE);
        let mut a = args!(
            PJRT_LoadedExecutable_Execute_Args,
            PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE
        );
        a.executable = self.exe;
        a.options = &mut options;
        a.argument_lists = &arg_list;
        a.num_devices = 1;
        a.num_args = self.args.len();
        a.output_lists = &out_list;
        call!(self.api, PJRT_LoadedExecutable_Execute, &mut a);
        let mut d = args!(
            PJRT_Buffer_Destroy_Args,
            PJRT_Buffer_Destroy_Args_STRUCT_SIZE
        );
        d.buffer = out;
        call!(self.api, PJRT_Buffer_Destroy, &mut d);
    }
}

impl Drop for RawPjrt {
    fn drop(&mut self) {
        for &buffer in &self.args {
            let mut d = args!(
                PJRT_Buffer_Destroy_Args,
                PJRT_Buffer_Destroy_Args_STRUCT_SIZE
            );
            d.buffer = buffer;
            call!(self.api, PJRT_Buffer_Destroy, &mut d);
        }
        let mut e = args!(
            PJRT_LoadedExecutable_Destroy_Args,
            PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE
        );
        e.executable = self.exe;
        call!(self.api, PJRT_LoadedExecutable_Destroy, &mut e);
        let mut c = args!(
            PJRT_Client_Destroy_Args,
            PJRT_Client_Destroy_Args_STRUCT_SIZE
        );
        c.client = self.client;
        call!(self.api, PJRT_Client_Destroy, &mut c);
    }
}
