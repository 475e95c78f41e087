//! Running one executable over several devices: per-device argument lists
//! in, per-device output lists out ([`Executable::execute_sharded`],
//! [`DeviceOutputs`]), and clients with N CPU devices.
//!
//! This is PJRT's own multi-device execute (`PJRT_LoadedExecutable_Execute`
//! with `num_devices > 1`): an SPMD program partitioned by XLA runs once on
//! every device, each with its shard of every argument. Everything the
//! plugin would trip on is checked here first: the number of argument
//! lists, then for each device the argument count, every argument's dtype
//! and shard shape, its client, and that it lives on that device.
//!
//! **Collectives on the CPU plugin.** A program spanning several CPU
//! devices runs one thread per device, and its thunks continue on the
//! client's intra-op thread pool (as many threads as cores, at least one
//! per device). An all-reduce blocks its thread until every device has
//! arrived. XNNPACK fusions (`xla_cpu_use_xnnpack`, on by default in the
//! pinned plugin) wait on that same pool for their own parallel loops:
//! when one device's all-reduce holds one thread and the other device's
//! XNNPACK fusion holds the last one, neither moves, and after 40 s XLA
//! aborts the process ("Expected 2 threads to join the rendezvous, but
//! only 1 of them arrived"). This happened on a 2-core machine in every
//! run of 6-layer tensor-parallel MiniLM over 2 devices (thread dumps in
//! `docs/sharding.md`). So compiles for more than one device on a CPU
//! client set `xla_cpu_use_xnnpack = false` unless the options set it
//! ([`MULTI_DEVICE_CPU_FLAG`]); single-device compiles keep the plugin's
//! default.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};

use super::buffer::Buffer;
use super::client::{Client, ClientInner, ClientOptions};
use super::compile_options::CompileOptions;
use super::executable::{Arg, Executable};
use super::plugin::{pjrt_call, Args, Plugin};
use super::sys;
use crate::error::{Error, Result};

impl Client {
    /// A shared CPU client with `n` devices (the CPU plugin's
    /// `cpu_device_count` option), as JAX's
    /// `--xla_force_host_platform_device_count=n`: while any handle of it
    /// is alive, every call with the same `n` returns the same client.
    /// [`Client::cpu`] keeps one device.
    ///
    /// Errors: [`Error::InvalidSetting`] for `n == 0`; those of
    /// [`Client::new`].
    ///
    /// ```no_run
    /// let client = xlayer::Client::cpu_devices(4)?;
    /// assert_eq!(client.devices().len(), 4);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn cpu_devices(n: usize) -> Result<Client> {
        if n == 0 {
            return Err(Error::InvalidSetting {
                what: "Client::cpu_devices".into(),
                field: "n",
                value: "0".into(),
                reason: "a client needs at least one device",
            });
        }
        if n == 1 {
            return Client::cpu();
        }
        let count = i64::try_from(n).map_err(|_| Error::InvalidSetting {
            what: "Client::cpu_devices".into(),
            field: "n",
            value: n.to_string(),
            reason: "more devices than an i64 counts",
        })?;
        static CPUS: Mutex<Option<HashMap<usize, Weak<ClientInner>>>> = Mutex::new(None);
        let mut slots = CPUS.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.get_or_insert_with(HashMap::new).entry(n).or_default();
        if let Some(inner) = slot.upgrade() {
            return Ok(Client { inner });
        }
        let client = Client::new(
            &Plugin::cpu()?,
            &ClientOptions::new().cpu_device_count(count),
        )?;
        *slot = std::sync::Arc::downgrade(&client.inner);
        Ok(client)
    }
}

/// The XLA flag set to `false` by default when a program is compiled for
/// more than one device of a CPU client: XNNPACK fusions wait on the
/// thread pool that a blocked all-reduce holds, which deadlocks the
/// devices (see the module documentation). Setting it in
/// [`CompileOptions::xla_flag`] overrides the default.
pub const MULTI_DEVICE_CPU_FLAG: &str = "xla_cpu_use_xnnpack";

impl CompileOptions {
    /// The options a compile for `devices` devices of `client` runs with,
    /// when they differ from `self`: for more than one device of a CPU
    /// client, [`MULTI_DEVICE_CPU_FLAG`] off unless `self` sets it.
    pub(crate) fn multi_device_defaults(
        &self,
        client: &Client,
        devices: usize,
    ) -> Option<CompileOptions> {
        let cpu = client.platform_name().eq_ignore_ascii_case("cpu");
        (devices > 1 && cpu && !self.flags().contains_key(MULTI_DEVICE_CPU_FLAG))
            .then(|| self.clone().xla_flag(MULTI_DEVICE_CPU_FLAG, false))
    }
}

