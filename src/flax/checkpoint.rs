//! Flax checkpoint interchange: variables flattened to safetensors keys
//! joined with `.` (`params.Dense_0.kernel`, `batch_stats.BatchNorm_0.mean`),
//! as this Python one-liner writes them from `variables = module.init(...)`:
//!
//! ```text
//! from flax.traverse_util import flatten_dict; from safetensors.numpy import save_file; import numpy as np
//! save_file({".".join(k): np.asarray(v) for k, v in flatten_dict(variables).items()}, "model.safetensors")
//! ```

use crate::builder::{Path, Tree};
use crate::dtype::ArraySpec;
use crate::error::Result;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::weights::{load_tree, save_tree, NameMap, SafetensorsFile};

/// The key map of Flax checkpoints: paths joined with `.`, no prefix.
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

/// Loads a Flax-style checkpoint. With `wanted` (the variables' specs),
/// every tensor must be present with that shape and dtype and none may be
/// left over (all-or-nothing, errors name the tensor and the file);
/// without, every tensor of the file is loaded and keys are split on `.`.
///
/// Errors: those of [`load_tree`]; without `wanted`, [`crate::Error::Weights`]
/// for a key without a collection and [`crate::Error::PathConflict`] for a key
/// that is also the prefix of another (`params.a` and `params.a.b`).
pub fn load_variables(
    client: &Client,
    path: impl AsRef<std::path::Path>,
    wanted: Option<&Tree<ArraySpec>>,
) -> Result<Tree<Buffer>> {
    let file = SafetensorsFile::open(path)?;
    let wanted = match wanted {
        Some(w) => w.clone(),
        None => {
            let mut specs = Vec::new();
            for name in file.names() {
                let path = Path::parse(name);
                if path.len() < 2 {
                    return Err(crate::Error::Weights {
                        file: file.path().to_path_buf(),
                        tensor: name.to_string(),
                        reason: "a Flax checkpoint key is `collection.module....name`".into(),
                        more: Vec::new(),
                    });
                }
                if let Some(spec) = file.spec(name) {
                    specs.push((path, spec.clone()));
                }
            }
            Tree::from_paths(specs)?
        }
    };
    Ok(load_tree(client, &file, &wanted, &flax_name_map())?.0)
}
