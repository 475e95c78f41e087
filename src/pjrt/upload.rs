//! Many uploads in flight at once ([`Client::upload_streamed`]): the
//! plugin copies host arrays on its own threads, so starting several
//! before waiting for the first lets the copies run side by side instead of
//! one after another (the weights of a model, straight from a memory map).

use std::borrow::Cow;
use std::collections::VecDeque;

use super::buffer::Buffer;
use super::client::{check_host_bytes, Client, Device};
use super::event::Event;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

/// The host bytes of one array for [`Client::upload_streamed`]: row-major,
/// or (for a matrix) its transpose's row-major bytes, which the plugin
/// reads with strides, so that no transposed host copy is made.
#[derive(Debug)]
pub struct HostBytes<'a> {
    bytes: Cow<'a, [u8]>,
    transposed: bool,
}

impl<'a> HostBytes<'a> {
    /// The array's own row-major bytes.
    pub fn row_major(bytes: impl Into<Cow<'a, [u8]>>) -> HostBytes<'a> {
        HostBytes {
            bytes: bytes.into(),
            transposed: false,
        }
    }

    /// For a matrix of dims `[r, c]`: the row-major bytes of its `[c, r]`
    /// transpose (a PyTorch `Linear` weight for a Flax `Dense` kernel).
    pub fn transposed(bytes: impl Into<Cow<'a, [u8]>>) -> HostBytes<'a> {
        HostBytes {
            bytes: bytes.into(),
            transposed: true,
        }
    }
}

/// The transfers started and not yet waited for, oldest first: each with
/// the bytes the plugin may still be reading. Dropped (on an error part
/// way), it waits for every one before the bytes are freed.
struct InFlight<'a> {
    items: VecDeque<(usize, Cow<'a, [u8]>, Option<Event>)>,
}

impl InFlight<'_> {
    /// Waits for the oldest transfer; returns its index once its bytes are
    /// freed (`None` when nothing is in flight).
    fn finish_oldest(&mut self) -> Result<Option<usize>> {
        let Some((index, bytes, event)) = self.items.pop_front() else {
            return Ok(None);
        };
        let waited = event.map_or(Ok(()), Event::wait);
        drop(bytes);
        waited.map(|()| Some(index))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        while let Some((_, bytes, event)) = self.items.pop_front() {
            // The plugin may read `bytes` until the event fires; its error
            // (if any) was or will be reported by the caller's first one.
            if let Some(e) = event {
                let _ = e.wait();
            }
            drop(bytes);
        }
    }
}

impl Client {
    /// Uploads the arrays `specs` to `device`, with up to `window`
    /// transfers in flight at once, and returns their buffers in order.
    ///
    /// `source(i)` gives array `i`'s little-endian bytes (borrowed, e.g.
    /// from a memory map, or owned, e.g. converted), row-major or
    /// transposed ([`HostBytes`]); `done(i)` is called,
    /// in order, once the plugin has finished reading them (e.g. to release
    /// a mapped file's pages), so at most `window` arrays' host bytes are
    /// held at once.
    ///
    /// Errors: those of `source`; [`crate::Error::HostDataSize`] (and the
    /// other checks of [`Client::buffer_from_bytes`]) naming the array's
    /// type; [`crate::Error::OutOfRange`] for transposed bytes of an array
    /// that is not a matrix; the plugin's. On an error, every transfer already started is
    /// waited for before this returns.
    ///
    /// ```
    /// use xlayer::pjrt::upload::HostBytes;
    /// use xlayer::{ArraySpec, Client};
    /// let client = Client::cpu()?;
    /// let data: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32; 3]).collect();
    /// let specs = vec![ArraySpec::of::<f32>([3]); 4];
    /// let spec_refs: Vec<&ArraySpec> = specs.iter().collect();
    /// let mut released = Vec::new();
    /// let buffers = client.upload_streamed(
    ///     &spec_refs,
    ///     client.default_device(),
    ///     2,
    ///     |i| {
    ///         let bytes: Vec<u8> = data[i].iter().flat_map(|x| x.to_le_bytes()).collect();
    ///         Ok(HostBytes::row_major(bytes))
    ///     },
    ///     |i| released.push(i),
    /// )?;
    /// assert_eq!(buffers[3].to_vec::<f32>()?, vec![3.0; 3]);
    /// assert_eq!(released, vec![0, 1, 2, 3]);
    ///
    /// // A 2 x 3 matrix from the bytes of its 3 x 2 transpose.
    /// let t: Vec<u8> = [1f32, 4.0, 2.0, 5.0, 3.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    /// let m = ArraySpec::of::<f32>([2, 3]);
    /// let b = client.upload_streamed(&[&m], client.default_device(), 1, |_| Ok(HostBytes::transposed(&t[..])), |_| {})?;
    /// assert_eq!(b[0].to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn upload_streamed<'a>(
        &self,
        specs: &[&ArraySpec],
        device: &Device,
        window: usize,
        mut source: impl FnMut(usize) -> Result<HostBytes<'a>>,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<Buffer>> {
        let window = window.max(1);
        let mut buffers = Vec::with_capacity(specs.len());
        let mut in_flight = InFlight {
            items: VecDeque::with_capacity(window),
        };
        for (i, spec) in specs.iter().enumerate() {
            if in_flight.items.len() >= window {
                if let Some(j) = in_flight.finish_oldest()? {
                    done(j);
                }
            }
            let HostBytes { bytes, transposed } = source(i)?;
            check_host_bytes("Client::upload_streamed", &bytes, spec)?;
            let strides = match (transposed, spec.dims.as_slice()) {
                (false, _) => None,
                (true, &[rows, _]) => {
                    // Element (i, j) is at (j, i) of the [cols, rows] bytes;
                    // sizes fit in i64 (checked with the bytes).
                    let size = spec.dtype.size_in_bytes() as i64;
                    Some([size, rows as i64 * size])
                }
                (true, _) => {
                    return Err(Error::OutOfRange {
                        function: "Client::upload_streamed",
                        what: format!("the rank of transposed bytes for {spec}"),
                        value: spec.rank().to_string(),
                        expected: "2 (a matrix)".into(),
                    })
                }
            };
            // SAFETY: `bytes` moves into `in_flight` (a borrowed slice keeps
            // pointing at the same memory, an owned one is not touched), and
            // is dropped only after its event has been waited for, there or
            // in `InFlight`'s drop. The strides of a [rows, cols] matrix read
            // its transpose's rows × cols elements, exactly `bytes`.
            let (buffer, event) = unsafe {
                self.start_upload(
                    &bytes,
                    strides.as_ref().map(|s| &s[..]),
                    (*spec).clone(),
                    device,
                )?
            };
            buffers.push(buffer);
            in_flight.items.push_back((i, bytes, event));
        }
        while let Some(j) = in_flight.finish_oldest()? {
            done(j);
        }
        Ok(buffers)
    }
}
