//! `xla.CompileOptionsProto`, the serialized options every compile needs.
//!
//! An empty message aborts the process inside XLA (`replica_count > 0`), so
//! the options always carry at least one replica and one partition (counts
//! of zero are refused in Rust before the compile). Multi-device compiles
//! set `num_partitions` (SPMD, one program partitioned over N devices by
//! XLA's Shardy/GSPMD partitioner) and/or `num_replicas`, plus a device
//! assignment (`xla.DeviceAssignmentProto`). Per-compile XLA
//! flags go in `env_option_overrides` (a partially filled `debug_options`
//! would replace XLA's defaults). Only the fields xlayer sets are declared;
//! the field numbers are those of XLA's `compile_options.proto`.

use std::collections::BTreeMap;

use prost::Message;

use super::client::{Client, Device};
use crate::error::{Error, ErrorCode, Result};

#[derive(Clone, PartialEq, Message)]
struct CompileOptionsProto {
    #[prost(message, optional, tag = "3")]
    executable_build_options: Option<ExecutableBuildOptionsProto>,
    #[prost(bool, tag = "4")]
    compile_portable_executable: bool,
    #[prost(btree_map = "string, message", tag = "7")]
    env_option_overrides: BTreeMap<String, OptionOverrideProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ExecutableBuildOptionsProto {
    #[prost(int64, tag = "1")]
    device_ordinal: i64,
    #[prost(int64, tag = "4")]
    num_replicas: i64,
    #[prost(int64, tag = "5")]
    num_partitions: i64,
    #[prost(bool, tag = "6")]
    use_spmd_partitioning: bool,
    #[prost(message, optional, tag = "9")]
    device_assignment: Option<DeviceAssignmentProto>,
    #[prost(bool, tag = "19")]
    use_shardy_partitioner: bool,
}

/// `xla.DeviceAssignmentProto`: `computation_devices[partition]
/// .replica_device_ids[replica]` is the global device id.
#[derive(Clone, PartialEq, Message)]
struct DeviceAssignmentProto {
    #[prost(int32, tag = "1")]
    replica_count: i32,
    #[prost(int32, tag = "2")]
    computation_count: i32,
    #[prost(message, repeated, tag = "3")]
    computation_devices: Vec<ComputationDevice>,
}

#[derive(Clone, PartialEq, Message)]
struct ComputationDevice {
    #[prost(int64, repeated, tag = "1")]
    replica_device_ids: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct OptionOverrideProto {
    #[prost(oneof = "OverrideValue", tags = "1, 2, 3, 4")]
    value: Option<OverrideValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum OverrideValue {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// The value of one XLA flag set for a single compile.
#[derive(Debug, Clone, PartialEq)]
pub enum XlaFlag {
    /// A string flag.
    String(String),
    /// A boolean flag.
    Bool(bool),
    /// An integer flag.
    Int(i64),
    /// A floating-point flag.
    Double(f64),
}

impl std::fmt::Display for XlaFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XlaFlag::String(s) => write!(f, "{s:?}"),
            XlaFlag::Bool(b) => write!(f, "{b}"),
            XlaFlag::Int(i) => write!(f, "{i}"),
            XlaFlag::Double(d) => write!(f, "{d}"),
        }
    }
}

/// XLA's answer to a compile option it does not know.
fn is_unknown_flag_message(message: &str, name: &str) -> bool {
    message.contains(&format!("No such compile option: '{name}'"))
}

/// XLA's answer to a compile option whose value it cannot take.
fn is_refused_value_message(message: &str, name: &str) -> bool {
    message.contains(&format!("While setting option {name},"))
}

/// Whether `e` is the compiler refusing the XLA flag `name`: a name it does
/// not know, or a value it cannot take.
pub(crate) fn refuses_flag(e: &Error, name: &str) -> bool {
    matches!(e, Error::Pjrt { code: ErrorCode::InvalidArgument, message, .. }
        if is_unknown_flag_message(message, name) || is_refused_value_message(message, name))
}

/// Options of one compile: the device(s) to compile for, and XLA flags.
///
/// ```
/// use xlayer::CompileOptions;
/// let opts = CompileOptions::new().xla_flag("xla_cpu_enable_fast_math", false);
/// assert_eq!(opts.flags().len(), 3); // with the two fast-min-max defaults
/// // One program partitioned over 4 devices (SPMD, Shardy partitioner):
/// let spmd = CompileOptions::new().spmd(4);
/// assert_eq!((spmd.replica_count(), spmd.partition_count()), (1, 4));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CompileOptions {
    pub(crate) device_index: Option<usize>,
    pub(crate) num_replicas: usize,
    pub(crate) num_partitions: usize,
    use_spmd_partitioning: bool,
    use_shardy_partitioner: bool,
    /// Devices, `[replica][partition]` row-major, when set.
    pub(crate) assignment: Option<Vec<Device>>,
    pub(crate) flags: BTreeMap<String, XlaFlag>,
    /// Compile in a child process: `Some(None)` finds the child,
    /// `Some(Some(path))` runs that one (see [`crate::pjrt::isolate`]).
    pub(crate) isolation: Option<Option<std::path::PathBuf>>,
    /// Whether a compile on CPU may add xlayer's measured flags
    /// ([`crate::pjrt::cpu_tuning`]); set by `new`.
    pub(crate) cpu_tuning: bool,
    /// The flags a compile added ([`crate::pjrt::cpu_tuning`]), which a
    /// build refusing them compiles without.
    pub(crate) tuned: Vec<&'static str>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            device_index: None,
            num_replicas: 1,
            num_partitions: 1,
            use_spmd_partitioning: false,
            use_shardy_partitioner: false,
            assignment: None,
            flags: BTreeMap::new(),
            isolation: None,
            cpu_tuning: false,
            tuned: Vec::new(),
        }
    }
}

