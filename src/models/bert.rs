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

use std::path::Path;

use crate::builder::{nn, Builder, Computation, Tree, Value, VarBuilder};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::flax::{Dense, Embed, LayerNorm};
use crate::weights::NameMap;

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
    /// Errors: [`Error::Io`], or [`Error::Invalid`] naming the file and the field.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "cannot read model config",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |m: String| Error::Invalid(format!("model config {}: {m}", path.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing integer `{k}`")))
        };
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "gelu" {
                return Err(bad(format!(
                    "hidden_act `{act}` is not supported (gelu only)"
                )));
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
        if cfg.num_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        Ok(cfg)
    }
}

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
fn encoder_layer(cfg: &BertConfig, vb: &VarBuilder, x: &Value, mask_bias: &Value) -> Result<Value> {
    let (b, s) = (x.dims()[0], x.dims()[1]);
    let (h, nh) = (cfg.hidden_size, cfg.num_heads);
    let dh = h / nh;
    let dense = Dense::new(h);
    let attention = vb.pp("attention");
    let heads = |name: &str| {
        dense
            .call_in(&attention.pp("self").pp(name), x)?
            .reshape(&[b, s, nh, dh])
    };
    let (q, k, v) = (heads("query")?, heads("key")?, heads("value")?);
    let scores = (Value::einsum("bqhd,bkhd->bhqk", &q, &k)? * (1.0 / (dh as f64).sqrt()))?;
    let probs = nn::softmax(&(scores + mask_bias)?, 3)?;
    let context = Value::einsum("bhqk,bkhd->bqhd", &probs, &v)?.reshape(&[b, s, h])?;
    let out = attention.pp("output");
    let attended = dense.call_in(&out.pp("dense"), &context)?;
    let x = layer_norm(cfg).call_in(&out.pp("LayerNorm"), &(attended + x)?)?;
    let inner = Dense::new(cfg.intermediate_size).call_in(&vb.pp("intermediate.dense"), &x)?;
    let y = dense.call_in(&vb.pp("output.dense"), &nn::gelu(&inner, false)?)?;
    layer_norm(cfg).call_in(&vb.pp("output.LayerNorm"), &(y + x)?)
}

/// Records the encoder + mean pooling + L2 normalisation for `ids`
/// (`i32[B, S]`) and `mask` (`f32[B, S]`, 1 for tokens, 0 for padding),
/// with the weights bound from `vb` (see [`param_tree`] for the paths).
/// Returns `f32[B, hidden]`.
///
/// Errors: [`Error::Invalid`] when the sequence is longer than the model's
/// positions; [`Error::UnknownPath`] or [`Error::SpecMismatch`] naming a
/// weight that `vb` lacks or holds with another shape.
pub fn sentence_embedding(
    cfg: &BertConfig,
    vb: &VarBuilder,
    ids: &Value,
    mask: &Value,
) -> Result<Value> {
    let (b, s) = (ids.dims()[0], ids.dims()[1]);
    if s > cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "sequence length {s} exceeds the model's {} positions",
            cfg.max_position_embeddings
        )));
    }
    let mut x = embeddings(cfg, &vb.pp("embeddings"), ids)?;
    // Additive attention mask: 0 for tokens, -1e30 for padding (whose
    // softmax weight is then exactly 0, as with Hugging Face's finfo.min).
    let mask_bias = ((mask - 1.0)? * 1e30)?.reshape(&[b, 1, 1, s])?;
    let layers = vb.pp("encoder.layer");
    for i in 0..cfg.num_layers {
        x = encoder_layer(cfg, &layers.pp(i), &x, &mask_bias)?;
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
        assert_eq!(
            tree.get("encoder/layer/11/intermediate/dense/kernel")
                .unwrap()
                .dims,
            vec![384, 1536]
        );
    }
}
