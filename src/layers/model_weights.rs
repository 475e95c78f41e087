//! A [`Model`]'s weights as a whole: the Keras summary table, and saving
//! and loading every layer's params and state in one safetensors file.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::builder::Tree;
use crate::error::{Error, Result};
use crate::pjrt::buffer::Buffer;
use crate::weights::{load_tree, save_tree, NameMap, SafetensorsFile};

use super::layer::Weights;
use super::model::Model;
use super::symbolic::{node_key, shape_string, SymNode, Symbolic};

impl Model {
    /// The familiar table: layer (type), output shape, params; totals.
    pub fn summary(&self) -> Result<String> {
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        let mut order: Vec<&Symbolic> = Vec::new();
        fn collect<'a>(s: &'a Symbolic, seen: &mut HashSet<usize>, order: &mut Vec<&'a Symbolic>) {
            if !seen.insert(node_key(&s.node)) {
                return;
            }
            if let SymNode::Apply { inputs, .. } = &*s.node {
                for i in inputs.leaves() {
                    collect(i, seen, order);
                }
            }
            order.push(s);
        }
        for o in self.outputs.leaves() {
            collect(o, &mut seen, &mut order);
        }
        for s in order {
            match &*s.node {
                SymNode::Input { spec, .. } => {
                    rows.push(("input (InputLayer)".to_string(), shape_string(spec), 0usize))
                }
                SymNode::Apply { layer, outputs, .. } => {
                    let w = layer.weights()?;
                    let shape = outputs
                        .leaves()
                        .iter()
                        .map(|s| shape_string(s))
                        .collect::<Vec<_>>()
                        .join(", ");
                    rows.push((
                        format!("{} ({})", layer.name(), layer.kind()),
                        shape,
                        w.param_count() + w.state_count(),
                    ));
                }
            }
        }
        let (mut trainable, mut non_trainable) = (0, 0);
        for (_, w) in self.weights()? {
            trainable += w.param_count();
            non_trainable += w.state_count();
        }
        let w0 = rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max("Layer (type)".len());
        let w1 = rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max("Output Shape".len());
        let line = "─".repeat(w0 + w1 + 16);
        let mut s = format!(
            "Model: \"{}\"\n{line}\n{:<w0$}  {:<w1$}  {:>10}\n{line}\n",
            self.name, "Layer (type)", "Output Shape", "Param #"
        );
        for (a, b, c) in &rows {
            s.push_str(&format!("{a:<w0$}  {b:<w1$}  {c:>10}\n"));
        }
        s.push_str(&format!(
            "{line}\n Total params: {}\n Trainable params: {trainable}\n Non-trainable params: {non_trainable}\n",
            trainable + non_trainable
        ));
        Ok(s)
    }

    /// Saves every layer's params and state to a safetensors file, keyed
    /// `layer/params/path` and `layer/state/path` (written atomically).
    pub fn save_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut all = BTreeMap::new();
        for (name, w) in self.weights()? {
            all.insert(name, Tree::map([("params", w.params), ("state", w.state)]));
        }
        save_tree(path, &Tree::Map(all), &NameMap::new())
    }

    /// Loads weights saved by [`Model::save_weights`]. Every tensor is
    /// checked (missing, unexpected, shape, dtype) before any layer changes:
    /// a failed load leaves the model exactly as it was. The weights go to
    /// the model's client.
    ///
    /// The swap is atomic with respect to this model's calls, snapshots and
    /// train steps on other threads: each sees either all the old weights or
    /// all the new ones (a load waits for running calls to finish). Setting
    /// weights on the layers directly ([`Layer::set_weights`](super::Layer::set_weights)) is not.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<()> {
        let client = &self.client;
        let file = SafetensorsFile::open(path)?;
        let current = self.weights()?;
        let mut wanted = BTreeMap::new();
        for (name, w) in &current {
            wanted.insert(
                name.clone(),
                Tree::map([("params", w.param_specs()), ("state", w.state_specs())]),
            );
        }
        let (loaded, _) = load_tree(client, &file, &Tree::Map(wanted), &NameMap::new())?;
        let Tree::Map(mut per_layer) = loaded else {
            return Err(Error::NotAMap {
                what: "loaded weights".into(),
                paths: Vec::new(),
            });
        };
        let mut new = Vec::new();
        for (l, (name, old)) in self.layers.iter().zip(&current) {
            let Some(Tree::Map(mut parts)) = per_layer.remove(name) else {
                return Err(Error::UnknownName {
                    what: "weights file".into(),
                    kind: "weights for layer",
                    name: name.clone(),
                    known: Vec::new(),
                });
            };
            let take = |parts: &mut BTreeMap<String, Tree<Buffer>>, k: &str| {
                parts.remove(k).unwrap_or(Tree::Empty).into_arcs()
            };
            let w = Weights {
                params: take(&mut parts, "params"),
                state: take(&mut parts, "state"),
            };
            // Empty subtrees are not stored in the file: keep their structure.
            let w = Weights {
                params: if old.params.is_empty() {
                    old.params.clone()
                } else {
                    w.params
                },
                state: if old.state.is_empty() {
                    old.state.clone()
                } else {
                    w.state
                },
            };
            old.check_same_layout(&w, &format!("load_weights of layer `{name}`"))?;
            new.push((l.clone(), w));
        }
        let _exclusive = self.weights_exclusive();
        for (l, w) in new {
            l.set_weights(w)?;
        }
        Ok(())
    }
}
