//! `Client` and `Device`: a PJRT client over one plugin, and its devices.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::buffer::Buffer;
use super::event;
use super::plugin::{pjrt_call, Args, NamedValue, Plugin, RawNamedValues};
use super::sys;
use crate::dtype::{ArraySpec, NativeType};
use crate::error::{Error, Result};

/// Options for creating a client, passed to the plugin as named values.
///
/// ```
/// let opts = xlayer::ClientOptions::new().cpu_device_count(2);
/// assert_eq!(opts.values().len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientOptions {
    values: Vec<(String, NamedValue)>,
}

impl ClientOptions {
    /// No options: the plugin's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of CPU devices the CPU plugin exposes (its default is 4).
    pub fn cpu_device_count(self, n: i64) -> Self {
        self.option("cpu_device_count", NamedValue::Int64(n))
    }

    /// Any plugin-specific option.
    pub fn option(mut self, name: impl Into<String>, value: NamedValue) -> Self {
        let name = name.into();
        self.values.retain(|(k, _)| *k != name);
        self.values.push((name, value));
        self
    }

    /// The options set.
    pub fn values(&self) -> &[(String, NamedValue)] {
        &self.values
    }
}

/// One addressable device of a client.
#[derive(Clone)]
pub struct Device {
    pub(crate) raw: *mut sys::PJRT_Device,
    pub(crate) client_id: u64,
    index: usize,
    id: i32,
    // Shared: a device is cloned into every buffer an execute returns.
    kind: Arc<str>,
    description: Arc<str>,
}

// SAFETY: a PJRT_Device is owned by its client, immutable from our side, and
// usable from any thread; the pointer is only ever passed back to the plugin.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// Position among the client's addressable devices.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The device id the plugin assigns.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The device kind (e.g. `cpu`, `NVIDIA H100 80GB HBM3`).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The plugin's description of the device.
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw && self.client_id == other.client_id
    }
}
impl Eq for Device {}

impl std::hash::Hash for Device {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.raw as usize).hash(state);
        self.client_id.hash(state);
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({}:{} id={})", self.kind, self.index, self.id)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

pub(crate) struct ClientInner {
    pub(crate) plugin: Arc<Plugin>,
    pub(crate) raw: *mut sys::PJRT_Client,
    pub(crate) id: u64,
    platform_name: String,
    platform_version: String,
    devices: Vec<Device>,
    /// The key-value store the plugin's callbacks reach
    /// ([`Client::distributed`]); dropped after the client is destroyed.
    pub(crate) kv: Option<Box<super::distributed::KvBridge>>,
}

// SAFETY: the PJRT client is thread-safe by the C API's contract; the raw
// pointer is only passed back to the plugin, and the rest is immutable.
unsafe impl Send for ClientInner {}
// SAFETY: as above.
unsafe impl Sync for ClientInner {}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = sys::PJRT_Client_Destroy_Args::new();
        a.client = self.raw;
        let _ = pjrt_call!(&self.plugin, PJRT_Client_Destroy, &mut a);
    }
}

/// A PJRT client: the entry point for uploading data and compiling programs
/// on one plugin's devices. Cheap to clone (shared); `Send + Sync`.
///
/// Buffers and executables keep their client alive.
///
/// ```no_run
/// let client = xlayer::Client::cpu()?;
/// let x = client.buffer_from_host(&[1f32, 2.0, 3.0], &[3])?;
/// assert_eq!(x.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Client({} {}, {} devices)",
            self.platform_name(),
            self.platform_version(),
            self.devices().len()
        )
    }
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// The client in `slot` if one is still alive, else a new one from `make`.
fn shared(
    slot: &Mutex<Weak<ClientInner>>,
    make: impl FnOnce() -> Result<Client>,
) -> Result<Client> {
    let mut current = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(inner) = current.upgrade() {
        return Ok(Client { inner });
    }
    let client = make()?;
    *current = Arc::downgrade(&client.inner);
    Ok(client)
}

