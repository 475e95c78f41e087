//! Running an executable on one device: [`Executable::execute`] on
//! borrowed buffers and [`Executable::execute_args`] with donation ([`Arg`]),
//! every argument checked in Rust first; argument and output handle lists
//! kept on the stack for up to 8 arrays.

use super::buffer::Buffer;
use super::executable::Executable;
use super::plugin::{pjrt_call, Args};
use super::sys;
use crate::error::{Error, Result};

/// One argument of [`Executable::execute_args`]: a borrowed buffer, or an
/// owned one whose device memory the executable may reuse (donation).
#[derive(Debug)]
pub enum Arg<'a> {
    /// Read only; the buffer stays valid.
    Borrowed(&'a Buffer),
    /// Given to the executable. If the program declares the parameter a
    /// donor, its memory may be reused for an output and the buffer is gone.
    Donated(Buffer),
}

impl<'a> From<&'a Buffer> for Arg<'a> {
    fn from(b: &'a Buffer) -> Self {
        Arg::Borrowed(b)
    }
}

impl From<Buffer> for Arg<'_> {
    fn from(b: Buffer) -> Self {
        Arg::Donated(b)
    }
}

impl Arg<'_> {
    /// The buffer, borrowed or owned.
    pub fn buffer(&self) -> &Buffer {
        match self {
            Arg::Borrowed(b) => b,
            Arg::Donated(b) => b,
        }
    }
}

impl Executable {
    /// Runs the program on borrowed buffers and returns its outputs.
    ///
    /// Every argument is checked first: count, dtype, shape, client and
    /// device ([`Error::ArgumentCount`], [`Error::ArgumentType`],
    /// [`Error::ForeignClient`], [`Error::ArgumentDevice`]). Execution is
    /// asynchronous: reading an output waits for it. A multi-device
    /// executable is refused ([`Error::MultiDeviceExecutable`]): use
    /// [`Executable::execute_sharded`].
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i])?;
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let raws = raw_list(&mut inline, &mut heap, args.iter().map(|b| b.raw()));
        self.launch(raws, &self.donor_indices)
    }

    /// Runs the program on a mix of borrowed and donated buffers.
    ///
    /// A donated buffer whose parameter the program declares a donor may be
    /// reused for an output; it is consumed either way.
    pub fn execute_args(&self, args: Vec<Arg<'_>>) -> Result<Vec<Buffer>> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i].buffer())?;
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let raws = raw_list(
            &mut inline,
            &mut heap,
            args.iter().map(|a| a.buffer().raw()),
        );
        let keep: Vec<i64> = self
            .donor_indices
            .iter()
            .copied()
            .filter(|&i| matches!(args[i as usize], Arg::Borrowed(_)))
            .collect();
        let out = self.launch(raws, &keep);
        drop(args);
        out
    }

    /// Checks arguments as [`Executable::execute`] does, without running:
    /// count, dtype, shape, client and device of each.
    pub fn check_arguments(&self, args: &[&Buffer]) -> Result<()> {
        self.single_device()?;
        self.validate(args.len(), |i| args[i])
    }

    fn single_device(&self) -> Result<()> {
        if self.devices.len() > 1 {
            return Err(Error::MultiDeviceExecutable {
                program: self.name.clone(),
                devices: self.devices.len(),
            });
        }
        Ok(())
    }

    fn validate<'b>(&self, count: usize, arg: impl Fn(usize) -> &'b Buffer) -> Result<()> {
        let inputs = &self.signature.inputs;
        if count != inputs.len() {
            return Err(Error::ArgumentCount {
                program: self.name.clone(),
                expected: inputs.len(),
                actual: count,
            });
        }
        for (index, expected) in inputs.iter().enumerate() {
            let b = arg(index);
            self.client.check_same_client(b.client(), || {
                format!("argument {index} of `{}`", self.name)
            })?;
            if b.spec() != expected {
                return Err(Error::ArgumentType {
                    program: self.name.clone(),
                    index,
                    expected: expected.clone(),
                    actual: b.spec().clone(),
                });
            }
            if *b.device() != self.device {
                return Err(Error::ArgumentDevice {
                    program: self.name.clone(),
                    index,
                    expected: self.device.to_string(),
                    actual: b.device().to_string(),
                });
            }
        }
        Ok(())
    }

    fn launch(&self, args: &[*mut sys::PJRT_Buffer], non_donatable: &[i64]) -> Result<Vec<Buffer>> {
        let n_out = self.signature.outputs.len();
        let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
        let outputs = raw_list(
            &mut inline,
            &mut heap,
            std::iter::repeat_n(std::ptr::null_mut(), n_out),
        );
        let arg_list: *const *mut sys::PJRT_Buffer = args.as_ptr();
        let out_list: *mut *mut sys::PJRT_Buffer = outputs.as_mut_ptr();
        let mut options = sys::PJRT_ExecuteOptions::new();
        options.non_donatable_input_indices = non_donatable.as_ptr();
        options.num_non_donatable_input_indices = non_donatable.len();
        let mut a = sys::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw;
        a.options = &mut options;
        a.argument_lists = &arg_list;
        a.num_devices = 1;
        a.num_args = args.len();
        a.output_lists = &out_list;
        if self.portable {
            a.execute_device = self.device.raw;
        }
        pjrt_call!(
            &self.client.inner.plugin,
            PJRT_LoadedExecutable_Execute,
            &mut a
        )?;
        Ok(outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(&raw, spec)| {
                Buffer::from_raw(self.client.clone(), raw, spec.clone(), self.device.clone())
            })
            .collect())
    }
}

/// Up to this many argument or output handles are gathered on the stack:
/// a call with few arrays then makes no heap allocation for them.
const INLINE: usize = 8;

/// Collects `raws` into `inline` when they fit, else into `heap`, and returns
/// the filled slice.
fn raw_list<'s>(
    inline: &'s mut [*mut sys::PJRT_Buffer; INLINE],
    heap: &'s mut Vec<*mut sys::PJRT_Buffer>,
    raws: impl ExactSizeIterator<Item = *mut sys::PJRT_Buffer>,
) -> &'s mut [*mut sys::PJRT_Buffer] {
    let n = raws.len();
    if n <= INLINE {
        for (slot, raw) in inline.iter_mut().zip(raws) {
            *slot = raw;
        }
        &mut inline[..n]
    } else {
        heap.extend(raws);
        heap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_list_uses_the_stack_when_it_fits_and_the_heap_otherwise() {
        let handle = |i: usize| (i + 1) as *mut sys::PJRT_Buffer;
        for n in [0, 1, INLINE, INLINE + 1, 3 * INLINE] {
            let (mut inline, mut heap) = ([std::ptr::null_mut(); INLINE], Vec::new());
            let list = raw_list(&mut inline, &mut heap, (0..n).map(handle));
            assert_eq!(list.len(), n);
            assert!(list.iter().enumerate().all(|(i, &p)| p == handle(i)));
            assert_eq!(heap.is_empty(), n <= INLINE);
        }
    }
}
