//! What identifies a cache entry: [`CacheKey`], and the plugin's content
//! digest it holds (hashed once per file, remembered in the process and in a
//! small sidecar file of the cache folder).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pjrt::client::Client;
use crate::pjrt::compile_options::CompileOptions;
use crate::pjrt::plugin::{FileStamp, Plugin};
use crate::program::{Program, ProgramFormat};

/// Everything that decides what the compiler produces, and so which stored
/// executable may be loaded in its place.
///
/// The plugin is identified by the sha256 of its file's content, not by its
/// self-reported `xla_version` (different builds report the same value, and
/// loading an executable serialized by another build is undefined). The full
/// key is stored in every entry and compared byte for byte on load; its
/// [`digest`](CacheKey::digest) names the entry's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// sha256 of the plugin file's content.
    pub plugin_sha256: [u8; 32],
    /// The plugin's C API version, `(major, minor)`.
    pub api_version: (i32, i32),
    /// The plugin's `xla_version` attribute (empty when absent).
    pub xla_version: String,
    /// The client's platform name (`cpu`, `cuda`, ...).
    pub platform: String,
    /// The client's platform version.
    pub platform_version: String,
    /// sha256 of the program: its code, format, signature and donated inputs.
    pub program_sha256: [u8; 32],
    /// sha256 of the serialized compile options.
    pub options_sha256: [u8; 32],
}

/// Version of the key's byte encoding (part of the encoding itself).
const KEY_VERSION: u32 = 2;

fn field(out: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl CacheKey {
    /// The key of `program` compiled with `options` on `client`, whose
    /// plugin's content digest is `plugin_sha256`.
    pub fn new(
        client: &Client,
        program: &Program,
        options: &CompileOptions,
        plugin_sha256: [u8; 32],
    ) -> CacheKey {
        let mut p = Vec::new();
        field(&mut p, "code", program.code());
        let format: &[u8] = match program.format() {
            ProgramFormat::MlirText => b"mlir-text",
            ProgramFormat::MlirBytecode => b"mlir-bytecode",
        };
        field(&mut p, "format", format);
        field(
            &mut p,
            "signature",
            program.signature().to_string().as_bytes(),
        );
        let donors: Vec<u8> = program
            .signature()
            .donors
            .iter()
            .map(|&d| d as u8)
            .collect();
        field(&mut p, "donors", &donors);
        let plugin = client.plugin();
        CacheKey {
            plugin_sha256,
            api_version: plugin.api_version(),
            xla_version: plugin
                .attribute("xla_version")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            platform: client.platform_name().to_string(),
            platform_version: client.platform_version().to_string(),
            program_sha256: Sha256::digest(&p).into(),
            // The options the compile runs with (`Client::compile_with` adds
            // xlayer's library fusion types to some programs).
            options_sha256: Sha256::digest(
                options
                    .for_program(client, program)
                    .as_ref()
                    .unwrap_or(options)
                    .to_bytes(),
            )
            .into(),
        }
    }

    /// The key's canonical encoding: named, length-prefixed fields. This is
    /// what each entry stores and what a load compares.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        field(&mut out, "xlayer-cache-key", &KEY_VERSION.to_le_bytes());
        field(&mut out, "plugin_sha256", &self.plugin_sha256);
        let (major, minor) = self.api_version;
        field(&mut out, "api", format!("{major}.{minor}").as_bytes());
        field(&mut out, "xla_version", self.xla_version.as_bytes());
        field(&mut out, "platform", self.platform.as_bytes());
        field(
            &mut out,
            "platform_version",
            self.platform_version.as_bytes(),
        );
        field(&mut out, "program_sha256", &self.program_sha256);
        field(&mut out, "options_sha256", &self.options_sha256);
        out
    }

    /// sha256 of [`to_bytes`](CacheKey::to_bytes): the entry's file name.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Digests already known in this process, by file and stamp.
type Memo = Mutex<HashMap<(PathBuf, FileStamp), [u8; 32]>>;

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// The sidecar remembering the digest of `path` for other processes.
fn sidecar_path(dir: &Path, path: &Path) -> PathBuf {
    let name: [u8; 32] = Sha256::digest(path.as_os_str().as_encoded_bytes()).into();
    dir.join("plugins")
        .join(format!("{}.sha256", hex(&name[..16])))
}

/// The sidecar's text up to the digest: the file and its stamp.
fn sidecar_header(path: &Path, s: &FileStamp) -> String {
    format!(
        "xlayer plugin digest 1\npath={}\ndev={} ino={} size={} mtime_ns={} ctime_ns={}\nsha256=",
        path.display(),
        s.dev,
        s.ino,
        s.size,
        s.mtime_ns,
        s.ctime_ns
    )
}

/// The sha256 of the plugin's file as it was loaded.
///
/// Looked up in this process's memo, then in the sidecar of `dir` (the
/// cache folder, when there is one), else computed from the file and
/// remembered in both. Errors: [`Error::PluginFileChanged`] when the file on
/// disk no longer has the stamp it had when loaded (its content would not
/// be the running code's), [`Error::Io`] when it cannot be read.
pub fn plugin_sha256(plugin: &Plugin, dir: Option<&Path>) -> Result<[u8; 32]> {
    file_sha256(plugin.path(), plugin.file_stamp(), dir)
}

/// [`plugin_sha256`] of the file `path` as it was when it had `stamp`.
fn file_sha256(path: &Path, stamp: FileStamp, dir: Option<&Path>) -> Result<[u8; 32]> {
    let memo_key = (path.to_path_buf(), stamp);
    if let Some(d) = memo()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&memo_key)
    {
        return Ok(*d);
    }
    let header = sidecar_header(path, &stamp);
    let sidecar = dir.map(|d| sidecar_path(d, path));
    let remembered = sidecar
        .as_ref()
        .and_then(|s| fs::read_to_string(s).ok())
        .and_then(|text| {
            text.strip_prefix(&header)
                .and_then(|rest| rest.strip_suffix('\n'))
                .and_then(unhex32)
        });
    let digest = match remembered {
        Some(d) => d,
        None => {
            let d = hash_file(path, &stamp)?;
            if let Some(s) = &sidecar {
                // Best effort: without the sidecar the next process hashes again.
                let _ = write_atomically(s, format!("{header}{}\n", hex(&d)).as_bytes());
            }
            d
        }
    };
    memo()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(memo_key, digest);
    Ok(digest)
}