fn read_str(ptr: *const std::ffi::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the plugin returned `len` bytes at `ptr`, owned by an object
    // (client, device description) that is alive during this call.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

impl Client {
    /// The shared client of the CPU plugin (provisioned on first use), with
    /// one CPU device as JAX's CPU backend has (the plugin's own default is
    /// four; on this machine kind one was also up to 15% faster on an MLP
    /// forward): while any clone of it (or a buffer or
    /// executable made with it) is alive, every call returns that same
    /// client, as JAX has one CPU backend. It is also
    /// [`Client::default_client`] when `XLAYER_PJRT_PLUGIN` is not set. Use
    /// [`Client::new`] for a separate client or other options.
    ///
    /// The client is not kept in a static: when the last handle goes, it is
    /// destroyed, which waits for its running work. (A client that outlives
    /// `main` while a computation runs lets the C runtime tear the plugin
    /// down under that computation; with the CPU plugin that crashes the
    /// process at exit.)
    pub fn cpu() -> Result<Client> {
        static CPU: Mutex<Weak<ClientInner>> = Mutex::new(Weak::new());
        shared(&CPU, || {
            Client::new(&Plugin::cpu()?, &ClientOptions::new().cpu_device_count(1))
        })
    }

    /// The default client (like JAX's default backend): [`Client::cpu`], or
    /// a shared client of `XLAYER_PJRT_PLUGIN` when that is set. Layers
    /// applied to symbolic inputs are built on it.
    pub fn default_client() -> Result<Client> {
        static DEFAULT: Mutex<Weak<ClientInner>> = Mutex::new(Weak::new());
        match std::env::var_os("XLAYER_PJRT_PLUGIN").filter(|v| !v.is_empty()) {
            None => Client::cpu(),
            Some(_) => shared(&DEFAULT, Client::default_plugin),
        }
    }

    /// A new (not shared) client of the default plugin
    /// (`XLAYER_PJRT_PLUGIN`, else the CPU plugin), with one device on CPU
    /// as [`Client::cpu`] and JAX have (the CPU plugin's own default is
    /// four); other platforms keep the plugin's defaults. For N CPU devices
    /// use [`Client::cpu_devices`].
    ///
    /// Errors: those of provisioning or loading the plugin and of
    /// [`Client::new`].
    pub fn default_plugin() -> Result<Client> {
        let one_cpu = ClientOptions::new().cpu_device_count(1);
        if std::env::var_os("XLAYER_PJRT_PLUGIN").is_none_or(|v| v.is_empty()) {
            return Client::new(&Plugin::cpu()?, &one_cpu);
        }
        let plugin = Plugin::default_plugin()?;
        let client = Client::new(&plugin, &ClientOptions::new())?;
        // Only a CPU plugin knows `cpu_device_count`, and which platform a
        // plugin file is becomes known once a client exists.
        if client.platform_name() == "cpu" && client.devices().len() != 1 {
            drop(client);
            return Client::new(&plugin, &one_cpu);
        }
        Ok(client)
    }

    /// Creates a client of `plugin` with `options`.
    ///
    /// Errors: the plugin's own error (unknown option, no device found...);
    /// for a CPU client, [`Error::InvalidSetting`] when
    /// `XLAYER_CPU_KERNEL_THREADS` or `XLAYER_CPU_KERNEL_ISA` holds a value
    /// xlayer's CPU kernels cannot use (checked here, as a kernel cannot
    /// report it).
    pub fn new(plugin: &Arc<Plugin>, options: &ClientOptions) -> Result<Client> {
        Client::create(plugin, options, None)
    }

    /// Creates a client, with key-value store callbacks reaching `kv` when
    /// given (`kv` then lives as long as the client).
    pub(crate) fn create(
        plugin: &Arc<Plugin>,
        options: &ClientOptions,
        kv: Option<Box<super::distributed::KvBridge>>,
    ) -> Result<Client> {
        let raw_options = RawNamedValues::new(options.values());
        let mut a = sys::PJRT_Client_Create_Args::new();
        a.create_options = raw_options.values.as_ptr();
        a.num_options = raw_options.values.len();
        if let Some(bridge) = &kv {
            super::distributed::install(&mut a, bridge);
        }
        pjrt_call!(plugin, PJRT_Client_Create, &mut a)?;
        let raw = a.client;
        let mut inner = ClientInner {
            plugin: plugin.clone(),
            raw,
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            platform_name: String::new(),
            platform_version: String::new(),
            devices: Vec::new(),
            kv,
        };
        let mut n = sys::PJRT_Client_PlatformName_Args::new();
        n.client = raw;
        pjrt_call!(plugin, PJRT_Client_PlatformName, &mut n)?;
        inner.platform_name = read_str(n.platform_name, n.platform_name_size);
        let mut v = sys::PJRT_Client_PlatformVersion_Args::new();
        v.client = raw;
        pjrt_call!(plugin, PJRT_Client_PlatformVersion, &mut v)?;
        inner.platform_version = read_str(v.platform_version, v.platform_version_size);
        let mut d = sys::PJRT_Client_AddressableDevices_Args::new();
        d.client = raw;
        pjrt_call!(plugin, PJRT_Client_AddressableDevices, &mut d)?;
        let raws: Vec<*mut sys::PJRT_Device> = if d.addressable_devices.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin returned an array of `num_addressable_devices`
            // device pointers owned by the client.
            unsafe { std::slice::from_raw_parts(d.addressable_devices, d.num_addressable_devices) }
                .to_vec()
        };
        for (index, raw_dev) in raws.into_iter().enumerate() {
            inner
                .devices
                .push(describe_device(plugin, raw_dev, index, inner.id)?);
        }
        if inner.devices.is_empty() {
            return Err(Error::NotSupported(format!(
                "the {} client has no addressable device",
                inner.platform_name
            )));
        }
        if inner.platform_name == "cpu" {
            super::ffi::check_environment()?;
        }
        let client = Client {
            inner: Arc::new(inner),
        };
        // Registered before this client compiles or loads anything, so a
        // cached program that calls a kernel finds it.
        client.cpu_kernels();
        Ok(client)
    }

    /// Whether programs compiled by this client may call xlayer's CPU
    /// kernels (`crate::pjrt::ffi`; see
    /// [`crate::builder::Builder::set_cpu_kernels`]): a CPU client whose
    /// plugin took their registration ([`Plugin::cpu_kernels`] tells why
    /// not), unless the environment variable `XLAYER_CPU_KERNELS` is `0`
    /// (then programs keep their plain-HLO formulations, e.g. to compare).
    pub fn cpu_kernels(&self) -> bool {
        self.platform_name() == "cpu"
            && std::env::var_os("XLAYER_CPU_KERNELS").is_none_or(|v| v != "0")
            && self.inner.plugin.cpu_kernels().is_ok()
    }

    /// The plugin this client runs on.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// The platform name (`cpu`, `cuda`, `tpu`).
    pub fn platform_name(&self) -> &str {
        &self.inner.platform_name
    }

    /// The platform version string.
    pub fn platform_version(&self) -> &str {
        &self.inner.platform_version
    }

    /// The addressable devices, in the plugin's order.
    pub fn devices(&self) -> &[Device] {
        &self.inner.devices
    }

    /// The device at `index`, or [`Error::NoSuchDevice`].
    pub fn device(&self, index: usize) -> Result<&Device> {
        self.inner.devices.get(index).ok_or(Error::NoSuchDevice {
            index,
            count: self.inner.devices.len(),
        })
    }

    /// The device buffers and executables use unless told otherwise (the first).
    pub fn default_device(&self) -> &Device {
        &self.inner.devices[0]
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} client #{}", self.inner.platform_name, self.inner.id)
    }

    /// Checks that `device` belongs to this client.
    pub(crate) fn check_device(&self, device: &Device, what: &str) -> Result<()> {
        if device.client_id == self.inner.id {
            Ok(())
        } else {
            Err(Error::ForeignClient {
                what: what.to_string(),
                other: format!("client #{}", device.client_id),
                this: self.describe(),
            })
        }
    }

    /// Checks that `other` (the client of an argument) is this client;
    /// `what` names the argument in the error.
    pub(crate) fn check_same_client(
        &self,
        other: &Client,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        if other.id() == self.id() {
            Ok(())
        } else {
            Err(Error::ForeignClient {
                what: what(),
                other: other.describe(),
                this: self.describe(),
            })
        }
    }

    /// Uploads `data` as an array of shape `dims` to the default device.
    ///
    /// Errors: [`Error::HostDataSize`] when `data.len()` is not the product
    /// of `dims`; [`Error::ShapeTooLarge`] when `dims` overflow (their
    /// product, or one of them, past `i64::MAX`).
    pub fn buffer_from_host<T: NativeType>(&self, data: &[T], dims: &[usize]) -> Result<Buffer> {
        self.buffer_from_host_on(data, dims, self.default_device())
    }

    /// Uploads `data` as an array of shape `dims` to `device`.
    pub fn buffer_from_host_on<T: NativeType>(
        &self,
        data: &[T],
        dims: &[usize],
        device: &Device,
    ) -> Result<Buffer> {
        let spec = ArraySpec::new(T::DTYPE, dims);
        spec.check_size(|| "upload".into())?;
        let expected = spec.element_count();
        if data.len() != expected {
            return Err(Error::HostDataSize {
                spec,
                expected,
                actual: data.len(),
            });
        }
        // SAFETY: T is a plain-old-data NativeType with no padding
        // and no invalid bit patterns for its own reads; we only read bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        self.upload(bytes, spec, device)
    }

    /// Uploads raw little-endian bytes holding an array of `spec` to `device`.
    ///
    /// Errors: [`Error::HostDataSize`] when the byte count does not match
    /// `spec`; [`Error::ShapeTooLarge`] for a type too large to exist;
    /// [`Error::OutOfRange`] for a `bool` array holding bytes other than 0 and 1.
    pub fn buffer_from_bytes(
        &self,
        bytes: &[u8],
        spec: &ArraySpec,
        device: &Device,
    ) -> Result<Buffer> {
        check_host_bytes("Client::buffer_from_bytes", bytes, spec)?;
        self.upload(bytes, spec.clone(), device)
    }

    /// Uploads one scalar to the default device.
    pub fn scalar<T: NativeType>(&self, value: T) -> Result<Buffer> {
        self.buffer_from_host(&[value], &[])
    }

    fn upload(&self, bytes: &[u8], spec: ArraySpec, device: &Device) -> Result<Buffer> {
        // SAFETY: `bytes` is borrowed for this whole call, and the call
        // waits below until the plugin is done reading it.
        let (buffer, done) = unsafe { self.start_upload(bytes, None, spec, device)? };
        if let Some(done) = done {
            done.wait()?;
        }
        Ok(buffer)
    }

    /// Starts an upload of `bytes` (already checked against `spec`; laid
    /// out row-major, or by `byte_strides`, one per dimension, that keep
    /// every element within `bytes`) and returns the buffer with the event
    /// that fires once the plugin is done reading `bytes` (`None`: it
    /// already is).
    ///
    /// # Safety
    /// `bytes` must stay alive and unchanged until that event has fired
    /// (waited for); dropping the event does not stop the plugin reading.
    pub(super) unsafe fn start_upload(
        &self,
        bytes: &[u8],
        byte_strides: Option<&[i64]>,
        spec: ArraySpec,
        device: &Device,
    ) -> Result<(Buffer, Option<super::event::Event>)> {
        self.check_device(device, "the target device of an upload")?;
        spec.check_size(|| "upload".into())?;
        // Every dimension fits in i64: checked just above.
        let dims: Vec<i64> = spec.dims.iter().map(|&d| d as i64).collect();
        let mut a = sys::PJRT_Client_BufferFromHostBuffer_Args::new();
        a.client = self.inner.raw;
        a.data = bytes.as_ptr().cast();
        a.type_ = super::buffer::to_pjrt_type(spec.dtype);
        a.dims = dims.as_ptr();
        a.num_dims = dims.len();
        if let Some(strides) = byte_strides {
            a.byte_strides = strides.as_ptr();
            a.num_byte_strides = strides.len();
        }
        a.host_buffer_semantics =
            sys::PJRT_HostBufferSemantics::PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes;
        a.device = device.raw;
        pjrt_call!(&self.inner.plugin, PJRT_Client_BufferFromHostBuffer, &mut a)?;
        let buffer = Buffer::from_raw(self.clone(), a.buffer, spec, device.clone());
        Ok((
            buffer,
            event::Event::from_raw(&self.inner.plugin, a.done_with_host_buffer),
        ))
    }
}

