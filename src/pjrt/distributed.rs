//! More than one process: PJRT's distributed runtime through the C API.
//!
//! A client of a multi-process run is created with its node's id, the node
//! count, and the key-value store callbacks of `PJRT_Client_Create_Args`
//! (`kv_get`, `kv_try_get`, `kv_put`), through which the plugin's nodes
//! exchange their topology and collective ids. [`Client::distributed`]
//! passes a [`KeyValueStore`] as those callbacks and then checks that the
//! plugin really joined the others: its global device list must hold more
//! than its own devices.
//!
//! Status (see `docs/sharding.md`, "More than one process"): GPU plugins
//! implement this (NCCL cliques set up over the store). The pinned CPU
//! plugin has only in-process collectives: it ignores `node_id` /
//! `num_nodes` and never calls the store, so [`Client::distributed`] gives
//! [`Error::DistributedUnsupported`] there.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::client::{Client, ClientOptions};
use super::kv_store::KeyValueStore;
use super::plugin::{pjrt_call, Args, NamedValue, Plugin};
use super::sys;
use crate::error::{Error, Result};

/// Where a process stands in a distributed run: its node id, the node
/// count, and the store all nodes share.
///
/// ```
/// use std::sync::Arc;
/// use xlayer::pjrt::{distributed::DistributedOptions, kv_store::FileKvStore};
/// let dir = std::env::temp_dir().join(format!("xlayer-dist-doc-{}", std::process::id()));
/// let store = Arc::new(FileKvStore::new(&dir)?);
/// let opts = DistributedOptions::new(1, 2, store.clone())?;
/// assert_eq!((opts.node_id(), opts.num_nodes()), (1, 2));
/// assert!(matches!(
///     DistributedOptions::new(2, 2, store),
///     Err(xlayer::Error::InvalidSetting { field: "node_id", .. })
/// ));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DistributedOptions {
    node_id: usize,
    num_nodes: usize,
    store: Arc<dyn KeyValueStore>,
}

impl DistributedOptions {
    /// Node `node_id` of `num_nodes`, sharing `store`.
    ///
    /// Errors: [`Error::InvalidSetting`] for `num_nodes == 0`, a
    /// `node_id >= num_nodes`, or a count past `i64::MAX`.
    pub fn new(
        node_id: usize,
        num_nodes: usize,
        store: Arc<dyn KeyValueStore>,
    ) -> Result<DistributedOptions> {
        let invalid = |field, value: usize, reason| Error::InvalidSetting {
            what: "DistributedOptions".into(),
            field,
            value: value.to_string(),
            reason,
        };
        if num_nodes == 0 {
            return Err(invalid("num_nodes", 0, "a run has at least one node"));
        }
        if i64::try_from(num_nodes).is_err() {
            return Err(invalid(
                "num_nodes",
                num_nodes,
                "more nodes than an i64 counts",
            ));
        }
        if node_id >= num_nodes {
            return Err(invalid(
                "node_id",
                node_id,
                "node ids run from 0 to num_nodes - 1",
            ));
        }
        Ok(DistributedOptions {
            node_id,
            num_nodes,
            store,
        })
    }

    /// This process's node id.
    pub fn node_id(&self) -> usize {
        self.node_id
    }

    /// How many nodes (processes) the run has.
    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    /// The store the nodes share.
    pub fn store(&self) -> &Arc<dyn KeyValueStore> {
        &self.store
    }
}

/// What the plugin's store callbacks reach: the store, and how many times
/// the plugin called it. Boxed and owned by the client, so its address (the
/// callbacks' `user_arg`) stays valid while the plugin may call it.
pub(crate) struct KvBridge {
    store: Arc<dyn KeyValueStore>,
    calls: AtomicUsize,
}

