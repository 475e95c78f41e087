//! Key-value stores shared by the processes of a distributed run.
//!
//! PJRT's distributed runtime does not bring its own coordination service
//! through the C API: a client is created with three callbacks (put, a
//! blocking get with a timeout, and a get that does not wait) through which
//! the plugin exchanges what its nodes must agree on (topology, collective
//! communicator ids). [`KeyValueStore`] is what those callbacks call
//! ([`crate::pjrt::distributed`] makes the bridge); [`FileKvStore`] is one
//! in a folder every process can reach, the simplest store that works for
//! processes of one machine (and of several over a shared filesystem).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A store of byte values by string key, shared by every process of a
/// distributed run. Values are written once per key by one process and
/// read by the others; a `get` waits until the value is there.
pub trait KeyValueStore: Send + Sync + fmt::Debug {
    /// Stores `value` under `key` (replacing an earlier value).
    ///
    /// Errors: the store's own (e.g. [`Error::Io`]).
    fn put(&self, key: &str, value: &[u8]) -> Result<()>;

    /// The value of `key`, waiting up to `timeout` for some process to put
    /// it.
    ///
    /// Errors: [`Error::KvTimeout`] when no value arrived in time; the
    /// store's own.
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>>;

    /// The value of `key` if it is there now, without waiting.
    ///
    /// Errors: the store's own.
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>>;
}

/// A [`KeyValueStore`] in a folder: one file per key, written to a
/// temporary name and renamed into place, so a reader sees a whole value or
/// none. Every process of a run opens the same folder.
///
/// ```
/// use std::time::Duration;
/// use xlayer::pjrt::kv_store::{FileKvStore, KeyValueStore};
/// let dir = std::env::temp_dir().join(format!("xlayer-kv-doc-{}", std::process::id()));
/// let store = FileKvStore::new(&dir)?;
/// store.put("topology/node:0", b"hello")?;
/// assert_eq!(store.get("topology/node:0", Duration::from_millis(10))?, b"hello");
/// assert_eq!(store.try_get("topology/node:1")?, None);
/// assert!(matches!(
///     store.get("topology/node:1", Duration::from_millis(10)),
///     Err(xlayer::Error::KvTimeout { .. })
/// ));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), xlayer::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileKvStore {
    dir: PathBuf,
}

/// How often a waiting [`FileKvStore::get`] looks for its key.
const POLL: Duration = Duration::from_millis(2);

impl FileKvStore {
    /// A store in `dir`, created (with its parents) when missing.
    ///
    /// Errors: [`Error::Io`] when the folder cannot be created.
    pub fn new(dir: impl AsRef<Path>) -> Result<FileKvStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "creating the key-value store folder",
            path: dir.clone(),
            source,
        })?;
        Ok(FileKvStore { dir })
    }

    /// The folder holding the values.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `key`: its bytes in hex, so that any key (with `/`, `:`
    /// or bytes a file name cannot hold) is one plain file name.
    fn path_of(&self, key: &str) -> PathBuf {
        let mut name = String::with_capacity(2 + 2 * key.len());
        name.push_str("k-");
        for b in key.bytes() {
            name.push_str(&format!("{b:02x}"));
        }
        self.dir.join(name)
    }
}

impl KeyValueStore for FileKvStore {
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { what, path, source }
        };
        std::fs::write(&tmp, value).map_err(io("writing a key-value store entry", &tmp))?;
        let dest = self.path_of(key);
        std::fs::rename(&tmp, &dest).map_err(io("publishing a key-value store entry", &dest))
    }

    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let start = Instant::now();
        loop {
            if let Some(v) = self.try_get(key)? {
                return Ok(v);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::KvTimeout {
                    key: key.to_string(),
                    store: self.dir.clone(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            std::thread::sleep(POLL.min(timeout - waited));
        }
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path_of(key);
        match std::fs::read(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                what: "reading a key-value store entry",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(tag: &str) -> FileKvStore {
        let dir = std::env::temp_dir().join(format!("xlayer-kv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        FileKvStore::new(&dir).expect("store")
    }

    #[test]
    fn keys_with_separators_are_distinct_files_and_values_are_replaced() {
        let store = temp_store("keys");
        store.put("a/b", b"1").unwrap();
        store.put("a:b", b"2").unwrap();
        store.put("a/b", b"3").unwrap();
        assert_eq!(store.try_get("a/b").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(store.try_get("a:b").unwrap().as_deref(), Some(&b"2"[..]));
        let files = std::fs::read_dir(store.dir()).unwrap().count();
        assert_eq!(files, 2, "one file per key, no temporary left behind");
        std::fs::remove_dir_all(store.dir()).ok();
    }

    #[test]
    fn a_get_waits_for_a_put_from_another_thread() {
        let store = temp_store("wait");
        let writer = store.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            writer.put("late", b"value").unwrap();
        });
        let got = store.get("late", Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(got, b"value");
        std::fs::remove_dir_all(store.dir()).ok();
    }

    #[test]
    fn a_get_that_times_out_names_the_key_and_the_store() {
        let store = temp_store("timeout");
        let err = store.get("never", Duration::from_millis(5)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::KvTimeout { timeout_ms: 5, .. }),
            "{err:?}"
        );
        assert!(msg.contains("`never`") && msg.contains(&store.dir().display().to_string()));
        std::fs::remove_dir_all(store.dir()).ok();
    }
}
