//! Flax checkpoint interchange: variables flattened to safetensors keys
//! joined with `.` (`params.Dense_0.kernel`, `batch_stats.BatchNorm_0.mean`),
//! as this Python one-liner writes them from `variables = module.init(...)`:
//!
//! ```text
//! from flax.traverse_util import flatten_dict; from safetensors.numpy import save_file; import numpy as np
//! save_file({".".join(k): np.asarray(v) for k, v in flatten_dict(variables).items()}, "model.safetensors")
//! ```

use std::path::Path;

use crate::builder::Tree;
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
pub fn save_variables<B: AsRef<Buffer>>(path: impl AsRef<Path>, variables: &Tree<B>) -> Result<()> {
    save_tree(path, variables, &flax_name_map())
}

/// Loads a Flax-style checkpoint. With `wanted` (the variables' specs),
/// every tensor must be present with that shape and dtype and none may be
/// left over (all-or-nothing, errors name the tensor and the file);
/// without, every tensor of the file is loaded and keys are split on `.`.
pub fn load_variables(
    client: &Client,
    path: impl AsRef<Path>,
    wanted: Option<&Tree<ArraySpec>>,
) -> Result<Tree<Buffer>> {
    let file = SafetensorsFile::open(path)?;
    let wanted = match wanted {
        Some(w) => w.clone(),
        None => {
            let mut flat = std::collections::BTreeMap::new();
            for name in file.names() {
                let parts: Vec<String> = name.split('.').map(str::to_string).collect();
                if let Some(spec) = file.spec(name) {
                    flat.entry(parts[0].clone())
                        .or_insert_with(std::collections::BTreeMap::new)
                        .insert(parts[1..].to_vec(), spec.clone());
                }
            }
            let mut top = std::collections::BTreeMap::new();
            for (col, vars) in flat {
                if vars.keys().any(|k| k.is_empty()) {
                    return Err(crate::Error::Weights {
                        file: file.path().to_path_buf(),
                        tensor: col,
                        reason: "a Flax checkpoint key is `collection.module....name`".into(),
                        more: Vec::new(),
                    });
                }
                let mut one = std::collections::BTreeMap::new();
                one.insert(col.clone(), vars);
                top.extend(match super::scope::unflatten_vars(&one) {
                    Tree::Map(m) => m,
                    _ => Default::default(),
                });
            }
            Tree::Map(top)
        }
    };
    Ok(load_tree(client, &file, &wanted, &flax_name_map())?.0)
}
