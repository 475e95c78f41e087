//! A persistent compilation cache: serialized executables on disk, so a
//! second process start compiles nothing.
//!
//! Location: `$XLAYER_CACHE_DIR`, else `xla_build::home()/compile-cache`.
//! `XLAYER_CACHE_DIR=off` (or `0`, `false`, `none`) disables it, as does
//! [`CompileCache::disabled`].
//!
//! An entry is keyed by the sha256 of everything that decides what the
//! compiler produces: the program's code and format, its signature, the
//! serialized compile options, the client's platform name and version, and
//! the plugin's `xla_version` attribute and C API version. Each file holds a
//! header (magic, format version, the full key, the payload length and the
//! payload's sha256) before the serialized executable. A file whose header,
//! key, length or checksum does not match, or that the plugin refuses to
//! load, is never trusted: the program is recompiled and the entry
//! rewritten. Writes go to a temporary file in the same folder, renamed into
//! place, so a reader never sees half an entry.
//!
//! ```no_run
//! use xlayer::{cache::CompileCache, Client, CompileOptions, Program};
//! let client = Client::cpu()?;
//! let cache = CompileCache::from_env()?;
//! let p = Program::mlir_text("func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  return %a : tensor<2xf32>\n}")?;
//! let exe = cache.compile(&client, &p, &CompileOptions::new())?; // compiles, or loads from disk
//! println!("{} compile(s), {} hit(s)", cache.stats().compiles, cache.stats().hits);
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::executable::Executable;
use crate::program::{Program, ProgramFormat};

const MAGIC: &[u8; 8] = b"XLXCACHE";
const FORMAT_VERSION: u32 = 1;
/// magic (8) + version (4) + key (32) + payload length (8) + payload sha256 (32).
const HEADER_LEN: usize = 8 + 4 + 32 + 8 + 32;

/// What a cache did since it was made (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Programs compiled (cache miss, rejected entry, or cache disabled).
    pub compiles: u64,
    /// Executables loaded from disk.
    pub hits: u64,
    /// Entries written.
    pub writes: u64,
    /// Entries found but rejected (corrupt, truncated, stale) and replaced.
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    compiles: AtomicU64,
    hits: AtomicU64,
    writes: AtomicU64,
    rejected: AtomicU64,
}

