//! A persistent compilation cache: serialized executables on disk, so a
//! second process start compiles nothing.
//!
//! Location: `$XLAYER_CACHE_DIR`, else `xla_build::home()/compile-cache`.
//! `XLAYER_CACHE_DIR=off` (or `0`, `false`, `none`) disables it, as does
//! [`CompileCache::disabled`].
//!
//! An entry is keyed by a [`CacheKey`]: everything that decides what the
//! compiler produces: the program (code, format, signature, donated inputs;
//! a sharded program's text holds its mesh and shardings), the serialized
//! compile options (with a multi-device compile's device assignment), the
//! client's platform name and version,
//! the plugin's C API version and `xla_version` attribute, and **the sha256
//! of the plugin file's content**. Different plugin builds report the same
//! `xla_version`, and loading an executable serialized by another build is
//! undefined, so the build is identified by its bytes. The file is hashed
//! once per file (0.9-1.6 s for the 260 MB CPU plugin on a busy 2-core
//! machine), then remembered by path and stamp (inode, size, modification
//! and change times) in the process and in a sidecar under `plugins/` in
//! the cache folder, so later starts only `stat` it. A plugin file replaced or touched after it was loaded is not
//! hashed (its content would not be the running code's): such a client
//! compiles without the cache, with a warning.
//!
//! Each entry file holds a header (magic, format version, the full encoded
//! key, the payload's length and sha256) before the serialized executable.
//! A file whose header, key, length or checksum does not match what this
//! compile expects is never given to the plugin; neither is one the plugin
//! refuses to load: the program is recompiled and the entry rewritten.
//! Writes go to a private temporary file in the same folder, renamed into
//! place, so a reader never sees half an entry.
//!
//! # Trust
//!
//! An entry is machine code that the process loads and runs, so whoever can
//! write the cache folder can make the process run their code. The folder
//! is created private (mode 0700, entries 0600), and an existing folder is
//! refused when its group or others can write it
//! ([`Error::CacheDirWritableByOthers`]), or when it belongs to another
//! user, root excepted ([`Error::CacheDirNotOwned`]). Folders above it are not checked; keep it where
//! only you can rename things (under `$HOME`, as by default). A cache folder
//! shared between users is not supported: give each user their own.
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::executable::Executable;
use crate::program::Program;

mod dir;
mod key;

use key::{hex, write_atomically};
pub use key::{plugin_sha256, CacheKey};

const MAGIC: &[u8; 8] = b"XLXCACHE";
const FORMAT_VERSION: u32 = 2;
/// magic (8) + version (4) + key length (4); then the key, then payload
/// length (8) + payload sha256 (32), then the payload.
const PREFIX_LEN: usize = 8 + 4 + 4;

