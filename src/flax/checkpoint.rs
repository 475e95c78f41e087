//! Flax checkpoint interchange: variables flattened to safetensors keys
//! joined with `.` (`params.Dense_0.kernel`, `batch_stats.BatchNorm_0.mean`),
//! as this Python one-liner writes them from `variables = module.init(...)`:
//!
//! ```text
//! from flax.traverse_util import flatten_dict; from safetensors.numpy import save_file; import numpy as np
//! save_file({".".join(k): np.asarray(v) for k, v in flatten_dict(variables).items()}, "model.safetensors")
//! ```

use std::collections::BTreeSet;

use crate::builder::{Path, Tree};
use crate::dtype::ArraySpec;
use crate::error::Result;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::weights::{load_tree, save_tree, NameMap, SafetensorsFile};

/// The key map of Flax checkpoints: paths joined with `.`, no prefix,
/// nothing renamed; add `prefix`, `rename` and `transposed` for other
/// layouts (see [`NameMap`]). With [`load_tree`] it loads a tree of specs
/// from a checkpoint (this example is also in `docs/flax.md`):
///
/// ```
/// use xlayer::builder::Tree;
/// use xlayer::flax::{flax_name_map, save_variables};
/// use xlayer::weights::{load_tree, SafetensorsFile};
/// use xlayer::{ArraySpec, Client};
/// let client = Client::cpu()?;
/// let dir = std::env::temp_dir().join(format!("xlayer-doc-namemap-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("model.safetensors");
/// // A checkpoint as Flax writes it: `params.Dense_0.kernel`, ...
/// let vars = Tree::map([("params", Tree::map([("Dense_0", Tree::map([
///     ("kernel", Tree::leaf(client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[2, 2])?)),
///     ("bias", Tree::leaf(client.buffer_from_host(&[0.5f32, -0.5], &[2])?)),
/// ]))]))]);
/// save_variables(&path, &vars)?;
/// let file = SafetensorsFile::open(&path)?;
/// assert_eq!(file.names(), vec!["params.Dense_0.bias", "params.Dense_0.kernel"]);
///
/// // The tree of specs to load (here, of the params only), keys `.`-joined.
/// let wanted = Tree::map([("Dense_0", Tree::map([
///     ("kernel", Tree::leaf(ArraySpec::of::<f32>([2, 2]))),
///     ("bias", Tree::leaf(ArraySpec::of::<f32>([2]))),
/// ]))]);
/// let map = flax_name_map().prefix("params");
/// assert_eq!(map.key_for("Dense_0/kernel"), "params.Dense_0.kernel");
/// let (params, report) = load_tree(&client, &file, &wanted, &map)?;
/// assert_eq!(params.get("Dense_0/kernel")?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(report.loaded[0], ("Dense_0/bias".to_string(), "params.Dense_0.bias".to_string()));
///
/// // The same file read as a PyTorch Linear: `weight` stored (out, in).
/// let torch = flax_name_map().prefix("params").rename("kernel", "weight").transposed("kernel");
/// let file_t = dir.join("torch.safetensors");
/// save_variables(&file_t, &Tree::map([("params", Tree::map([("Dense_0", Tree::map([
///     ("weight", Tree::leaf(client.buffer_from_host(&[1f32, 3.0, 2.0, 4.0], &[2, 2])?)),
///     ("bias", Tree::leaf(client.buffer_from_host(&[0.5f32, -0.5], &[2])?)),
/// ]))]))]))?;
/// let (same, _) = load_tree(&client, &SafetensorsFile::open(&file_t)?, &wanted, &torch)?;
/// assert_eq!(same.get("Dense_0/kernel")?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
///
/// // All-or-nothing: a wrong shape is refused before anything is uploaded,
/// // naming the file and the tensor.
/// let wrong = Tree::map([("Dense_0", Tree::map([
///     ("kernel", Tree::leaf(ArraySpec::of::<f32>([4]))),
///     ("bias", Tree::leaf(ArraySpec::of::<f32>([2]))),
/// ]))]);
/// match load_tree(&client, &file, &wrong, &map) {
///     Err(xlayer::Error::Weights { tensor, .. }) => assert_eq!(tensor, "params.Dense_0.kernel"),
///     other => panic!("{other:?}"),
/// }
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn flax_name_map() -> NameMap {
    NameMap::new().separator(".")
}

/// Saves variables (`{collection: {module: {name: array}}}`) with keys
/// joined by `.` (written atomically).
pub fn save_variables<B: AsRef<Buffer>>(
    path: impl AsRef<std::path::Path>,
    variables: &Tree<B>,
) -> Result<()> {
    save_tree(path, variables, &flax_name_map())
}

/// Whether a checkpoint key names a Flax variable: `collection.module....name`,
/// at least two segments. Other tensors stored beside the variables (a
/// single-segment `input` or `output` array) are skipped on load.
fn is_variable(key: &str) -> bool {
    Path::parse(key).len() >= 2
}

