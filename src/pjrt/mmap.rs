//! Read-only memory maps of files (the weights loader's zero-copy source).
//!
//! Mapping a file is the one `unsafe` of xlayer outside the PJRT C API, kept
//! at this boundary with the rest.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// A file mapped read-only into memory.
#[derive(Debug)]
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    ///
    /// Errors: [`Error::Io`] naming the file when it cannot be opened or mapped.
    pub fn open(path: &Path) -> Result<MappedFile> {
        let io = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::open(path).map_err(io("cannot open"))?;
        // SAFETY: the map is read-only and private to this process. Like every
        // reader of a file, we rely on nobody truncating or rewriting the file
        // while it is mapped (the safetensors convention: files are immutable
        // once written; xlayer writes new files by rename, never in place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("cannot map"))?;
        Ok(MappedFile { map })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