impl CompileOptions {
    /// Defaults: the client's default device, and XLA's default flags
    /// except min/max NaN semantics: `xla_cpu_enable_fast_min_max` and
    /// `xla_gpu_enable_fast_min_max` are off, as in JAX, so `max(x, NaN)` is
    /// NaN (the CPU plugin's own default is the fast, NaN-dropping form).
    /// On CPU, compiles also get xlayer's measured flags where they apply
    /// ([`crate::pjrt::cpu_tuning`]: YNNPACK fusion types for a program
    /// with a convolution); turn that off with [`CompileOptions::cpu_tuning`].
    pub fn new() -> Self {
        let mut o = Self::default()
            .xla_flag("xla_cpu_enable_fast_min_max", false)
            .xla_flag("xla_gpu_enable_fast_min_max", false);
        o.cpu_tuning = true;
        o
    }

    /// No flags at all: exactly the plugin's defaults (nor any of
    /// [`crate::pjrt::cpu_tuning`]).
    pub fn plugin_defaults() -> Self {
        Self::default()
    }

    /// Compile for the addressable device at `index` (see `Client::devices`).
    pub fn device(mut self, index: usize) -> Self {
        self.device_index = Some(index);
        self
    }

    /// One program partitioned over `n` devices by XLA's SPMD partitioner
    /// (as `jax.jit` over a mesh of `n` devices): `num_partitions = n`,
    /// `use_spmd_partitioning` and `use_shardy_partitioner` on, one replica.
    /// The program says how its values are sharded (`sdy.sharding` or
    /// `mhlo.sharding` attributes); without a device assignment
    /// ([`CompileOptions::device_assignment`]) the client's first `n`
    /// devices run it. A count of 0 is refused when compiling
    /// ([`crate::Error::InvalidSetting`]).
    pub fn spmd(self, n: usize) -> Self {
        self.num_partitions(n)
            .use_spmd_partitioning(true)
            .use_shardy_partitioner(true)
    }

    /// `num_partitions`: how many devices one SPMD program spans.
    pub fn num_partitions(mut self, n: usize) -> Self {
        self.num_partitions = n;
        self
    }

    /// `num_replicas`: how many copies of the program run, each on its own
    /// device(s), with per-replica data (replica-parallel programs whose
    /// collectives name replica groups).
    pub fn num_replicas(mut self, n: usize) -> Self {
        self.num_replicas = n;
        self
    }

    /// `use_spmd_partitioning`: partition the program with XLA's SPMD
    /// partitioner, following its sharding annotations.
    pub fn use_spmd_partitioning(mut self, on: bool) -> Self {
        self.use_spmd_partitioning = on;
        self
    }

    /// `use_shardy_partitioner`: read the program's shardings as Shardy
    /// (`sdy.*`, what JAX 0.12 emits) rather than GSPMD (`mhlo.sharding`).
    pub fn use_shardy_partitioner(mut self, on: bool) -> Self {
        self.use_shardy_partitioner = on;
        self
    }

