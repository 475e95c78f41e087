//! A BERT encoder written with the tracing builder, with mean pooling and
//! L2 normalisation on top (the sentence-transformers pipeline).
//!
//! Parameters follow Flax's layout (paths such as
//! `layer_0/attention/query/kernel`, kernels `(in, out)`);
//! [`checkpoint_names`] maps each to its name in a Hugging Face / PyTorch
//! checkpoint, whose `Linear` weights are `(out, in)` and get transposed on
//! load by [`crate::weights::load_tree`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::builder::{nn, Builder, Computation, DotDims, Tree, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::weights::{NameMap, SafetensorsFile};

/// The shape of a BERT model (`config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table (the longest input).
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// all-MiniLM-L6-v2: 6 layers, 384 wide, 12 heads.
    pub fn minilm_l6() -> BertConfig {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_layers: 6,
            num_heads: 12,
            intermediate_size: 1536,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Reads a Hugging Face `config.json` (only BERT with GELU, absolute positions).
    ///
    /// Every size is bounded ([`CONFIG_LIMITS`]) so that a corrupt or
    /// hostile config cannot make the loader allocate without limit; check
    /// it against the checkpoint with [`BertConfig::check_checkpoint`]
    /// before building its parameter list.
    ///
    /// Errors: [`Error::Io`]; [`Error::ModelConfig`] naming the file and the
    /// field (missing, not an integer, out of bounds, heads not dividing the
    /// width, an unsupported activation).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "cannot read model config",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |field: &'static str, value: String, reason: String| Error::ModelConfig {
            file: path.to_path_buf(),
            field,
            value,
            reason,
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad("(file)", "-".into(), format!("not JSON: {e}")))?;
        let num = |k: &'static str| -> Result<usize> {
            let Some(raw) = v.get(k) else {
                return Err(bad(k, "missing".into(), "an integer is required".into()));
            };
            let max = CONFIG_LIMITS
                .iter()
                .find(|(name, _)| *name == k)
                .map_or(usize::MAX, |(_, m)| *m);
            match raw.as_u64() {
                Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
                Some(_) => Err(bad(
                    k,
                    raw.to_string(),
                    format!("must be between 1 and {max}"),
                )),
                None => Err(bad(k, raw.to_string(), "not a positive integer".into())),
            }
        };
        if let Some(act) = v.get("hidden_act") {
            if act.as_str() != Some("gelu") {
                return Err(bad(
                    "hidden_act",
                    act.to_string(),
                    "not supported (gelu only)".into(),
                ));
            }
        }
        let cfg = BertConfig {
            vocab_size: num("vocab_size")?,
            hidden_size: num("hidden_size")?,
            num_layers: num("num_hidden_layers")?,
            num_heads: num("num_attention_heads")?,
            intermediate_size: num("intermediate_size")?,
            max_position_embeddings: num("max_position_embeddings")?,
            type_vocab_size: num("type_vocab_size")?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-12),
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(bad(
                "num_attention_heads",
                cfg.num_heads.to_string(),
                format!("does not divide hidden_size {}", cfg.hidden_size),
            ));
        }
        Ok(cfg)
    }

    /// Checks this config (read from `config`) against a checkpoint in the
    /// Hugging Face layout of [`checkpoint_names`], from tensor names and
    /// shapes only: the number of `encoder.layer.N` layers and the shapes of
    /// the embedding tables and of the first MLP. Cheap, and done before
    /// [`params`] builds one entry per tensor the config implies.
    ///
    /// Errors: [`Error::ModelConfig`] naming the field the checkpoint
    /// contradicts and what the checkpoint holds. Tensors missing from the
    /// checkpoint are left to [`crate::weights::load_tree`], which lists them.
    pub fn check_checkpoint(&self, config: &Path, file: &SafetensorsFile) -> Result<()> {
        let bad = |field: &'static str, value: usize, reason: String| Error::ModelConfig {
            file: config.to_path_buf(),
            field,
            value: value.to_string(),
            reason: format!("{reason} in {}", file.path().display()),
        };
        let layers: BTreeSet<usize> = file
            .names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix("encoder.layer.")?
                    .split('.')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let count = layers.last().map_or(0, |l| l + 1);
        if self.num_layers != count || layers.len() != count {
            return Err(bad(
                "num_hidden_layers",
                self.num_layers,
                format!(
                    "the checkpoint holds {} encoder layer(s) (indices {:?})",
                    layers.len(),
                    layers.iter().take(8).collect::<Vec<_>>()
                ),
            ));
        }
        let h = self.hidden_size;
        let tables: [(&str, &'static str, usize); 4] = [
            (
                "embeddings.word_embeddings.weight",
                "vocab_size",
                self.vocab_size,
            ),
            (
                "embeddings.position_embeddings.weight",
                "max_position_embeddings",
                self.max_position_embeddings,
            ),
            (
                "embeddings.token_type_embeddings.weight",
                "type_vocab_size",
                self.type_vocab_size,
            ),
            (
                "encoder.layer.0.intermediate.dense.weight",
                "intermediate_size",
                self.intermediate_size,
            ),
        ];
        for (tensor, field, rows) in tables {
            let Some(spec) = file.spec(tensor) else {
                continue;
            };
            let dims = &spec.dims;
            if dims.len() == 2 && dims[1] != h {
                return Err(bad(
                    "hidden_size",
                    h,
                    format!("tensor `{tensor}` is {spec}"),
                ));
            }
            if dims.len() != 2 || dims[0] != rows {
                return Err(bad(field, rows, format!("tensor `{tensor}` is {spec}")));
            }
        }
        Ok(())
    }
}