impl Client {
    /// Creates a client of `plugin` for node `dist.node_id()` of a
    /// `dist.num_nodes()`-process run: `options` plus the plugin options
    /// `node_id` and `num_nodes` (the names GPU plugins read), with
    /// `dist.store()` passed as the C API's key-value callbacks.
    ///
    /// With more than one node, the plugin must have joined the others: its
    /// global device list ([`Client::global_device_count`]) must be larger
    /// than its addressable one.
    ///
    /// Errors: the plugin's own ([`Error::Pjrt`], e.g. an option it does
    /// not know, or a store timeout it reports while waiting for the other
    /// nodes); [`Error::DistributedUnsupported`] when the client came up
    /// seeing only its own devices (the pinned CPU plugin: it has no
    /// cross-process runtime and never calls the store).
    pub fn distributed(
        plugin: &Arc<Plugin>,
        options: &ClientOptions,
        dist: &DistributedOptions,
    ) -> Result<Client> {
        // Both fit in i64: checked in DistributedOptions::new.
        let options = options
            .clone()
            .option("node_id", NamedValue::Int64(dist.node_id as i64))
            .option("num_nodes", NamedValue::Int64(dist.num_nodes as i64));
        let bridge = Box::new(KvBridge {
            store: dist.store.clone(),
            calls: AtomicUsize::new(0),
        });
        let client = Client::create(plugin, &options, Some(bridge))?;
        if dist.num_nodes > 1 {
            let global = client.global_device_count()?;
            let local = client.devices().len();
            if global <= local {
                return Err(Error::DistributedUnsupported {
                    platform: client.platform_name().to_string(),
                    plugin: plugin.path().to_path_buf(),
                    num_nodes: dist.num_nodes,
                    global_devices: global,
                    local_devices: local,
                    store_calls: client.store_calls(),
                });
            }
        }
        Ok(client)
    }

    /// How many devices the client's whole run spans, on every node
    /// (`PJRT_Client_Devices`); the same as `devices().len()` for a
    /// single-process client.
    ///
    /// Errors: the plugin's own ([`Error::Pjrt`], [`Error::Unsupported`]).
    pub fn global_device_count(&self) -> Result<usize> {
        let mut a = sys::PJRT_Client_Devices_Args::new();
        a.client = self.inner.raw;
        pjrt_call!(&self.inner.plugin, PJRT_Client_Devices, &mut a)?;
        Ok(a.num_devices)
    }

    /// How many times the plugin called this client's key-value store (0
    /// for a client made without one).
    pub fn store_calls(&self) -> usize {
        self.inner
            .kv
            .as_ref()
            .map_or(0, |b| b.calls.load(Ordering::Relaxed))
    }
}

/// Sets the callback fields of `a` to reach `bridge`.
pub(crate) fn install(a: &mut sys::PJRT_Client_Create_Args, bridge: &KvBridge) {
    let user_arg = std::ptr::from_ref(bridge).cast_mut().cast();
    a.kv_get_callback = Some(kv_get);
    a.kv_get_user_arg = user_arg;
    a.kv_try_get_callback = Some(kv_try_get);
    a.kv_try_get_user_arg = user_arg;
    a.kv_put_callback = Some(kv_put);
    a.kv_put_user_arg = user_arg;
}

/// The key of a callback, as text.
///
/// # Safety
/// `key` must point to `len` readable bytes (or be null with `len == 0`).
unsafe fn key_of(key: *const c_char, len: usize) -> Result<String> {
    if key.is_null() || len == 0 {
        return Ok(String::new());
    }
    // SAFETY: the caller guarantees `len` readable bytes at `key`.
    let bytes = unsafe { std::slice::from_raw_parts(key.cast::<u8>(), len) };
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Misuse {
        what: format!("the key-value store key {bytes:?}"),
        reason: "the plugin passed a key that is not UTF-8",
    })
}

/// A value handed to the plugin: `[len: usize][bytes]` in one boxed
/// allocation; the plugin gets a pointer past the length and gives it back
/// to [`free_value`].
fn leak_value(v: &[u8]) -> (*mut c_char, usize) {
    let mut buf = Vec::with_capacity(size_of::<usize>() + v.len());
    buf.extend_from_slice(&v.len().to_ne_bytes());
    buf.extend_from_slice(v);
    let raw = Box::into_raw(buf.into_boxed_slice()).cast::<u8>();
    // SAFETY: the allocation holds size_of::<usize>() + v.len() bytes.
    (unsafe { raw.add(size_of::<usize>()) }.cast(), v.len())
}