/// Checks host bytes against the array type they are to fill: the byte
/// count, and for `bool` that every byte is 0 or 1 (`function` names the
/// caller in the error).
///
/// Errors: [`Error::ShapeTooLarge`], [`Error::HostDataSize`],
/// [`Error::OutOfRange`].
pub(crate) fn check_host_bytes(
    function: &'static str,
    bytes: &[u8],
    spec: &ArraySpec,
) -> Result<()> {
    let expected = spec.check_size(|| "upload".into())?;
    if bytes.len() != expected {
        return Err(Error::HostDataSize {
            spec: spec.clone(),
            expected: spec.element_count(),
            actual: bytes.len() / spec.dtype.size_in_bytes(),
        });
    }
    if spec.dtype == crate::DType::Bool && bytes.iter().any(|&b| b > 1) {
        return Err(Error::OutOfRange {
            function,
            what: format!("a byte of the bool data for {spec}"),
            value: bytes.iter().find(|&&b| b > 1).map_or(0, |&b| b).to_string(),
            expected: "0 or 1".into(),
        });
    }
    Ok(())
}

fn describe_device(
    plugin: &Arc<Plugin>,
    raw: *mut sys::PJRT_Device,
    index: usize,
    client_id: u64,
) -> Result<Device> {
    let mut g = sys::PJRT_Device_GetDescription_Args::new();
    g.device = raw;
    pjrt_call!(plugin, PJRT_Device_GetDescription, &mut g)?;
    let desc = g.device_description;
    let mut i = sys::PJRT_DeviceDescription_Id_Args::new();
    i.device_description = desc;
    pjrt_call!(plugin, PJRT_DeviceDescription_Id, &mut i)?;
    let mut k = sys::PJRT_DeviceDescription_Kind_Args::new();
    k.device_description = desc;
    pjrt_call!(plugin, PJRT_DeviceDescription_Kind, &mut k)?;
    let mut s = sys::PJRT_DeviceDescription_ToString_Args::new();
    s.device_description = desc;
    pjrt_call!(plugin, PJRT_DeviceDescription_ToString, &mut s)?;
    Ok(Device {
        raw,
        client_id,
        index,
        id: i.id,
        kind: read_str(k.device_kind, k.device_kind_size).into(),
        description: read_str(s.to_string, s.to_string_size).into(),
    })
}