/// Upper bounds of the sizes in a BERT `config.json` (field, largest value
/// accepted): far above any released BERT, far below what would exhaust
/// memory merely by listing the parameters.
pub const CONFIG_LIMITS: [(&str, usize); 7] = [
    ("vocab_size", 1 << 22),
    ("hidden_size", 1 << 16),
    ("num_hidden_layers", 1 << 10),
    ("num_attention_heads", 1 << 10),
    ("intermediate_size", 1 << 18),
    ("max_position_embeddings", 1 << 20),
    ("type_vocab_size", 1 << 16),
];

const PER_LAYER: usize = 16;
const EMBEDDING_PARAMS: usize = 5;

/// The model's parameters in the order the traced program takes them:
/// Flax-style paths and specs (all f32, kernels `(in, out)`).
pub fn params(cfg: &BertConfig) -> Vec<(String, ArraySpec)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let f32s = |dims: &[usize]| ArraySpec::new(DType::F32, dims.to_vec());
    let mut v = vec![
        ("embeddings/word".to_string(), f32s(&[cfg.vocab_size, h])),
        (
            "embeddings/position".to_string(),
            f32s(&[cfg.max_position_embeddings, h]),
        ),
        (
            "embeddings/token_type".to_string(),
            f32s(&[cfg.type_vocab_size, h]),
        ),
        ("embeddings/layer_norm/scale".to_string(), f32s(&[h])),
        ("embeddings/layer_norm/bias".to_string(), f32s(&[h])),
    ];
    for l in 0..cfg.num_layers {
        // A dense layer (kernel, bias) or a LayerNorm (scale, bias).
        let mut add = |path: &str, weight: &str, dims: &[usize]| {
            let out = dims[dims.len() - 1];
            v.push((format!("layer_{l}/{path}/{weight}"), f32s(dims)));
            v.push((format!("layer_{l}/{path}/bias"), f32s(&[out])));
        };
        add("attention/query", "kernel", &[h, h]);
        add("attention/key", "kernel", &[h, h]);
        add("attention/value", "kernel", &[h, h]);
        add("attention/out", "kernel", &[h, h]);
        add("attention/layer_norm", "scale", &[h]);
        add("mlp/in", "kernel", &[h, i]);
        add("mlp/out", "kernel", &[i, h]);
        add("mlp/layer_norm", "scale", &[h]);
    }
    debug_assert_eq!(v.len(), EMBEDDING_PARAMS + PER_LAYER * cfg.num_layers);
    v
}

/// The parameters as a tree (the `wanted` of [`crate::weights::load_tree`]).
pub fn param_tree(cfg: &BertConfig) -> Tree<ArraySpec> {
    fn insert(tree: &mut Tree<ArraySpec>, path: &str, spec: ArraySpec) {
        let Tree::Map(m) = tree else {
            unreachable!("BERT parameter paths only ever name maps")
        };
        match path.split_once('/') {
            None => {
                m.insert(path.to_string(), Tree::leaf(spec));
            }
            Some((head, rest)) => insert(
                m.entry(head.to_string())
                    .or_insert_with(|| Tree::Map(Default::default())),
                rest,
                spec,
            ),
        }
    }
    let mut tree = Tree::Map(Default::default());
    for (path, spec) in params(cfg) {
        insert(&mut tree, &path, spec);
    }
    tree
}