/// Frees a value of [`leak_value`]; the plugin's deleter callback.
unsafe extern "C" fn free_value(value: *mut c_char) {
    if value.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: `value` came from `leak_value`: the length lies just
        // before it, in the same allocation, which is freed exactly once.
        unsafe {
            let base = value.cast::<u8>().sub(size_of::<usize>());
            let mut len = [0u8; size_of::<usize>()];
            std::ptr::copy_nonoverlapping(base, len.as_mut_ptr(), len.len());
            let total = size_of::<usize>() + usize::from_ne_bytes(len);
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                base, total,
            )));
        }
    });
}

/// Reports `e` to the plugin through its error constructor.
///
/// # Safety
/// `make` must be the callback-error pointer of the plugin's argument struct.
unsafe fn report(make: *mut sys::PJRT_CallbackError, e: &Error) -> *mut sys::PJRT_Error {
    let code = match e {
        Error::KvTimeout { .. } => sys::PJRT_Error_Code::PJRT_Error_Code_DEADLINE_EXCEEDED,
        Error::KvNotFound { .. } => sys::PJRT_Error_Code::PJRT_Error_Code_NOT_FOUND,
        _ => sys::PJRT_Error_Code::PJRT_Error_Code_INTERNAL,
    };
    let message = e.to_string();
    // SAFETY: the caller passes the plugin's own pointer (checked for null).
    match (!make.is_null()).then(|| unsafe { *make }).flatten() {
        // SAFETY: the plugin's error constructor, given a message that
        // lives for the call (it copies it).
        Some(f) => unsafe { f(code, message.as_ptr().cast(), message.len()) },
        None => std::ptr::null_mut(),
    }
}

/// Runs `f` on the bridge of `user_arg`, counting the call; a panic
/// becomes an error (it must not unwind into the plugin).
///
/// # Safety
/// `user_arg` must be the `KvBridge` pointer given by [`install`].
unsafe fn with_bridge<T>(
    user_arg: *mut std::ffi::c_void,
    f: impl FnOnce(&KvBridge) -> Result<T>,
) -> Result<T> {
    // SAFETY: `install` set `user_arg` to a boxed KvBridge owned by the
    // client whose creation or use makes this call, so it is alive.
    let bridge = unsafe { &*user_arg.cast::<KvBridge>() };
    bridge.calls.fetch_add(1, Ordering::Relaxed);
    catch_unwind(AssertUnwindSafe(|| f(bridge))).unwrap_or_else(|_| {
        Err(Error::Misuse {
            what: "the key-value store".into(),
            reason: "it panicked inside a plugin callback",
        })
    })
}

unsafe extern "C" fn kv_get(args: *mut sys::PJRT_KeyValueGetCallback_Args) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes a valid, exclusive argument struct.
    let a = unsafe { &mut *args };
    let timeout = Duration::from_millis(u64::try_from(a.timeout_in_ms).unwrap_or(0));
    // SAFETY: user_arg is ours (install); key/key_size are the plugin's.
    let got = unsafe {
        with_bridge(a.user_arg, |b| {
            b.store.get(&key_of(a.key, a.key_size)?, timeout)
        })
    };
    match got {
        Ok(v) => {
            (a.value, a.value_size) = leak_value(&v);
            a.value_deleter_callback = Some(free_value);
            std::ptr::null_mut()
        }
        // SAFETY: the plugin's own error constructor.
        Err(e) => unsafe { report(a.callback_error, &e) },
    }
}

