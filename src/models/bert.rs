//! A BERT encoder written with the tracing builder, with mean pooling and
//! L2 normalisation on top (the sentence-transformers pipeline).
//!
//! Written with the crate's modules ([`Dense`], [`LayerNorm`], [`Embed`]),
//! each bound to its weights by path through a [`VarBuilder`]
//! (`vb.pp("encoder.layer").pp(i)`): every parameter name is written once,
//! where it is used. The paths follow `transformers`' `FlaxBertModel`
//! (`encoder/layer/0/attention/self/query/kernel`, kernels `(in, out)`);
//! [`checkpoint_names`] maps each to its name in a Hugging Face / PyTorch
//! checkpoint, whose `Linear` weights are `(out, in)` and get transposed on
//! load by [`crate::weights::load_tree`].

use std::collections::BTreeSet;
use std::path::Path;

use crate::builder::{nn, Builder, Computation, Tree, Value, VarBuilder};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::flax::{Dense, Embed, LayerNorm};
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
    /// [`param_tree`] builds one entry per tensor the config implies.
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

/// `transformers`' BERT LayerNorm: exact variance, `layer_norm_eps`.
fn layer_norm(cfg: &BertConfig) -> LayerNorm {
    LayerNorm {
        epsilon: cfg.layer_norm_eps,
        use_fast_variance: false,
        ..LayerNorm::new()
    }
}

/// Word + position + token-type-0 embeddings, then LayerNorm; `vb` at
/// `embeddings`.
fn embeddings(cfg: &BertConfig, vb: &VarBuilder, ids: &Value) -> Result<Value> {
    let (s, h) = (ids.dims()[1], cfg.hidden_size);
    let table =
        |name: &str, rows: usize| vb.pp(name).get_checked("embedding", &[rows, h], DType::F32);
    let word = Embed::new(cfg.vocab_size, h).call_in(&vb.pp("word_embeddings"), ids)?;
    let position =
        table("position_embeddings", cfg.max_position_embeddings)?.slice_axis(0, 0, s)?;
    let token_type = table("token_type_embeddings", cfg.type_vocab_size)?.slice_axis(0, 0, 1)?;
    layer_norm(cfg).call_in(&vb.pp("LayerNorm"), &((word + position)? + token_type)?)
}

/// One encoder layer (`vb` at `encoder/layer/{i}`): self-attention with
/// the additive `mask_bias` (`[B, 1, 1, S]`), then the MLP, each followed by
/// a residual LayerNorm.
///
/// With `tp = Some((axis, n))` the layer is one device's part of a
/// Megatron-style tensor-parallel layer inside a `shard_map` over `axis`
/// (`n` devices): `vb` holds this device's shards (the query/key/value and
/// intermediate kernels and biases split by columns, the two output
/// kernels by rows, everything else whole), the device computes
/// `num_heads / n` heads and `intermediate_size / n` MLP units, and the two
/// row-parallel projections are summed over `axis` (`psum`) before their
/// bias is added.
pub(crate) fn encoder_layer(
    cfg: &BertConfig,
    vb: &VarBuilder,
    x: &Value,
    mask_bias: &Value,
    tp: Option<(&str, usize)>,
) -> Result<Value> {
    let (b, s) = (x.dims()[0], x.dims()[1]);
    let (h, nh) = (cfg.hidden_size, cfg.num_heads);
    let dh = h / nh;
    let n = tp.map_or(1, |(_, n)| n);
    let (lh, lnh) = (h / n, nh / n);
    // Row-parallel projection to `h`: local matmul, sum over the axis, bias.
    let project = |vb: &VarBuilder, x: &Value| -> Result<Value> {
        match tp {
            None => Dense::new(h).call_in(vb, x),
            Some((axis, _)) => {
                let partial = Dense {
                    use_bias: false,
                    ..Dense::new(h)
                }
                .call_in(vb, x)?
                .psum(&[axis])?;
                partial + vb.get_checked("bias", &[h], DType::F32)?
            }
        }
    };
    let attention = vb.pp("attention");
    let heads = |name: &str| {
        Dense::new(lh)
            .call_in(&attention.pp("self").pp(name), x)?
            .reshape(&[b, s, lnh, dh])
    };
    let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?);
    let scores = (Value::einsum("bqhd,bkhd->bhqk", &q, &k)? * (1.0 / (dh as f64).sqrt()))?;
    let probs = nn::softmax(&(scores + mask_bias)?, 3)?;
    let context = Value::einsum("bhqk,bkhd->bqhd", &probs, &v)?.reshape(&[b, s, lh])?;
    let out = attention.pp("output");
    let attended = project(&out.pp("dense"), &context)?;
    let x = layer_norm(cfg).call_in(&out.pp("LayerNorm"), &(attended + x)?)?;
    let inner = Dense::new(cfg.intermediate_size / n).call_in(&vb.pp("intermediate.dense"), &x)?;
    let y = project(&vb.pp("output.dense"), &nn::gelu(&inner, false)?)?;
    layer_norm(cfg).call_in(&vb.pp("output.LayerNorm"), &(y + x)?)
}