/// A compilation cache folder (or a disabled cache that always compiles).
/// Clones share their counters.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    counters: Arc<Counters>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl CompileCache {
    /// The cache the environment asks for: `XLAYER_CACHE_DIR` (a folder, or
    /// `off`), else `xla_build::home()/compile-cache`.
    ///
    /// Errors: [`Error::Provision`] when no cache home can be determined.
    pub fn from_env() -> Result<CompileCache> {
        match std::env::var_os("XLAYER_CACHE_DIR").filter(|v| !v.is_empty()) {
            Some(v) => {
                let s = v.to_string_lossy().to_ascii_lowercase();
                if matches!(s.as_str(), "off" | "0" | "false" | "none" | "disabled") {
                    Ok(CompileCache::disabled())
                } else {
                    Ok(CompileCache::at(PathBuf::from(v)))
                }
            }
            None => Ok(CompileCache::at(xla_build::home()?.join("compile-cache"))),
        }
    }

    /// A cache in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache {
            dir: Some(dir.into()),
            counters: Arc::default(),
        }
    }

    /// A cache that stores nothing: every call compiles.
    pub fn disabled() -> CompileCache {
        CompileCache {
            dir: None,
            counters: Arc::default(),
        }
    }

    /// The folder, or `None` when disabled.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Counters since this cache (or the one it was cloned from) was made.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }

    /// The key of `program` compiled with `options` on `client`.
    pub fn key(client: &Client, program: &Program, options: &CompileOptions) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut field = |name: &str, bytes: &[u8]| {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("xlayer-compile-cache", &FORMAT_VERSION.to_le_bytes());
        field("code", program.code());
        let format: &[u8] = match program.format() {
            ProgramFormat::MlirText => b"mlir-text",
            ProgramFormat::MlirBytecode => b"mlir-bytecode",
        };
        field("format", format);
        field("signature", program.signature().to_string().as_bytes());
        let donors: Vec<u8> = program
            .signature()
            .donors
            .iter()
            .map(|&d| d as u8)
            .collect();
        field("donors", &donors);
        field("options", &options.to_bytes());
        field("platform", client.platform_name().as_bytes());
        field("platform_version", client.platform_version().as_bytes());
        let plugin = client.plugin();
        let xla = plugin
            .attribute("xla_version")
            .map(|v| v.to_string())
            .unwrap_or_default();
        field("xla_version", xla.as_bytes());
        let (major, minor) = plugin.api_version();
        field("api", format!("{major}.{minor}").as_bytes());
        h.finalize().into()
    }

    /// The file of an entry.
    pub fn entry_path(&self, key: &[u8; 32]) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.xlexe", hex(key))))
    }

    /// Loads `program` from the cache, or compiles it (and stores it).
    ///
    /// A compile for an explicit device other than the default one bypasses
    /// the cache (a deserialized executable loads on the default device).
    /// Errors: the compiler's; a failure to write the entry is not an error
    /// (the executable is returned, a warning goes to stderr).
    pub fn compile(
        &self,
        client: &Client,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<Executable> {
        let cacheable = matches!(options.device_index, None | Some(0));
        let path = match (&self.dir, cacheable) {
            (Some(_), true) => {
                let key = Self::key(client, program, options);
                self.entry_path(&key).map(|p| (key, p))
            }
            _ => None,
        };
        let Some((key, path)) = path else {
            self.counters.compiles.fetch_add(1, Ordering::Relaxed);
            return client.compile_with(program, options);
        };
        if let Ok(bytes) = fs::read(&path) {
            match payload(&bytes, &key) {
                Some(exe_bytes) => match client.deserialize_executable(
                    exe_bytes,
                    program.name(),
                    program.signature().clone(),
                ) {
                    Ok(exe) => {
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(exe);
                    }
                    Err(_) => {
                        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                },
                None => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        let exe = client.compile_with(program, options)?;
        match exe.serialize().and_then(|b| write_entry(&path, &key, &b)) {
            Ok(()) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => eprintln!("xlayer: warning: compilation cache not written: {e}"),
        }
        Ok(exe)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The payload of an entry if its header is intact and matches `key`.
fn payload<'a>(bytes: &'a [u8], key: &[u8; 32]) -> Option<&'a [u8]> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    if version != FORMAT_VERSION || &bytes[12..44] != key {
        return None;
    }
    let len = u64::from_le_bytes(bytes[44..52].try_into().ok()?);
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return None;
    }
    let sum: [u8; 32] = Sha256::digest(body).into();
    (sum[..] == bytes[52..84]).then_some(body)
}

fn write_entry(path: &Path, key: &[u8; 32], body: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("cannot create cache folder", dir))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}-{nanos}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        let sum: [u8; 32] = Sha256::digest(body).into();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(key);
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&sum);
        f.write_all(&header).map_err(io_err("cannot write", &tmp))?;
        f.write_all(body).map_err(io_err("cannot write", &tmp))?;
        f.sync_all().map_err(io_err("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("cannot move into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_corruptions() {
        let dir = std::env::temp_dir().join(format!("xlayer-cache-unit-{}", std::process::id()));
        let key = [7u8; 32];
        let path = dir.join("e.xlexe");
        write_entry(&path, &key, b"payload bytes").unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(payload(&bytes, &key), Some(&b"payload bytes"[..]));
        assert_eq!(payload(&bytes, &[8u8; 32]), None, "other key");
        assert_eq!(payload(&bytes[..bytes.len() - 1], &key), None, "truncated");
        assert_eq!(payload(&bytes[..10], &key), None, "header only");
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(payload(&flipped, &key), None, "bit flip");
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
