//! Read-only memory-mapped files: weights (`crate::weights`) are read
//! straight from the page cache into device buffers, with no intermediate
//! host copy, and their pages are released once uploaded.
//!
//! Lives in `pjrt/` because mapping a file is `unsafe` in Rust (another
//! process could change the file under the mapping), and this folder is the
//! crate's one home for `unsafe`.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file mapped read-only into memory.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    ///
    /// The file must not be truncated while the map lives: reading a page
    /// past its new end raises `SIGBUS` (see `weights::SafetensorsFile`).
    ///
    /// Errors: [`Error::IsADirectory`] for a directory; [`Error::Io`] naming
    /// the file when it cannot be opened or mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<MappedFile> {
        let path = path.as_ref();
        crate::st_header::not_a_directory("file to map", path)?;
        let io = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        // SAFETY: the mapping is read-only and private to this handle; we
        // only ever read it as bytes. The one hazard is another process
        // truncating or rewriting the file while it is mapped (a read of a
        // page past the new end raises SIGBUS, which kills the process):
        // like every mmap-based loader we rely on checkpoints being
        // immutable once written (the safetensors convention; xlayer itself
        // writes new files by rename, never in place; documented on
        // `weights::SafetensorsFile`). Bounds are checked against the length
        // seen here.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("cannot map"))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Tells the kernel that `range` will not be read again soon, so its
    /// pages leave this process's resident set (they are re-read from the
    /// file if touched again). Used after a tensor has been uploaded, so
    /// that loading never holds the file and the device copy at once.
    pub fn release(&self, range: Range<usize>) {
        let page = 4096;
        let start = range.start.div_ceil(page) * page;
        let end = range.end.min(self.map.len()) / page * page;
        if end > start {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed shared
            // mapping only drops clean pages: later reads fault them back in
            // from the file with the same contents, so no byte any reference
            // can observe changes. The range is within the mapping.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}