impl Client {
    /// The options a compile with `options` on this client runs with:
    /// `options` plus the multi-device defaults (for more than one device
    /// of a CPU client, [`MULTI_DEVICE_CPU_FLAG`] off unless `options`
    /// set it).
    ///
    /// Errors: those of [`CompileOptions::resolve_devices`].
    ///
    /// ```no_run
    /// use xlayer::{pjrt::multi_device::MULTI_DEVICE_CPU_FLAG, Client, CompileOptions};
    /// let client = Client::cpu_devices(2)?;
    /// let opts = client.effective_compile_options(&CompileOptions::new().spmd(2))?;
    /// assert_eq!(opts.flags()[MULTI_DEVICE_CPU_FLAG], false.into());
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn effective_compile_options(&self, options: &CompileOptions) -> Result<CompileOptions> {
        let devices = options.resolve_devices(self)?.len();
        Ok(options
            .multi_device_defaults(self, devices)
            .unwrap_or_else(|| options.clone()))
    }
}

/// Whether `e` is the compiler refusing [`MULTI_DEVICE_CPU_FLAG`] as an
/// unknown option (a CPU plugin older than the flag, which has no XNNPACK
/// fusions to turn off).
pub(crate) fn is_unknown_multi_device_flag(e: &Error) -> bool {
    super::compile_options::refuses_flag(e, MULTI_DEVICE_CPU_FLAG)
}

/// The outputs of one multi-device run: for each device (in
/// [`Executable::devices`] order) its output buffers, in result order.
///
/// ```no_run
/// # fn f(exe: &xlayer::Executable, args: &[Vec<&xlayer::Buffer>]) -> xlayer::Result<()> {
/// let out = exe.execute_sharded(args)?;
/// let first_device_outputs = out.device(0);
/// let shards_of_result_0: Vec<xlayer::Buffer> = out.into_per_output().remove(0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeviceOutputs {
    per_device: Vec<Vec<Buffer>>,
}

impl DeviceOutputs {
    /// How many devices ran.
    pub fn device_count(&self) -> usize {
        self.per_device.len()
    }

    /// How many results each device returned.
    pub fn output_count(&self) -> usize {
        self.per_device.first().map_or(0, Vec::len)
    }

    /// The outputs of the device at position `d` (empty when out of range).
    pub fn device(&self, d: usize) -> &[Buffer] {
        self.per_device.get(d).map_or(&[], Vec::as_slice)
    }

    /// The shards of result `i`, one per device (empty when out of range).
    pub fn output(&self, i: usize) -> Vec<&Buffer> {
        self.per_device.iter().filter_map(|v| v.get(i)).collect()
    }

    /// The buffers as `[device][result]`.
    pub fn into_per_device(self) -> Vec<Vec<Buffer>> {
        self.per_device
    }

    /// The buffers as `[result][device]`: each result's shards together.
    pub fn into_per_output(self) -> Vec<Vec<Buffer>> {
        let n = self.output_count();
        let mut out: Vec<Vec<Buffer>> = (0..n)
            .map(|_| Vec::with_capacity(self.per_device.len()))
            .collect();
        for list in self.per_device {
            for (i, b) in list.into_iter().enumerate() {
                out[i].push(b);
            }
        }
        out
    }
}

