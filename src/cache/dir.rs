//! The cache folder's trust check.
//!
//! A cache entry is machine code that the plugin loads and runs. Whoever can
//! write the folder can therefore make this process run their code (plant an
//! entry under the name a future compile will look for). So the folder is
//! created private (mode 0700), and an existing one is used only if it is a
//! folder owned by this process's user (or root) that neither its group nor
//! others can write. Folders above it are not checked: keep the cache under a
//! folder only you (or root) can rename things in, as `$HOME` is.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};

/// This process's effective user id, as Linux reports it through
/// `/proc/self` (owned by that user); `None` where that cannot be read.
fn effective_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist,
/// then checks it.
///
/// Errors: [`Error::Io`] when it cannot be created or read,
/// [`Error::CacheDirNotAFolder`], [`Error::CacheDirNotOwned`],
/// [`Error::CacheDirWritableByOthers`] (see [`check`]).
pub(crate) fn create_private(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::Io {
                what: "cannot create the compilation cache folder",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    check(dir)
}

/// Checks that `dir` is a folder that only its owner can write, and that
/// the owner is this process's user or root (symbolic links are followed:
/// the folder they lead to is checked).
pub(crate) fn check(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|source| Error::Io {
        what: "cannot read the compilation cache folder",
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::CacheDirNotAFolder {
            path: dir.to_path_buf(),
        });
    }
    if let Some(uid) = effective_uid() {
        if meta.uid() != uid && meta.uid() != 0 {
            return Err(Error::CacheDirNotOwned {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                uid,
            });
        }
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::CacheDirWritableByOthers {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_shared_refused() {
        let root = std::env::temp_dir().join(format!("xlayer-cache-dir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = root.join("a").join("b");
        create_private(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(root.join("a")).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        match check(&dir) {
            Err(Error::CacheDirWritableByOthers { path, mode }) => {
                assert_eq!((path, mode), (dir.clone(), 0o770));
            }
            other => panic!("{other:?}"),
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        check(&dir).unwrap();
        // Another user's folder, even a private one, is refused (testable
        // only as root, who can give a folder away).
        if effective_uid() == Some(0) {
            std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
            match check(&dir) {
                Err(Error::CacheDirNotOwned { path, owner, uid }) => {
                    assert_eq!((path, owner, uid), (dir.clone(), 4242, 0));
                }
                other => panic!("{other:?}"),
            }
        }
        let file = root.join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            create_private(&file),
            Err(Error::CacheDirNotAFolder { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }
}