/// What a cache did since it was made (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Programs compiled (cache miss, rejected entry, or cache disabled).
    pub compiles: u64,
    /// Executables loaded from disk.
    pub hits: u64,
    /// Entries written.
    pub writes: u64,
    /// Entries found but rejected (corrupt, truncated, stored for another
    /// key, or refused by the plugin) and replaced.
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

    /// A cache in `dir`, created private (mode 0700) on first use. An
    /// existing folder is checked on each compile (see the module's Trust
    /// section).
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
    ///
    /// Hashes the plugin file the first time a process sees it (see
    /// [`plugin_sha256`]); with a cache folder, creates and checks it and
    /// remembers the plugin's digest there.
    /// Errors: those of the folder check ([`Error::CacheDirWritableByOthers`],
    /// [`Error::CacheDirNotOwned`], [`Error::CacheDirNotAFolder`]),
    /// [`Error::PluginFileChanged`], [`Error::Io`].
    pub fn key(
        &self,
        client: &Client,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<CacheKey> {
        if let Some(d) = &self.dir {
            dir::create_private(d)?;
        }
        let plugin = plugin_sha256(client.plugin(), self.dir.as_deref())?;
        Ok(CacheKey::new(client, program, options, plugin))
    }

    /// The file of an entry (named by the key's digest).
    pub fn entry_path(&self, key: &CacheKey) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.xlexe", hex(&key.digest()))))
    }

    /// The key and entry file of a compile in folder `d`; `None` (with a
    /// warning) when the cache cannot be used for it: the folder cannot be
    /// created or read (a read-only disk: the cache is an optimization), or
    /// the plugin file cannot be hashed. A folder others can write is an
    /// error.
    fn locate(
        &self,
        d: &Path,
        client: &Client,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<Option<(CacheKey, PathBuf)>> {
        let usable = match dir::create_private(d) {
            Err(e @ crate::Error::Io { .. }) => Err(e),
            Err(refused) => return Err(refused),
            Ok(()) => plugin_sha256(client.plugin(), Some(d)),
        };
        match usable {
            Ok(digest) => {
                let key = CacheKey::new(client, program, options, digest);
                Ok(self.entry_path(&key).map(|p| (key, p)))
            }
            Err(e) => {
                eprintln!("xlayer: warning: compiling without the compilation cache: {e}");
                Ok(None)
            }
        }
    }

    /// Loads `program` from the cache, or compiles it (and stores it).
    ///
    /// A compile for an explicit device other than the default one bypasses
    /// the cache (a deserialized executable loads on the default device), as
    /// does a plugin whose file changed on disk since it was loaded (with a
    /// warning on stderr). A multi-device compile (SPMD partitions or
    /// replicas) is cached under its device assignment, part of the key. An
    /// entry is loaded only if it holds exactly this compile's key.
    ///
    /// Errors: the compiler's; a cache folder that is not private to this
    /// user ([`Error::CacheDirWritableByOthers`], [`Error::CacheDirNotOwned`])
    /// or not a folder ([`Error::CacheDirNotAFolder`]). A folder that cannot
    /// be created or read, or an entry that cannot be written, is not an
    /// error: the executable is compiled and returned, a warning goes to
    /// stderr.
    pub fn compile(
        &self,
        client: &Client,
        program: &Program,
        options: &CompileOptions,
    ) -> Result<Executable> {
        // A multi-device compile is keyed with its device assignment (the
        // client's first devices when the options name none), which the
        // serialized options carry: the loaded executable runs on exactly
        // those devices. It is also keyed with the options it compiles with
        // (`Client::effective_compile_options`: XNNPACK off on several CPU
        // devices), so no entry compiled otherwise is loaded.
        // xlayer's CPU flags for this program (`cpu_tuning`), decided once
        // for the key and the compile below.
        let tuned = options.tuned_for(client, program);
        let options = &tuned;
        let assigned;
        let options = if options.device_count() > 1 {
            let mut o = client.effective_compile_options(options)?;
            if o.assignment.is_none() {
                let devices = o.resolve_devices(client)?;
                o = o.device_assignment(&devices);
            }
            assigned = o;
            &assigned
        } else {
            options
        };
        let cacheable = matches!(options.device_index, None | Some(0));
        let keyed = match (&self.dir, cacheable) {
            (Some(d), true) => self.locate(d, client, program, options)?,
            _ => None,
        };
        let Some((key, path)) = keyed else {
            self.counters.compiles.fetch_add(1, Ordering::Relaxed);
            return client.compile_with(program, options);
        };
        if let Ok(bytes) = fs::read(&path) {
            match payload(&bytes, &key.to_bytes()) {
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
        match exe
            .serialize()
            .and_then(|b| write_atomically(&path, &entry_bytes(&key.to_bytes(), &b)))
        {
            Ok(()) => {
                self.counters.writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => eprintln!("xlayer: warning: compilation cache not written: {e}"),
        }
        Ok(exe)
    }
}

/// The payload of an entry if its header is intact and holds exactly `key`.
fn payload<'a>(bytes: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    if bytes.len() < PREFIX_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let key_len = u32::from_le_bytes(bytes[12..16].try_into().ok()?) as usize;
    if version != FORMAT_VERSION || key_len != key.len() {
        return None;
    }
    let rest = &bytes[PREFIX_LEN..];
    if rest.get(..key_len)? != key {
        return None;
    }
    let rest = &rest[key_len..];
    let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let sum = rest.get(8..40)?;
    let body = &rest[40..];
    if body.len() as u64 != len {
        return None;
    }
    let actual: [u8; 32] = Sha256::digest(body).into();
    (actual[..] == *sum).then_some(body)
}

/// An entry file's bytes: header with the full key, then `body`.
fn entry_bytes(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + key.len() + 40 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let sum: [u8; 32] = Sha256::digest(body).into();
    out.extend_from_slice(&sum);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_corruptions() {
        let dir = std::env::temp_dir().join(format!("xlayer-cache-unit-{}", std::process::id()));
        let key = [7u8; 40];
        let path = dir.join("e.xlexe");
        write_atomically(&path, &entry_bytes(&key, b"payload bytes")).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(payload(&bytes, &key), Some(&b"payload bytes"[..]));
        assert_eq!(payload(&bytes, &[8u8; 40]), None, "other key");
        assert_eq!(payload(&bytes, &[7u8; 39]), None, "other key length");
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