impl Executable {
    /// Runs the program on every one of its devices
    /// ([`Executable::devices`]) at once: `per_device[d]` is the argument
    /// list of device `d` (each argument's shard there). Returns each
    /// device's outputs. Works for single-device executables too (one list).
    ///
    /// Every argument is checked first, in Rust:
    /// [`Error::DeviceListCount`] when the number of lists differs from the
    /// executable's device count; for each device,
    /// [`Error::ShardArgumentCount`], [`Error::ForeignClient`],
    /// [`Error::ShardArgumentType`] (dtype or shard shape differs from
    /// [`Executable::signature`]) and [`Error::ShardArgumentDevice`] (the
    /// buffer lives on another device than the one its list runs on).
    /// Buffers are borrowed; none is donated ([`Executable::execute_sharded_args`]
    /// donates).
    pub fn execute_sharded<'b, L: AsRef<[&'b Buffer]>>(
        &self,
        per_device: &[L],
    ) -> Result<DeviceOutputs> {
        self.validate_sharded(per_device)?;
        let handles = flat_handles(per_device.iter().map(|l| l.as_ref().iter().copied()));
        self.launch_sharded(&handles, &self.donor_indices)
    }

    /// [`Executable::execute_sharded`] on a mix of borrowed and donated
    /// shards: `per_device[d][i]` is argument `i` on device `d`. Argument
    /// `i` is donated when the program declares it a donor and every
    /// device's shard of it is [`Arg::Donated`]; its device memory may then
    /// be reused for an output. Donated shards are consumed either way.
    ///
    /// Errors: those of [`Executable::execute_sharded`], checked before
    /// anything runs.
    pub fn execute_sharded_args(&self, per_device: Vec<Vec<Arg<'_>>>) -> Result<DeviceOutputs> {
        let refs: Vec<Vec<&Buffer>> = per_device
            .iter()
            .map(|l| l.iter().map(Arg::buffer).collect())
            .collect();
        self.validate_sharded(&refs)?;
        let handles = flat_handles(refs.iter().map(|l| l.iter().copied()));
        drop(refs);
        let keep: Vec<i64> = self
            .donor_indices
            .iter()
            .copied()
            .filter(|&i| {
                per_device
                    .iter()
                    .any(|l| matches!(l[i as usize], Arg::Borrowed(_)))
            })
            .collect();
        let out = self.launch_sharded(&handles, &keep);
        drop(per_device);
        out
    }

    /// Runs on every device with the raw argument handles (already
    /// checked), `handles[d * n_args + i]` being argument `i` on device `d`;
    /// `non_donatable` lists the donor parameters to keep. Four allocations
    /// of handles and pointers whatever the device count (the outputs'
    /// lists aside).
    fn launch_sharded(
        &self,
        handles: &[*mut sys::PJRT_Buffer],
        non_donatable: &[i64],
    ) -> Result<DeviceOutputs> {
        let n_dev = self.devices.len();
        let n_args = self.signature.inputs.len();
        let n_out = self.signature.outputs.len();
        let arg_ptrs: Vec<*const *mut sys::PJRT_Buffer> =
            (0..n_dev).map(|d| handles[d * n_args..].as_ptr()).collect();
        let mut outs: Vec<*mut sys::PJRT_Buffer> = vec![std::ptr::null_mut(); n_dev * n_out];
        let base = outs.as_mut_ptr();
        let out_ptrs: Vec<*mut *mut sys::PJRT_Buffer> =
            (0..n_dev).map(|d| base.wrapping_add(d * n_out)).collect();
        let mut options = sys::PJRT_ExecuteOptions::new();
        options.non_donatable_input_indices = non_donatable.as_ptr();
        options.num_non_donatable_input_indices = non_donatable.len();
        let mut a = sys::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw;
        a.options = &mut options;
        a.argument_lists = arg_ptrs.as_ptr();
        a.num_devices = n_dev;
        a.num_args = n_args;
        a.output_lists = out_ptrs.as_ptr();
        if self.portable {
            a.execute_device = self.device.raw;
        }
        pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_Execute,
            &mut a
        )?;
        let per_device = self
            .devices
            .iter()
            .enumerate()
            .map(|(d, device)| {
                outs[d * n_out..(d + 1) * n_out]
                    .iter()
                    .zip(&self.signature.outputs)
                    .map(|(&raw, spec)| {
                        Buffer::from_raw(self.client.clone(), raw, spec.clone(), device.clone())
                    })
                    .collect()
            })
            .collect();
        Ok(DeviceOutputs { per_device })
    }

    /// Checks per-device argument lists as [`Executable::execute_sharded`]
    /// does, without running.
    pub fn check_sharded_arguments<'b, L: AsRef<[&'b Buffer]>>(
        &self,
        per_device: &[L],
    ) -> Result<()> {
        self.validate_sharded(per_device)
    }

    fn validate_sharded<'b, L: AsRef<[&'b Buffer]>>(&self, per_device: &[L]) -> Result<()> {
        if per_device.len() != self.devices.len() {
            return Err(Error::DeviceListCount {
                program: self.name.clone(),
                expected: self.devices.len(),
                actual: per_device.len(),
            });
        }
        let inputs = &self.signature.inputs;
        for (d, (list, device)) in per_device.iter().zip(&self.devices).enumerate() {
            let list = list.as_ref();
            if list.len() != inputs.len() {
                return Err(Error::ShardArgumentCount {
                    program: self.name.clone(),
                    device: d,
                    expected: inputs.len(),
                    actual: list.len(),
                });
            }
            for (index, (b, expected)) in list.iter().zip(inputs).enumerate() {
                self.client.check_same_client(b.client(), || {
                    format!("argument {index} for device {d} of `{}`", self.name)
                })?;
                if b.spec() != expected {
                    return Err(Error::ShardArgumentType {
                        program: self.name.clone(),
                        device: d,
                        index,
                        expected: expected.clone(),
                        actual: b.spec().clone(),
                    });
                }
                if b.device() != device {
                    return Err(Error::ShardArgumentDevice {
                        program: self.name.clone(),
                        device: d,
                        index,
                        expected: device.to_string(),
                        actual: b.device().to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The raw handles of per-device argument lists, device after device, in
/// one allocation.
fn flat_handles<'b, L: Iterator<Item = &'b Buffer>>(
    lists: impl Iterator<Item = L>,
) -> Vec<*mut sys::PJRT_Buffer> {
    let mut out = Vec::new();
    for list in lists {
        out.extend(list.map(|b| b.raw()));
    }
    out
}
