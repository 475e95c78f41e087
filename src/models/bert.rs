//! A BERT encoder written with the tracing builder, with mean pooling and
//! L2 normalisation on top (the sentence-transformers pipeline).
//!
//! Parameters follow Flax's layout (kernels `(in, out)`); [`params`] maps
//! each to its name in a Hugging Face / PyTorch checkpoint, whose `Linear`
//! weights are `(out, in)` and get transposed on load.

use std::path::Path;

use crate::builder::{nn, Builder, Computation, DotDims, Value};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::checkpoint::Param;

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

const PER_LAYER: usize = 16;
const EMBEDDING_PARAMS: usize = 5;

/// The model's parameters in the order the traced program takes them, with
/// their checkpoint names (Hugging Face `BertModel`, no `bert.` prefix).
pub fn params(cfg: &BertConfig) -> Vec<Param> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let p = |path: String, name: String, dims: Vec<usize>, transpose: bool| Param {
        path,
        checkpoint_name: name,
        dims,
        transpose,
    };
    let mut v = vec![
        p(
            "embeddings/word".into(),
            "embeddings.word_embeddings.weight".into(),
            vec![cfg.vocab_size, h],
            false,
        ),
        p(
            "embeddings/position".into(),
            "embeddings.position_embeddings.weight".into(),
            vec![cfg.max_position_embeddings, h],
            false,
        ),
        p(
            "embeddings/token_type".into(),
            "embeddings.token_type_embeddings.weight".into(),
            vec![cfg.type_vocab_size, h],
            false,
        ),
        p(
            "embeddings/layer_norm/scale".into(),
            "embeddings.LayerNorm.weight".into(),
            vec![h],
            false,
        ),
        p(
            "embeddings/layer_norm/bias".into(),
            "embeddings.LayerNorm.bias".into(),
            vec![h],
            false,
        ),
    ];
    for l in 0..cfg.num_layers {
        let dense = |v: &mut Vec<Param>, path: &str, name: &str, din: usize, dout: usize| {
            v.push(p(
                format!("layer_{l}/{path}/kernel"),
                format!("encoder.layer.{l}.{name}.weight"),
                vec![din, dout],
                true,
            ));
            v.push(p(
                format!("layer_{l}/{path}/bias"),
                format!("encoder.layer.{l}.{name}.bias"),
                vec![dout],
                false,
            ));
        };
        let norm = |v: &mut Vec<Param>, path: &str, name: &str| {
            v.push(p(
                format!("layer_{l}/{path}/scale"),
                format!("encoder.layer.{l}.{name}.weight"),
                vec![h],
                false,
            ));
            v.push(p(
                format!("layer_{l}/{path}/bias"),
                format!("encoder.layer.{l}.{name}.bias"),
                vec![h],
                false,
            ));
        };
        dense(&mut v, "attention/query", "attention.self.query", h, h);
        dense(&mut v, "attention/key", "attention.self.key", h, h);
        dense(&mut v, "attention/value", "attention.self.value", h, h);
        dense(&mut v, "attention/out", "attention.output.dense", h, h);
        norm(&mut v, "attention/layer_norm", "attention.output.LayerNorm");
        dense(&mut v, "mlp/in", "intermediate.dense", h, i);
        dense(&mut v, "mlp/out", "output.dense", i, h);
        norm(&mut v, "mlp/layer_norm", "output.LayerNorm");
    }
    debug_assert_eq!(v.len(), EMBEDDING_PARAMS + PER_LAYER * cfg.num_layers);
    v
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
    for p in params(cfg) {
        values.push(b.parameter(ArraySpec::new(DType::F32, p.dims.clone()), &p.path)?);
    }
    let ids = b.parameter(ArraySpec::new(DType::I32, vec![batch, seq_len]), "ids")?;
    let mask = b.parameter(ArraySpec::new(DType::F32, vec![batch, seq_len]), "mask")?;
    let out = sentence_embedding(cfg, &values, &ids, &mask)?;
    Ok(b.build(&[out])?
        .with_name(&format!("bert_embed_b{batch}_s{seq_len}")))
}