    /// The device assignment: `devices[r * partitions + p]` runs replica `r`,
    /// partition `p` (for SPMD, one replica: the devices in partition
    /// order, i.e. a mesh's devices in row-major order). Checked when
    /// compiling: as many devices as replicas × partitions
    /// ([`crate::Error::DeviceCount`]), each of the compiling client
    /// ([`crate::Error::ForeignClient`]), none twice
    /// ([`crate::Error::DuplicateDevice`]).
    pub fn device_assignment(mut self, devices: &[Device]) -> Self {
        self.assignment = Some(devices.to_vec());
        self
    }

    /// Whether `use_spmd_partitioning` is on.
    pub fn spmd_partitioning(&self) -> bool {
        self.use_spmd_partitioning
    }

    /// Whether `use_shardy_partitioner` is on.
    pub fn shardy_partitioner(&self) -> bool {
        self.use_shardy_partitioner
    }

    /// Number of replicas.
    pub fn replica_count(&self) -> usize {
        self.num_replicas
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> usize {
        self.num_partitions
    }

    /// Devices one run spans: replicas × partitions (saturating).
    pub fn device_count(&self) -> usize {
        self.num_replicas.saturating_mul(self.num_partitions)
    }

    /// Sets an XLA flag (e.g. `xla_cpu_enable_fast_math`) for this compile only.
    ///
    /// The plugin checks the name and value when compiling: a name its
    /// compiler does not know is [`crate::Error::UnknownXlaFlag`], a value
    /// it refuses [`crate::Error::InvalidXlaFlag`] (repeated enum flags such
    /// as `xla_cpu_experimental_ynn_fusion_type` take the enum's full name,
    /// e.g. `LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`).
    pub fn xla_flag(mut self, name: impl Into<String>, value: impl Into<XlaFlag>) -> Self {
        self.flags.insert(name.into(), value.into());
        self
    }

    /// Whether a compile on CPU may add xlayer's measured flags where they
    /// apply and the caller has not set them (on in
    /// [`CompileOptions::new`], off in [`CompileOptions::plugin_defaults`]);
    /// see [`crate::pjrt::cpu_tuning`].
    ///
    /// ```
    /// use xlayer::CompileOptions;
    /// // XLA's own defaults but for the min/max NaN semantics:
    /// let opts = CompileOptions::new().cpu_tuning(false);
    /// # let _ = opts;
    /// ```
    pub fn cpu_tuning(mut self, on: bool) -> Self {
        self.cpu_tuning = on;
        self
    }

    /// The same options without the XLA flag `name` (the plugin's own
    /// default then applies); unchanged when `name` is not set.
    pub fn without_xla_flag(mut self, name: &str) -> Self {
        self.flags.remove(name);
        self
    }

    /// Compiles in a child process, so that a crash of the plugin's
    /// compiler on an untrusted program (corrupt bytecode or `jax.export`
    /// artifact, pathological text) becomes [`crate::Error::PluginCrashed`]
    /// instead of killing this process. The child is the `xlayer` binary,
    /// found through `XLAYER_BIN`, as the running program, or next to it
    /// (see [`crate::pjrt::isolate`]); it sends back the compiled
    /// executable, so the program is never parsed in this process. Costs a
    /// process start and a plugin load per compile (measured in
    /// `docs/cli.md`). The compiled result is the same.
    ///
    /// Errors of the compile: [`crate::Error::PluginCrashed`] when the
    /// child dies, [`crate::Error::Isolation`] when it cannot be found or
    /// started; the compiler's own errors as without isolation.
    pub fn isolated(mut self) -> Self {
        self.isolation = Some(None);
        self
    }

    /// [`CompileOptions::isolated`] with the child program given: an
    /// `xlayer` binary of this version.
    pub fn isolated_as(mut self, child: impl Into<std::path::PathBuf>) -> Self {
        self.isolation = Some(Some(child.into()));
        self
    }

    /// Whether compiles with these options run in a child process.
    pub fn is_isolated(&self) -> bool {
        self.isolation.is_some()
    }

    /// The same options, compiled in this process.
    pub(crate) fn not_isolated(mut self) -> Self {
        self.isolation = None;
        self
    }

    /// The plugin's compile error `e` as a typed flag error when it names one
    /// of these flags (XLA answers `No such compile option: 'NAME'` and
    /// `While setting option NAME, ...`); else `e` unchanged.
    pub(crate) fn flag_error(&self, e: Error, plugin: &std::path::Path) -> Error {
        let Error::Pjrt {
            code: ErrorCode::InvalidArgument,
            message,
            ..
        } = &e
        else {
            return e;
        };
        for (name, value) in &self.flags {
            if is_unknown_flag_message(message, name) {
                return Error::UnknownXlaFlag {
                    name: name.clone(),
                    plugin: plugin.to_path_buf(),
                };
            }
            if is_refused_value_message(message, name) {
                return Error::InvalidXlaFlag {
                    name: name.clone(),
                    value: value.clone(),
                    plugin: plugin.to_path_buf(),
                    message: message.clone(),
                };
            }
        }
        e
    }

    /// The XLA flags set, by name.
    pub fn flags(&self) -> &BTreeMap<String, XlaFlag> {
        &self.flags
    }

    /// The devices a compile with these options runs on, in partition-major
    /// order `[replica][partition]`: the assignment when set, else the
    /// client's first replicas × partitions devices (for one device: the
    /// one [`CompileOptions::device`] names, else the default device).
    ///
    /// Errors: [`Error::InvalidSetting`] for zero replicas or partitions,
    /// or a single-device index together with several devices;
    /// [`Error::DeviceCount`] when the assignment's length differs from
    /// replicas × partitions, or the client has fewer devices;
    /// [`Error::ForeignClient`] for a device of another client;
    /// [`Error::DuplicateDevice`] for a device assigned twice;
    /// [`Error::NoSuchDevice`] for a device index out of range.
    pub fn resolve_devices(&self, client: &Client) -> Result<Vec<Device>> {
        for (field, n) in [
            ("num_replicas", self.num_replicas),
            ("num_partitions", self.num_partitions),
        ] {
            if n == 0 {
                return Err(Error::InvalidSetting {
                    what: "CompileOptions".into(),
                    field,
                    value: "0".into(),
                    reason: "a program runs on at least one replica of one partition",
                });
            }
        }
        let n = self
            .num_replicas
            .checked_mul(self.num_partitions)
            .ok_or(Error::DeviceCount {
                what: "CompileOptions: num_replicas x num_partitions".into(),
                expected: usize::MAX,
                actual: client.devices().len(),
            })?;
        if let Some(devices) = &self.assignment {
            if devices.len() != n {
                return Err(Error::DeviceCount {
                    what: format!(
                        "the device assignment of {} replica(s) x {} partition(s)",
                        self.num_replicas, self.num_partitions
                    ),
                    expected: n,
                    actual: devices.len(),
                });
            }
            for (i, d) in devices.iter().enumerate() {
                client.check_device(d, &format!("device {i} of the device assignment"))?;
                if devices[..i].contains(d) {
                    return Err(Error::DuplicateDevice {
                        what: "the device assignment".into(),
                        device: d.to_string(),
                    });
                }
            }
            if self.device_index.is_some() && n > 1 {
                return Err(self.index_with_many());
            }
            return Ok(devices.clone());
        }
        if n == 1 {
            return Ok(vec![match self.device_index {
                Some(i) => client.device(i)?.clone(),
                None => client.default_device().clone(),
            }]);
        }
        if self.device_index.is_some() {
            return Err(self.index_with_many());
        }
        if n > client.devices().len() {
            return Err(Error::DeviceCount {
                what: format!(
                    "a compile for {} replica(s) x {} partition(s) on the {} client",
                    self.num_replicas,
                    self.num_partitions,
                    client.platform_name()
                ),
                expected: n,
                actual: client.devices().len(),
            });
        }
        Ok(client.devices()[..n].to_vec())
    }

    fn index_with_many(&self) -> Error {
        Error::InvalidSetting {
            what: "CompileOptions".into(),
            field: "device",
            value: format!("{:?}", self.device_index),
            reason: "a single target device cannot be combined with several replicas or partitions; use device_assignment",
        }
    }

    /// The serialized `CompileOptionsProto`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let env_option_overrides = self
            .flags
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    XlaFlag::String(s) => OverrideValue::String(s.clone()),
                    XlaFlag::Bool(b) => OverrideValue::Bool(*b),
                    XlaFlag::Int(i) => OverrideValue::Int(*i),
                    XlaFlag::Double(d) => OverrideValue::Double(*d),
                };
                (k.clone(), OptionOverrideProto { value: Some(value) })
            })
            .collect();
        CompileOptionsProto {
            executable_build_options: Some(ExecutableBuildOptionsProto {
                device_ordinal: self.device_index.map_or(-1, |i| i as i64),
                num_replicas: self.num_replicas as i64,
                num_partitions: self.num_partitions as i64,
                use_spmd_partitioning: self.use_spmd_partitioning,
                device_assignment: self.assignment.as_ref().map(|devices| {
                    let partitions = self.num_partitions.max(1);
                    DeviceAssignmentProto {
                        replica_count: self.num_replicas as i32,
                        computation_count: self.num_partitions as i32,
                        computation_devices: (0..partitions)
                            .map(|p| ComputationDevice {
                                replica_device_ids: devices
                                    .iter()
                                    .skip(p)
                                    .step_by(partitions)
                                    .map(|d| i64::from(d.id()))
                                    .collect(),
                            })
                            .collect(),
                    }
                }),
                use_shardy_partitioner: self.use_shardy_partitioner,
            }),
            compile_portable_executable: self.device_index.is_some() && self.device_count() == 1,
            env_option_overrides,
        }
        .encode_to_vec()
    }
}