/// Records the encoder + mean pooling + L2 normalisation for `ids`
/// (`i32[B, S]`) and `mask` (`f32[B, S]`, 1 for tokens, 0 for padding),
/// with the weights bound from `vb` (see [`param_tree`] for the paths).
/// Returns `f32[B, hidden]`.
///
/// Errors: [`Error::OutOfRange`] when `ids` is not of rank 2, `mask` not
/// of its shape, or the sequence longer than the model's positions; [`Error::UnknownPath`] or [`Error::SpecMismatch`] naming a
/// weight that `vb` lacks or holds with another shape.
pub fn sentence_embedding(
    cfg: &BertConfig,
    vb: &VarBuilder,
    ids: &Value,
    mask: &Value,
) -> Result<Value> {
    sentence_embedding_with(cfg, vb, ids, mask, None)
}

/// [`sentence_embedding`], optionally as one device's part of the
/// tensor-parallel model (`tp`: see [`encoder_layer`] and
/// [`crate::models::bert_tp`]).
pub(crate) fn sentence_embedding_with(
    cfg: &BertConfig,
    vb: &VarBuilder,
    ids: &Value,
    mask: &Value,
    tp: Option<(&str, usize)>,
) -> Result<Value> {
    if ids.rank() != 2 || mask.dims() != ids.dims() {
        return Err(Error::OutOfRange {
            function: "bert::sentence_embedding",
            what: "ids and mask".into(),
            value: format!("{} and {}", ids.spec(), mask.spec()),
            expected: "i32[batch, seq] ids and a mask of the same shape".into(),
        });
    }
    let (b, s) = (ids.dims()[0], ids.dims()[1]);
    if s > cfg.max_position_embeddings {
        return Err(Error::OutOfRange {
            function: "bert::sentence_embedding",
            what: "sequence length".into(),
            value: s.to_string(),
            expected: format!(
                "at most the model's {} positions",
                cfg.max_position_embeddings
            ),
        });
    }
    let mut x = embeddings(cfg, &vb.pp("embeddings"), ids)?;
    // Additive attention mask: 0 for tokens, -1e30 for padding (whose
    // softmax weight is then exactly 0, as with Hugging Face's finfo.min).
    let mask_bias = ((mask - 1.0)? * 1e30)?.reshape(&[b, 1, 1, s])?;
    let layers = vb.pp("encoder.layer");
    for i in 0..cfg.num_layers {
        x = encoder_layer(cfg, &layers.pp(i), &x, &mask_bias, tp)?;
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

/// The model's parameters as a tree of specs (the `wanted` of
/// [`crate::weights::load_tree`]), in the layout of `transformers`'
/// `FlaxBertModel`: `embeddings/word_embeddings/embedding`,
/// `encoder/layer/0/attention/self/query/kernel` (`(in, out)`),
/// `encoder/layer/0/output/LayerNorm/scale`, …
///
/// The paths are those [`sentence_embedding`] asks for: it is traced once
/// with a declaring [`VarBuilder`] on a one-token input.
///
/// Errors: those of [`sentence_embedding`].
pub fn param_tree(cfg: &BertConfig) -> Result<Tree<ArraySpec>> {
    let b = Builder::new();
    let vb = VarBuilder::declare(&b);
    let ids = b.parameter(ArraySpec::new(DType::I32, vec![1, 1]), "ids")?;
    let mask = b.parameter(ArraySpec::new(DType::F32, vec![1, 1]), "mask")?;
    sentence_embedding(cfg, &vb, &ids, &mask)?;
    vb.declared()
}

/// How the parameter paths map to the tensors of a Hugging Face `BertModel`
/// checkpoint (PyTorch names, no `bert.` prefix): `.`-separated, the Flax
/// leaf names `kernel`, `scale` and `embedding` renamed `weight` (whole
/// segments only: `embeddings` stays), `Linear` weights stored transposed,
/// and the tensors BERT has but the sentence embedding does not use
/// (pooler, `position_ids`) allowed.
pub fn checkpoint_names() -> NameMap {
    NameMap::new()
        .separator(".")
        .rename("kernel", "weight")
        .rename("scale", "weight")
        .rename("embedding", "weight")
        .transposed("kernel")
        .allow_unused(true)
}

/// Traces the sentence-embedding program for a batch of `batch` sequences
/// of `seq_len` tokens: the parameters first, in the flatten order of
/// [`param_tree`] (so the leaves of a loaded tree are the arguments, in
/// order), then `ids: i32[batch, seq_len]` and `mask: f32[batch, seq_len]`.
///
/// Errors: those of [`sentence_embedding`].
pub fn trace_sentence_embedding(
    cfg: &BertConfig,
    batch: usize,
    seq_len: usize,
) -> Result<Computation> {
    let specs = param_tree(cfg)?;
    let b = Builder::new();
    let mut values = Vec::new();
    for (path, spec) in specs.entries() {
        values.push(b.parameter(spec.clone(), &path)?);
    }
    let params = specs.structure().unflatten(values)?;
    let ids = b.parameter(ArraySpec::new(DType::I32, vec![batch, seq_len]), "ids")?;
    let mask = b.parameter(ArraySpec::new(DType::F32, vec![batch, seq_len]), "mask")?;
    let out = sentence_embedding(cfg, &VarBuilder::new(&params), &ids, &mask)?;
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
        let tree = param_tree(&cfg).unwrap();
        let mut got: Vec<String> = tree.paths().iter().map(|p| map.key_for(p)).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // Exactly the `Linear` kernels are stored transposed.
        let transposed: Vec<String> = tree
            .paths()
            .into_iter()
            .filter(|p| map.is_transposed(p))
            .collect();
        assert_eq!(transposed.len(), 6 * 12);
        assert!(transposed.iter().all(|p| p.ends_with("/kernel")));
        // A weight of another shape, or a missing one, names its full path.
        let b = Builder::new();
        let ids = b
            .parameter(ArraySpec::new(DType::I32, vec![1, 2]), "ids")
            .unwrap();
        let mask = b
            .parameter(ArraySpec::new(DType::F32, vec![1, 2]), "mask")
            .unwrap();
        let small = BertConfig {
            num_layers: 1,
            ..BertConfig::minilm_l6()
        };
        let make = |wrong: &str| {
            let tree = param_tree(&small).unwrap();
            let mut leaves = Vec::new();
            for (path, spec) in tree.entries() {
                let mut spec = spec.clone();
                if path == wrong {
                    spec.dims.reverse();
                }
                leaves.push(b.parameter(spec, &path).unwrap());
            }
            tree.structure().unflatten(leaves).unwrap()
        };
        let bad = make("encoder/layer/0/output/dense/kernel");
        let params = make("");
        match sentence_embedding(&small, &VarBuilder::new(&bad), &ids, &mask) {
            Err(Error::SpecMismatch { path, .. }) => {
                assert_eq!(path.to_string(), "encoder/layer/0/output/dense/kernel")
            }
            other => panic!("expected SpecMismatch, got {other:?}"),
        }
        let two = BertConfig {
            num_layers: 2,
            ..small.clone()
        };
        match sentence_embedding(&two, &VarBuilder::new(&params), &ids, &mask) {
            Err(Error::UnknownPath { path }) => {
                assert_eq!(
                    path.to_string(),
                    "encoder/layer/1/attention/self/query/kernel"
                )
            }
            other => panic!("expected UnknownPath, got {other:?}"),
        }
        assert!(matches!(
            sentence_embedding(
                &small,
                &VarBuilder::new(&params),
                &mask.reshape(&[2]).unwrap(),
                &mask
            ),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(
            tree.get("encoder/layer/11/intermediate/dense/kernel")
                .unwrap()
                .dims,
            vec![384, 1536]
        );
    }
}