/// How the parameter paths map to the tensors of a Hugging Face `BertModel`
/// checkpoint (PyTorch names, no `bert.` prefix): `.`-separated, renamed
/// (`layer_0/attention/query/kernel` is `encoder.layer.0.attention.self.query.weight`),
/// `Linear` weights stored transposed, and the tensors BERT has but the
/// sentence embedding does not use (pooler, `position_ids`) allowed.
pub fn checkpoint_names() -> NameMap {
    NameMap::new()
        .separator(".")
        // Renames are substring replacements, in this order: parts first,
        // then `layer_norm` (before `layer_N` becomes `encoder.layer.N`).
        .rename("attention.query.", "attention.self.query.")
        .rename("attention.key.", "attention.self.key.")
        .rename("attention.value.", "attention.self.value.")
        .rename("attention.out.", "attention.output.dense.")
        .rename("attention.layer_norm.", "attention.output.LayerNorm.")
        .rename("mlp.in.", "intermediate.dense.")
        .rename("mlp.out.", "output.dense.")
        .rename("mlp.layer_norm.", "output.LayerNorm.")
        .rename("layer_norm.", "LayerNorm.")
        .rename(".scale", ".weight")
        .rename(".kernel", ".weight")
        .rename("embeddings.word", "embeddings.word_embeddings.weight")
        .rename(
            "embeddings.position",
            "embeddings.position_embeddings.weight",
        )
        .rename(
            "embeddings.token_type",
            "embeddings.token_type_embeddings.weight",
        )
        .rename("layer_", "encoder.layer.")
        .transposed("kernel")
        .allow_unused(true)
}

/// The leaves of a loaded parameter tree (see [`param_tree`]) in the order
/// the traced program takes them ([`params`]).
///
/// Errors: [`Error::Invalid`] naming a parameter the tree lacks.
pub fn in_program_order<T>(cfg: &BertConfig, tree: Tree<T>) -> Result<Vec<T>> {
    let mut by_path: HashMap<String, T> =
        tree.paths().into_iter().zip(tree.into_leaves()).collect();
    params(cfg)
        .into_iter()
        .map(|(path, _)| {
            by_path
                .remove(&path)
                .ok_or_else(|| Error::Invalid(format!("BERT parameter `{path}` is missing")))
        })
        .collect()
}

/// `x @ kernel + bias` over the last axis of `x` (any rank), without
/// broadcasting the kernel.
fn dense(x: &Value, kernel: &Value, bias: &Value) -> Result<Value> {
    let r = x.rank();
    let y = x.dot_general(
        kernel,
        &DotDims {
            lhs_batch: vec![],
            rhs_batch: vec![],
            lhs_contract: vec![r - 1],
            rhs_contract: vec![0],
        },
    )?;
    y + bias
}

fn layer_norm(x: &Value, scale: &Value, bias: &Value, eps: f64) -> Result<Value> {
    let last = x.rank() - 1;
    let mu = x.mean(&[last], true)?;
    let centered = (x - mu)?;
    let var = centered.square()?.mean(&[last], true)?;
    let y = (centered * (var + eps)?.rsqrt()?)?;
    (y * scale)? + bias
}