impl From<bool> for XlaFlag {
    fn from(v: bool) -> Self {
        XlaFlag::Bool(v)
    }
}
impl From<i64> for XlaFlag {
    fn from(v: i64) -> Self {
        XlaFlag::Int(v)
    }
}
impl From<f64> for XlaFlag {
    fn from(v: f64) -> Self {
        XlaFlag::Double(v)
    }
}
impl From<&str> for XlaFlag {
    fn from(v: &str) -> Self {
        XlaFlag::String(v.to_string())
    }
}
impl From<String> for XlaFlag {
    fn from(v: String) -> Self {
        XlaFlag::String(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_defaults_carry_one_replica_and_partition() {
        // field 3 { field 1 = -1, field 4 = 1, field 5 = 1 }
        let bytes = CompileOptions::plugin_defaults().to_bytes();
        let mut expected = vec![0x1a, 0x0f, 0x08];
        expected.extend([0xff; 9]);
        expected.extend([0x01, 0x20, 0x01, 0x28, 0x01]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn defaults_turn_fast_min_max_off() {
        let opts = CompileOptions::new();
        assert_eq!(
            opts.flags().get("xla_cpu_enable_fast_min_max"),
            Some(&XlaFlag::Bool(false))
        );
        assert_eq!(
            opts.flags().get("xla_gpu_enable_fast_min_max"),
            Some(&XlaFlag::Bool(false))
        );
    }

    #[test]
    fn refused_flags_are_recognised_by_name() {
        let pjrt = |message: &str| Error::Pjrt {
            function: "PJRT_Client_Compile",
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        };
        let unknown = pjrt("No such compile option: 'xla_cpu_experimental_ynn_fusion_type'");
        let value = pjrt("While setting option xla_cpu_experimental_ynn_fusion_type, 'X' is not a valid enum value");
        assert!(refuses_flag(
            &unknown,
            "xla_cpu_experimental_ynn_fusion_type"
        ));
        assert!(refuses_flag(&value, "xla_cpu_experimental_ynn_fusion_type"));
        assert!(!refuses_flag(&unknown, "xla_cpu_use_xnnpack"));
        assert!(!refuses_flag(
            &pjrt("error: unexpected token"),
            "xla_cpu_experimental_ynn_fusion_type"
        ));
    }

    #[test]
    fn spmd_options_encode_partitions_and_partitioners() {
        // field 3 { device_ordinal -1, num_replicas 1, num_partitions 4,
        // use_spmd_partitioning (6) true, use_shardy_partitioner (19) true }
        let bytes = CompileOptions::plugin_defaults().spmd(4).to_bytes();
        let mut expected = vec![0x1a, 0x14, 0x08];
        expected.extend([0xff; 9]);
        expected.extend([0x01, 0x20, 0x01, 0x28, 0x04, 0x30, 0x01, 0x98, 0x01, 0x01]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn flags_and_device_are_encoded() {
        let bytes = CompileOptions::plugin_defaults()
            .device(2)
            .xla_flag("f", true)
            .to_bytes();
        // executable_build_options with device_ordinal 2, portable, one override f=true
        assert_eq!(
            bytes,
            vec![
                0x1a, 0x06, 0x08, 0x02, 0x20, 0x01, 0x28, 0x01, 0x20, 0x01, 0x3a, 0x07, 0x0a, 0x01,
                b'f', 0x12, 0x02, 0x10, 0x01
            ]
        );
    }
}