/// Loads a Flax-style checkpoint. Tensors that are not variables (keys of
/// one segment, such as `input` and `output` arrays saved beside
/// `params.*`) are skipped. With `wanted` (the variables' specs), every
/// variable must be present with that shape and dtype and no other variable
/// may be in the file (all-or-nothing: errors name the tensor and the
/// file); without, every variable of the file is loaded and its key split
/// on `.`.
///
/// Errors: those of [`load_tree`], and [`crate::Error::Weights`] naming
/// a variable of the file that `wanted` does not hold; without `wanted`,
/// [`crate::Error::PathConflict`] for a key that is also the prefix of
/// another (`params.a` and `params.a.b`).
///
/// ```
/// use xlayer::builder::Tree;
/// use xlayer::flax::{load_variables, save_variables};
/// use xlayer::Client;
/// let client = Client::cpu()?;
/// let dir = std::env::temp_dir().join(format!("xlayer-doc-flaxvars-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("model.safetensors");
/// // `params.Dense_0.bias` beside an `input` and an `output` array
/// let file = Tree::map([
///     ("params", Tree::map([("Dense_0", Tree::map([
///         ("bias", Tree::leaf(client.buffer_from_host(&[0.5f32, -0.5], &[2])?)),
///     ]))])),
///     ("input", Tree::leaf(client.buffer_from_host(&[1f32, 2.0], &[1, 2])?)),
///     ("output", Tree::leaf(client.buffer_from_host(&[3f32], &[1, 1])?)),
/// ]);
/// save_variables(&path, &file)?;
/// let vars = load_variables(&client, &path, None)?;
/// assert_eq!(vars.paths(), vec!["params/Dense_0/bias"]);
/// assert_eq!(vars.get("params/Dense_0/bias")?.to_vec::<f32>()?, vec![0.5, -0.5]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn load_variables(
    client: &Client,
    path: impl AsRef<std::path::Path>,
    wanted: Option<&Tree<ArraySpec>>,
) -> Result<Tree<Buffer>> {
    let file = SafetensorsFile::open(path)?;
    let map = flax_name_map();
    let wanted = match wanted {
        Some(w) => {
            let keys: BTreeSet<String> = w.paths().iter().map(|p| map.key_for(p)).collect();
            let extra: Vec<&str> = file
                .names()
                .into_iter()
                .filter(|n| is_variable(n) && !keys.contains(*n))
                .collect();
            if let Some(first) = extra.first() {
                return Err(crate::Error::Weights {
                    file: file.path().to_path_buf(),
                    tensor: first.to_string(),
                    reason: format!(
                        "unexpected variable(s) that the model does not hold: {}",
                        extra.join(", ")
                    ),
                    more: Vec::new(),
                });
            }
            w.clone()
        }
        None => {
            let specs = file
                .names()
                .into_iter()
                .filter(|n| is_variable(n))
                .filter_map(|n| Some((Path::parse(n), file.spec(n)?.clone())));
            Tree::from_paths(specs)?
        }
    };
    Ok(load_tree(client, &file, &wanted, &map.allow_unused(true))?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn file_with_io(client: &Client, path: &std::path::Path, extra: bool) -> Result<()> {
        let mut dense = vec![(
            "kernel",
            Tree::leaf(client.buffer_from_host(&[1f32, 2.0], &[2, 1])?),
        )];
        if extra {
            dense.push(("bias", Tree::leaf(client.buffer_from_host(&[0f32], &[1])?)));
        }
        let t = Tree::map([
            ("params", Tree::map([("Dense_0", Tree::map(dense))])),
            (
                "input",
                Tree::leaf(client.buffer_from_host(&[1f32, 2.0], &[1, 2])?),
            ),
            (
                "output",
                Tree::leaf(client.buffer_from_host(&[5f32], &[1, 1])?),
            ),
        ]);
        save_variables(path, &t)
    }

    /// Arrays saved beside the variables are skipped, with or without the
    /// wanted specs; another variable is still refused, naming it and the file.
    #[test]
    fn non_variables_are_skipped_other_variables_refused() -> Result<()> {
        let client = Client::cpu()?;
        let dir = std::env::temp_dir().join(format!("xlayer-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "test dir",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("io.safetensors");
        file_with_io(&client, &path, false)?;
        let wanted = Tree::map([(
            "params",
            Tree::map([(
                "Dense_0",
                Tree::map([("kernel", Tree::leaf(ArraySpec::of::<f32>([2, 1])))]),
            )]),
        )]);
        let all = load_variables(&client, &path, None)?;
        assert_eq!(all.paths(), vec!["params/Dense_0/kernel"]);
        let some = load_variables(&client, &path, Some(&wanted))?;
        assert_eq!(
            some.get("params/Dense_0/kernel")?.to_vec::<f32>()?,
            vec![1.0, 2.0]
        );

        let extra = dir.join("extra.safetensors");
        file_with_io(&client, &extra, true)?;
        match load_variables(&client, &extra, Some(&wanted)) {
            Err(Error::Weights { file, tensor, .. }) => {
                assert_eq!(tensor, "params.Dense_0.bias");
                assert_eq!(file, extra);
            }
            other => panic!("{other:?}"),
        }
        let wrong = Tree::map([(
            "params",
            Tree::map([(
                "Dense_0",
                Tree::map([("kernel", Tree::leaf(ArraySpec::of::<f32>([1, 2])))]),
            )]),
        )]);
        match load_variables(&client, &path, Some(&wrong)) {
            Err(Error::Weights { tensor, reason, .. }) => {
                assert_eq!(tensor, "params.Dense_0.kernel");
                assert!(reason.contains("shape"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