/// Hashes `path`, checking before and after that it still has `stamp`.
fn hash_file(path: &Path, stamp: &FileStamp) -> Result<[u8; 32]> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let changed = || Error::PluginFileChanged {
        path: path.to_path_buf(),
    };
    let mut f = fs::File::open(path).map_err(io("cannot open"))?;
    if FileStamp::of(&f.metadata().map_err(io("cannot stat"))?) != *stamp {
        return Err(changed());
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    if FileStamp::of(&f.metadata().map_err(io("cannot stat"))?) != *stamp {
        return Err(changed());
    }
    Ok(h.finalize().into())
}

/// Writes `bytes` to `path` through a private temporary file in the same
/// folder (created if needed), renamed into place: a reader sees the old
/// file or the whole new one, never part of it.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            what,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    super::dir::create_private(dir)?;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io("cannot move into place", path))
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
    fn digest_is_remembered_in_a_sidecar_and_tied_to_the_stamp() {
        let root = std::env::temp_dir().join(format!("xlayer-key-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cache = root.join("cache");
        let file = root.join("plugin.so");
        fs::create_dir_all(&root).unwrap();
        fs::write(&file, b"plugin bytes").unwrap();
        let stamp = FileStamp::of(&fs::metadata(&file).unwrap());
        let real: [u8; 32] = Sha256::digest(b"plugin bytes").into();
        assert_eq!(file_sha256(&file, stamp, Some(&cache)).unwrap(), real);
        let sidecar = sidecar_path(&cache, &file);
        let text = fs::read_to_string(&sidecar).unwrap();
        assert_eq!(
            text,
            format!("{}{}\n", sidecar_header(&file, &stamp), hex(&real))
        );

        // Another process (no memo) reads the sidecar instead of hashing:
        // shown by a sidecar holding another digest for the same stamp.
        memo().lock().unwrap().remove(&(file.clone(), stamp));
        let planted = [9u8; 32];
        fs::write(
            &sidecar,
            format!("{}{}\n", sidecar_header(&file, &stamp), hex(&planted)),
        )
        .unwrap();
        assert_eq!(file_sha256(&file, stamp, Some(&cache)).unwrap(), planted);

        // The file changes: its new stamp misses memo and sidecar and is
        // hashed; asking for the old stamp without memo or sidecar is an
        // error, never the new content's digest.
        fs::write(&file, b"other plugin bytes").unwrap();
        let new_stamp = FileStamp::of(&fs::metadata(&file).unwrap());
        assert_ne!(new_stamp, stamp);
        let other: [u8; 32] = Sha256::digest(b"other plugin bytes").into();
        assert_eq!(file_sha256(&file, new_stamp, Some(&cache)).unwrap(), other);
        memo().lock().unwrap().remove(&(file.clone(), stamp));
        fs::remove_file(&sidecar).unwrap();
        assert!(matches!(
            file_sha256(&file, stamp, None),
            Err(Error::PluginFileChanged { path }) if path == file
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn key_encoding_names_every_field() {
        let k = CacheKey {
            plugin_sha256: [1; 32],
            api_version: (0, 81),
            xla_version: "2".into(),
            platform: "cpu".into(),
            platform_version: "v".into(),
            program_sha256: [2; 32],
            options_sha256: [3; 32],
        };
        let other_plugin = CacheKey {
            plugin_sha256: [4; 32],
            ..k.clone()
        };
        let other_api = CacheKey {
            api_version: (0, 106),
            ..k.clone()
        };
        assert_ne!(k.to_bytes(), other_plugin.to_bytes());
        assert_ne!(k.digest(), other_plugin.digest());
        assert_ne!(k.digest(), other_api.digest());
        assert_eq!(k.digest(), k.clone().digest());
    }
}