/// Records the encoder + mean pooling + L2 normalisation for `ids`
/// (`i32[B, S]`) and `mask` (`f32[B, S]`, 1 for tokens, 0 for padding),
/// given the parameters of [`params`] in order. Returns `f32[B, hidden]`.
pub fn sentence_embedding(
    cfg: &BertConfig,
    p: &[Value],
    ids: &Value,
    mask: &Value,
) -> Result<Value> {
    let want = EMBEDDING_PARAMS + PER_LAYER * cfg.num_layers;
    if p.len() != want {
        return Err(Error::Invalid(format!(
            "BERT with {} layers takes {want} parameters, got {}",
            cfg.num_layers,
            p.len()
        )));
    }
    let (b, s) = (ids.dims()[0], ids.dims()[1]);
    if s > cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "sequence length {s} exceeds the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    let (h, nh) = (cfg.hidden_size, cfg.num_heads);
    let dh = h / nh;
    let eps = cfg.layer_norm_eps;
    // Embeddings: word + position + token type 0, then LayerNorm.
    let mut x = p[0].take(ids, 0)?;
    x = (x + p[1].slice_axis(0, 0, s)?)?;
    x = (x + p[2].slice_axis(0, 0, 1)?)?;
    x = layer_norm(&x, &p[3], &p[4], eps)?;
    // Additive attention mask: 0 for tokens, -1e30 for padding (whose
    // softmax weight is then exactly 0, as with Hugging Face's finfo.min).
    let mask_bias = ((mask - 1.0)? * 1e30)?.reshape(&[b, 1, 1, s])?;
    let scale = 1.0 / (dh as f64).sqrt();
    for l in 0..cfg.num_layers {
        let w = &p[EMBEDDING_PARAMS + PER_LAYER * l..EMBEDDING_PARAMS + PER_LAYER * (l + 1)];
        let heads = |v: Value| v.reshape(&[b, s, nh, dh]);
        let q = heads(dense(&x, &w[0], &w[1])?)?;
        let k = heads(dense(&x, &w[2], &w[3])?)?;
        let v = heads(dense(&x, &w[4], &w[5])?)?;
        let scores = (Value::einsum("bqhd,bkhd->bhqk", &q, &k)? * scale)?;
        let probs = nn::softmax(&(scores + &mask_bias)?, 3)?;
        let ctx = Value::einsum("bhqk,bkhd->bqhd", &probs, &v)?.reshape(&[b, s, h])?;
        let attn = dense(&ctx, &w[6], &w[7])?;
        x = layer_norm(&(attn + &x)?, &w[8], &w[9], eps)?;
        let hidden = nn::gelu(&dense(&x, &w[10], &w[11])?, false)?;
        let out = dense(&hidden, &w[12], &w[13])?;
        x = layer_norm(&(out + &x)?, &w[14], &w[15], eps)?;
    }
    // Mean pooling over real tokens, then L2 normalisation.
    let m = mask.reshape(&[b, s, 1])?;
    let summed = (&x * &m)?.sum(&[1], false)?;
    let count = mask.sum(&[1], true)?.maximum(&mask.scalar_like(1e-9)?)?;
    let mean = (summed / count)?;
    let norm = mean
        .square()?
        .sum(&[1], true)?
        .sqrt()?
        .maximum(&mean.scalar_like(1e-12)?)?;
    mean / norm
}

/// Traces the sentence-embedding program for a batch of `batch` sequences
/// of `seq_len` tokens: parameters first (in [`params`] order), then
/// `ids: i32[batch, seq_len]` and `mask: f32[batch, seq_len]`.
pub fn trace_sentence_embedding(
    cfg: &BertConfig,
    batch: usize,
    seq_len: usize,
) -> Result<Computation> {
    let b = Builder::new();
    let mut values = Vec::new();
    for (path, spec) in params(cfg) {
        values.push(b.parameter(spec, &path)?);
    }
    let ids = b.parameter(ArraySpec::new(DType::I32, vec![batch, seq_len]), "ids")?;
    let mask = b.parameter(ArraySpec::new(DType::F32, vec![batch, seq_len]), "mask")?;
    let out = sentence_embedding(cfg, &values, &ids, &mask)?;
    Ok(b.build(&[out])?
        .with_name(&format!("bert_embed_b{batch}_s{seq_len}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every parameter's checkpoint name, as Hugging Face's `BertModel` spells it.
    #[test]
    fn checkpoint_names_are_pytorch_names() {
        let cfg = BertConfig {
            num_layers: 12,
            ..BertConfig::minilm_l6()
        };
        let mut want = vec![
            "embeddings.word_embeddings.weight".to_string(),
            "embeddings.position_embeddings.weight".into(),
            "embeddings.token_type_embeddings.weight".into(),
            "embeddings.LayerNorm.weight".into(),
            "embeddings.LayerNorm.bias".into(),
        ];
        for l in 0..12 {
            for part in [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ] {
                want.push(format!("encoder.layer.{l}.{part}.weight"));
                want.push(format!("encoder.layer.{l}.{part}.bias"));
            }
        }
        let map = checkpoint_names();
        let got: Vec<String> = params(&cfg).iter().map(|(p, _)| map.key_for(p)).collect();
        assert_eq!(got, want);
        // The tree flattens in key order (`layer_10` before `layer_2`);
        // `in_program_order` puts the leaves back in the program's order.
        let tree = param_tree(&cfg);
        let paths = tree.structure().unflatten(tree.paths()).unwrap();
        let order = in_program_order(&cfg, paths).unwrap();
        let want: Vec<String> = params(&cfg).into_iter().map(|(p, _)| p).collect();
        assert_eq!(order, want);
    }
}
