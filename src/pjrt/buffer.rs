//! `Buffer`: an array living on a device, owned, freed on drop.

use std::fmt;

use super::client::{Client, Device};
use super::event::{self, Event};
use super::plugin::{pjrt_call, Args};
use super::sys;
use crate::dtype::{ArraySpec, DType, NativeType};
use crate::error::{Error, Result};

pub(crate) fn to_pjrt_type(d: DType) -> sys::PJRT_Buffer_Type {
    use sys::PJRT_Buffer_Type as T;
    match d {
        DType::Bool => T::PJRT_Buffer_Type_PRED,
        DType::I8 => T::PJRT_Buffer_Type_S8,
        DType::I16 => T::PJRT_Buffer_Type_S16,
        DType::I32 => T::PJRT_Buffer_Type_S32,
        DType::I64 => T::PJRT_Buffer_Type_S64,
        DType::U8 => T::PJRT_Buffer_Type_U8,
        DType::U16 => T::PJRT_Buffer_Type_U16,
        DType::U32 => T::PJRT_Buffer_Type_U32,
        DType::U64 => T::PJRT_Buffer_Type_U64,
        DType::F16 => T::PJRT_Buffer_Type_F16,
        DType::BF16 => T::PJRT_Buffer_Type_BF16,
        DType::F32 => T::PJRT_Buffer_Type_F32,
        DType::F64 => T::PJRT_Buffer_Type_F64,
    }
}

pub(crate) fn from_pjrt_type(t: sys::PJRT_Buffer_Type) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|d| to_pjrt_type(*d) == t)
        .ok_or_else(|| Error::NotSupported(format!("PJRT buffer element type {}", t.0)))
}

/// An array on a device: dtype, dimensions, device, and the data there.
///
/// Created by [`Client::buffer_from_host`] or returned by
/// [`crate::Executable::execute`]. Freed when dropped; keeps its client alive.
/// `Send + Sync`: reads from several threads are fine.
pub struct Buffer {
    raw: *mut sys::PJRT_Buffer,
    client: Client,
    spec: ArraySpec,
    device: Device,
}

// SAFETY: PJRT buffers are thread-safe handles; all access goes through the
// plugin's thread-safe C API, and the Rust-side fields are immutable.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Buffer({} on {})", self.spec, self.device)
    }
}

impl AsRef<Buffer> for Buffer {
    fn as_ref(&self) -> &Buffer {
        self
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        let mut a = sys::PJRT_Buffer_Destroy_Args::new();
        a.buffer = self.raw;
        let _ = pjrt_call!(&self.client.inner.plugin, PJRT_Buffer_Destroy, &mut a);
    }
}

impl Buffer {
    pub(crate) fn from_raw(
        client: Client,
        raw: *mut sys::PJRT_Buffer,
        spec: ArraySpec,
        device: Device,
    ) -> Buffer {
        Buffer {
            raw,
            client,
            spec,
            device,
        }
    }

    pub(crate) fn raw(&self) -> *mut sys::PJRT_Buffer {
        self.raw
    }

    /// The client this buffer belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The dtype and dimensions.
    pub fn spec(&self) -> &ArraySpec {
        &self.spec
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.spec.dtype
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.spec.dims
    }

    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.spec.element_count()
    }

    /// The device holding the data.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Blocks until the buffer's data is computed; returns the error of the
    /// computation that produced it, if it failed.
    pub fn block_until_ready(&self) -> Result<()> {
        let mut a = sys::PJRT_Buffer_ReadyEvent_Args::new();
        a.buffer = self.raw;
        pjrt_call!(&self.client.inner.plugin, PJRT_Buffer_ReadyEvent, &mut a)?;
        event::wait_opt(&self.client.inner.plugin, a.event)
    }

    /// Copies the data to the host as raw little-endian bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.spec.size_in_bytes()];
        self.copy_into(out.as_mut_ptr(), out.len())?;
        Ok(out)
    }

    /// Copies the data to the host as a `Vec<T>`.
    ///
    /// Errors: [`Error::DType`] if `T` is not the buffer's dtype.
    ///
    /// ```no_run
    /// let client = xlayer::Client::cpu()?;
    /// let b = client.buffer_from_host(&[1i32, 2, 3, 4], &[2, 2])?;
    /// assert_eq!(b.to_vec::<i32>()?, vec![1, 2, 3, 4]);
    /// assert!(b.to_vec::<f32>().is_err());
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn to_vec<T: NativeType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.spec.dtype {
            return Err(Error::DType {
                context: format!("reading {self:?} to the host"),
                expected: T::DTYPE,
                actual: self.spec.dtype,
            });
        }
        let n = self.spec.element_count();
        let mut out = vec![T::zero(); n];
        self.copy_into(out.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>())?;
        Ok(out)
    }

    /// Copies a one-element buffer to the host as a scalar.
    ///
    /// Errors: [`Error::OutOfRange`] for a buffer of another element count;
    /// those of the copy.
    pub fn to_scalar<T: NativeType>(&self) -> Result<T> {
        let v = self.to_vec::<T>()?;
        if v.len() != 1 {
            return Err(Error::OutOfRange {
                function: "Buffer::to_scalar",
                what: format!("element count of {}", self.spec()),
                value: v.len().to_string(),
                expected: "1".into(),
            });
        }
        Ok(v[0])
    }

    fn copy_into(&self, dst: *mut u8, len: usize) -> Result<()> {
        let plugin = &self.client.inner.plugin;
        let mut a = sys::PJRT_Buffer_ToHostBuffer_Args::new();
        a.src = self.raw;
        a.dst = dst.cast();
        a.dst_size = len;
        pjrt_call!(plugin, PJRT_Buffer_ToHostBuffer, &mut a)?;
        // `dst` must stay valid until the event fires: wait here.
        match Event::from_raw(plugin, a.event) {
            Some(e) => e.wait(),
            None => Ok(()),
        }
    }

    /// Copies the buffer to another device of the same client.
    ///
    /// Errors: [`Error::ForeignClient`] if `device` belongs to another client.
    pub fn copy_to_device(&self, device: &Device) -> Result<Buffer> {
        self.client
            .check_device(device, "the target device of a copy")?;
        let mut a = sys::PJRT_Buffer_CopyToDevice_Args::new();
        a.buffer = self.raw;
        a.dst_device = device.raw;
        pjrt_call!(&self.client.inner.plugin, PJRT_Buffer_CopyToDevice, &mut a)?;
        Ok(Buffer::from_raw(
            self.client.clone(),
            a.dst_buffer,
            self.spec.clone(),
            device.clone(),
        ))
    }
}