unsafe extern "C" fn kv_try_get(
    args: *mut sys::PJRT_KeyValueTryGetCallback_Args,
) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes a valid, exclusive argument struct.
    let a = unsafe { &mut *args };
    // SAFETY: user_arg is ours (install); key/key_size are the plugin's.
    let got = unsafe {
        with_bridge(a.user_arg, |b| {
            let key = key_of(a.key, a.key_size)?;
            b.store.try_get(&key)?.ok_or(Error::KvNotFound { key })
        })
    };
    match got {
        Ok(v) => {
            (a.value, a.value_size) = leak_value(&v);
            a.value_deleter_callback = Some(free_value);
            std::ptr::null_mut()
        }
        // SAFETY: the plugin's own error constructor.
        Err(e) => unsafe { report(a.callback_error, &e) },
    }
}

unsafe extern "C" fn kv_put(args: *mut sys::PJRT_KeyValuePutCallback_Args) -> *mut sys::PJRT_Error {
    // SAFETY: the plugin passes a valid argument struct.
    let a = unsafe { &*args };
    // SAFETY: user_arg is ours (install); key and value pointers and sizes
    // are the plugin's, readable for the call.
    let put = unsafe {
        with_bridge(a.user_arg, |b| {
            let value = if a.value.is_null() || a.value_size == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(a.value.cast::<u8>(), a.value_size)
            };
            b.store.put(&key_of(a.key, a.key_size)?, value)
        })
    };
    match put {
        Ok(()) => std::ptr::null_mut(),
        // SAFETY: the plugin's own error constructor.
        Err(e) => unsafe { report(a.callback_error, &e) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pjrt::kv_store::FileKvStore;

    /// Calls the callbacks as a plugin would, through the C signatures.
    #[test]
    fn the_callbacks_put_get_and_free_through_the_c_signatures() {
        let dir = std::env::temp_dir().join(format!("xlayer-kv-bridge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bridge = KvBridge {
            store: Arc::new(FileKvStore::new(&dir).unwrap()),
            calls: AtomicUsize::new(0),
        };
        let mut create = sys::PJRT_Client_Create_Args::new();
        install(&mut create, &bridge);
        let (key, value) = (b"node:1/topology", b"\x00\x01bytes");
        let mut put = sys::PJRT_KeyValuePutCallback_Args {
            struct_size: sys::PJRT_KeyValuePutCallback_Args_STRUCT_SIZE.0 as usize,
            extension_start: std::ptr::null_mut(),
            key: key.as_ptr().cast(),
            key_size: key.len(),
            value: value.as_ptr().cast(),
            value_size: value.len(),
            callback_error: std::ptr::null_mut(),
            user_arg: create.kv_put_user_arg,
        };
        let put_fn = create.kv_put_callback.unwrap();
        // SAFETY: a well-formed argument struct whose pointers live here.
        assert!(unsafe { put_fn(&mut put) }.is_null());
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut get: sys::PJRT_KeyValueGetCallback_Args = unsafe { std::mem::zeroed() };
        get.key = key.as_ptr().cast();
        get.key_size = key.len();
        get.timeout_in_ms = 1000;
        get.user_arg = create.kv_get_user_arg;
        let get_fn = create.kv_get_callback.unwrap();
        // SAFETY: as above.
        assert!(unsafe { get_fn(&mut get) }.is_null());
        // SAFETY: the callback returned `value_size` bytes at `value`.
        let got = unsafe { std::slice::from_raw_parts(get.value.cast::<u8>(), get.value_size) };
        assert_eq!(got, value);
        // SAFETY: the deleter the callback gave, called once on its value.
        unsafe { get.value_deleter_callback.unwrap()(get.value) };
        // A missing key without an error constructor: no error object can
        // be made, and nothing is returned.
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut try_get: sys::PJRT_KeyValueTryGetCallback_Args = unsafe { std::mem::zeroed() };
        try_get.key = b"absent".as_ptr().cast();
        try_get.key_size = 6;
        try_get.user_arg = create.kv_try_get_user_arg;
        // SAFETY: as above.
        assert!(unsafe { create.kv_try_get_callback.unwrap()(&mut try_get) }.is_null());
        assert!(try_get.value.is_null());
        assert_eq!(bridge.calls.load(Ordering::Relaxed), 3);
        std::fs::remove_dir_all(&dir).ok();
    }
}
