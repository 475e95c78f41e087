//! `xla.CompileOptionsProto`, the serialized options every compile needs.
//!
//! An empty message aborts the process inside XLA (`replica_count > 0`), so
//! the options always carry one replica and one partition. Per-compile XLA
//! flags go in `env_option_overrides` (a partially filled `debug_options`
//! would replace XLA's defaults). Only the fields xlayer sets are declared;
//! the field numbers are those of XLA's `compile_options.proto`.

use std::collections::BTreeMap;

use prost::Message;

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

/// Options of one compile: the device to compile for, and XLA flags.
///
/// ```
/// use xlayer::CompileOptions;
/// let opts = CompileOptions::new().xla_flag("xla_cpu_enable_fast_math", false);
/// assert_eq!(opts.flags().len(), 3); // with the two fast-min-max defaults
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompileOptions {
    pub(crate) device_index: Option<usize>,
    flags: BTreeMap<String, XlaFlag>,
    /// Compile in a child process: `Some(None)` finds the child,
    /// `Some(Some(path))` runs that one (see [`crate::pjrt::isolate`]).
    pub(crate) isolation: Option<Option<std::path::PathBuf>>,
}

impl CompileOptions {
    /// Defaults: the client's default device, and XLA's default flags
    /// except min/max NaN semantics: `xla_cpu_enable_fast_min_max` and
    /// `xla_gpu_enable_fast_min_max` are off, as in JAX, so `max(x, NaN)` is
    /// NaN (the CPU plugin's own default is the fast, NaN-dropping form).
    pub fn new() -> Self {
        Self::default()
            .xla_flag("xla_cpu_enable_fast_min_max", false)
            .xla_flag("xla_gpu_enable_fast_min_max", false)
    }

    /// No flags at all: exactly the plugin's defaults.
    pub fn plugin_defaults() -> Self {
        Self::default()
    }

    /// Compile for the addressable device at `index` (see `Client::devices`).
    pub fn device(mut self, index: usize) -> Self {
        self.device_index = Some(index);
        self
    }

    /// Sets an XLA flag (e.g. `xla_cpu_enable_fast_math`) for this compile only.
    pub fn xla_flag(mut self, name: impl Into<String>, value: impl Into<XlaFlag>) -> Self {
        self.flags.insert(name.into(), value.into());
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

    /// The XLA flags set, by name.
    pub fn flags(&self) -> &BTreeMap<String, XlaFlag> {
        &self.flags
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
                num_replicas: 1,
                num_partitions: 1,
            }),
            compile_portable_executable: self.device_index.is_some(),
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
