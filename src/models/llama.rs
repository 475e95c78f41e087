//! The llama decoder (SmolLM2, Llama 2/3 shapes) written with the tracing
//! builder over GGUF weights bound by name through the crate's
//! [`VarBuilder`] (`vb.pp("blk").pp(i).pp("attn_q")`, read as typed
//! quantized weights by [`super::qweight::QWeight`]):
//! RMSNorm, rotary position embeddings, grouped-query attention over a KV
//! cache, SwiGLU, and an output head (tied to the token embedding when the
//! file has no `output.weight`).
//!
//! One traced function, [`forward`], serves both prefill and decode: it
//! takes `S` token ids at positions `start .. start + S` (of which the first
//! `n` are real), writes their keys and values into the cache at `start`,
//! attends causally over the cache, and returns the logits at position
//! `start + n - 1`. Decode is the `S = 1` case. The first chunk of a prompt
//! ([`Attention::Chunk`]) attends over its own `S` keys only, not over the
//! whole (still empty) cache.
//!
//! GGUF stores `attn_q`/`attn_k` for GGML's rotation of adjacent pairs
//! (`x[2i]`, `x[2i+1]`), which is what `rope` applies.

use crate::builder::{nn, Value, VarBuilder};
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufProblem};

use super::qweight::{self, QWeight};

/// The shape of a llama model, from GGUF metadata (`llama.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Decoder blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the SwiGLU MLP.
    pub ffn: usize,
    /// The longest context the model was trained for.
    pub context: usize,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Whether the output head is the token embedding (no `output.weight`).
    pub tied_head: bool,
}

impl LlamaConfig {
    /// Reads the configuration of a llama GGUF file and checks that every
    /// tensor the forward pass binds is present with the right shape.
    ///
    /// Errors: [`Error::Gguf`] for another architecture
    /// ([`GgufProblem::Architecture`]) or missing/mistyped metadata;
    /// [`Error::Weights`] listing every missing or misshaped tensor.
    pub fn from_gguf(f: &GgufFile) -> Result<LlamaConfig> {
        let arch = f.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::Gguf {
                path: f.path().to_path_buf(),
                tensor: None,
                problem: GgufProblem::Architecture {
                    found: arch.to_string(),
                    expected: "llama is",
                },
            });
        }
        let hidden = f.get_usize("llama.embedding_length")?;
        let heads = f.get_usize("llama.attention.head_count")?;
        let kv_heads = f.get_usize("llama.attention.head_count_kv")?;
        let vocab_size = f.tensor("token_embd.weight")?.shape[0];
        let cfg = LlamaConfig {
            vocab_size,
            hidden,
            layers: f.get_usize("llama.block_count")?,
            heads,
            kv_heads,
            head_dim: hidden.checked_div(heads).unwrap_or(0),
            ffn: f.get_usize("llama.feed_forward_length")?,
            context: f.get_usize("llama.context_length")?,
            rope_theta: f.get_f64("llama.rope.freq_base").unwrap_or(10000.0),
            eps: f.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            tied_head: f.tensor("output.weight").is_err(),
        };
        if heads == 0
            || kv_heads == 0
            || !hidden.is_multiple_of(heads)
            || !heads.is_multiple_of(kv_heads)
            || !cfg.head_dim.is_multiple_of(2)
        {
            return Err(Error::Gguf {
                path: f.path().to_path_buf(),
                tensor: None,
                problem: crate::gguf::GgufProblem::Attention {
                    heads,
                    kv_heads,
                    hidden,
                    head_dim: cfg.head_dim,
                },
            });
        }
        cfg.check_tensors(f)?;
        Ok(cfg)
    }

    /// Every tensor the forward pass binds, with its shape.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, kv) = (self.hidden, self.kv_heads * self.head_dim);
        let mut v = vec![
            ("token_embd.weight".to_string(), vec![self.vocab_size, h]),
            ("output_norm.weight".to_string(), vec![h]),
        ];
        if !self.tied_head {
            v.push(("output.weight".into(), vec![self.vocab_size, h]));
        }
        for l in 0..self.layers {
            for (name, shape) in [
                ("attn_norm", vec![h]),
                ("attn_q", vec![h, h]),
                ("attn_k", vec![kv, h]),
                ("attn_v", vec![kv, h]),
                ("attn_output", vec![h, h]),
                ("ffn_norm", vec![h]),
                ("ffn_gate", vec![self.ffn, h]),
                ("ffn_up", vec![self.ffn, h]),
                ("ffn_down", vec![h, self.ffn]),
            ] {
                v.push((format!("blk.{l}.{name}.weight"), shape));
            }
        }
        v
    }

    fn check_tensors(&self, f: &GgufFile) -> Result<()> {
        let mut problems = Vec::new();
        for (name, shape) in self.tensors() {
            match f.tensor(&name) {
                Err(_) => problems.push((name, "missing from the GGUF file".to_string())),
                Ok(t) if t.shape != shape => problems.push((
                    name,
                    format!("has shape {:?}, the model needs {shape:?}", t.shape),
                )),
                Ok(_) => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let (tensor, reason) = problems.remove(0);
        Err(Error::Weights {
            file: f.path().to_path_buf(),
            tensor,
            reason,
            more: problems,
        })
    }
}

/// RMSNorm over the last axis with the f32 weight `vb/weight` (GGUF's
/// `*_norm.weight`).
fn rms_norm(vb: &VarBuilder, x: &Value, eps: f64) -> Result<Value> {
    let last = x.rank() - 1;
    let w = vb.get_checked("weight", &[x.dims()[last]], DType::F32)?;
    let ms = x.square()?.mean(&[last], true)?;
    ((x * (ms + eps)?.rsqrt()?)?) * w
}

/// Rotates adjacent pairs of `x: f32[S, heads, dim]` by position:
/// `cos`/`sin` are `f32[S, 1, dim / 2]`.
fn rope(x: &Value, cos: &Value, sin: &Value) -> Result<Value> {
    let (s, h, d) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    let pairs = x.reshape(&[s, h, d / 2, 2])?;
    let a = pairs.slice_axis(3, 0, 1)?.reshape(&[s, h, d / 2])?;
    let b = pairs.slice_axis(3, 1, 2)?.reshape(&[s, h, d / 2])?;
    let ra = ((&a * cos)? - (&b * sin)?)?.expand_dims(3)?;
    let rb = ((&a * sin)? + (&b * cos)?)?.expand_dims(3)?;
    Value::concatenate(&[ra, rb], 3)?.reshape(&[s, h, d])
}

/// The specs of one layer's key and value caches for `capacity` tokens:
/// `f32[kv_heads, head_dim, capacity]` and `f32[kv_heads, capacity,
/// head_dim]`.
pub fn cache_specs(cfg: &LlamaConfig, capacity: usize) -> (ArraySpec, ArraySpec) {
    let (kv, d) = (cfg.kv_heads, cfg.head_dim);
    (
        ArraySpec::new(DType::F32, vec![kv, d, capacity]),
        ArraySpec::new(DType::F32, vec![kv, capacity, d]),
    )
}

/// What the queries of one [`forward`] call attend over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attention {
    /// The whole KV cache (masked causally by position): any `start`, the
    /// decode step and later prefill chunks.
    Cache,
    /// Only the call's own `S` keys and values (causally): the tokens are
    /// positions `0 .. S` of a new sequence, so `start` is taken as 0 (the
    /// parameter is ignored) and the cache, empty before, is written but not
    /// read. The same result as [`Attention::Cache`] at `start = 0`, with
    /// scores of `S x S` instead of `S x capacity` per head.
    Chunk,
}

/// The decoder over `ids: i32[S]` at positions `start + 0 .. S` (`start`:
/// `i32[]`), the first `n` (`i32[]`) real, with its weights bound by their
/// GGUF names under `vb` (`token_embd.weight`, `blk.{i}.attn_q.weight`, ...;
/// see [`super::qweight::DeviceWeights::declare`]). `cache` holds each
/// layer's key cache, `f32[kv_heads, head_dim, capacity]`, and value cache,
/// `f32[kv_heads, capacity, head_dim]` (see [`cache_specs`]), updated at
/// `start`: one pair of arrays per layer, so that each update is done in
/// place on its own buffer (with one array for all layers, XLA copied the
/// whole cache at every layer's update, which made a decode step grow with
/// the capacity), each laid out as the attention's batched products read
/// it (with `[capacity, kv_heads, head_dim]` for both, XLA transposed both
/// whole caches into new arrays at every step). `attend` says whether the
/// queries read the whole cache or only this call's keys (the first chunk of
/// a prompt, `start` taken as 0; see [`Attention`]). Returns the logits at
/// position `start + n - 1` (`f32[vocab]`) and the updated caches. The
/// caller keeps `start + S <= capacity`.
///
/// Errors: [`Error::OutOfRange`] when `cache` does not hold one pair per
/// layer; weight binding and op errors.
pub fn forward(
    cfg: &LlamaConfig,
    vb: &VarBuilder,
    ids: &Value,
    start: &Value,
    n: &Value,
    cache: &[(Value, Value)],
    attend: Attention,
) -> Result<(Value, Vec<(Value, Value)>)> {
    if cache.len() != cfg.layers {
        return Err(Error::OutOfRange {
            function: "llama::forward",
            what: "KV-cache layers".into(),
            value: cache.len().to_string(),
            expected: format!("one (key, value) pair per layer: {}", cfg.layers),
        });
    }
    let b = ids.builder().clone();
    let s = ids.dims()[0];
    let (h, nh, nkv, dh) = (cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim);
    let cap = cache[0].1.dims()[1];
    let rep = nh / nkv;
    let start = match attend {
        Attention::Cache => start.clone(),
        Attention::Chunk => b.scalar(0i32)?,
    };
    let start = &start;
    let pos = (b.iota(DType::I32, &[s], 0)? + start)?;
    // Rotary angles: pos * theta^(-2i/d), as f32.
    let inv: Vec<f32> = (0..dh / 2)
        .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dh as f64)) as f32)
        .collect();
    let inv = b.constant(&inv, &[1, 1, dh / 2])?;
    let ang = (pos.convert(DType::F32)?.reshape(&[s, 1, 1])? * inv)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    // Causal mask over the keys read: key slot c (of the cache, or of this
    // chunk, whose slot c is position c) is visible from query s when c <=
    // pos[s] (later slots hold nothing yet, or padding).
    let keys = match attend {
        Attention::Cache => cap,
        Attention::Chunk => s,
    };
    let slots = b.iota(DType::I32, &[1, s, keys], 2)?;
    let visible = slots.le(&pos.reshape(&[1, s, 1])?)?;
    let neg = b.full(-1e30, DType::F32, &[1, s, keys])?;
    let zero = b.zeros(DType::F32, &[1, s, keys])?;
    let mask_bias = visible.select(&zero, &neg)?.reshape(&[1, 1, s, keys])?;
    let scale = 1.0 / (dh as f64).sqrt();
    let zero_i = b.scalar(0i32)?;

    let embd = QWeight::load(&vb.pp("token_embd"), "weight", &[cfg.vocab_size, h])?;
    let mut x = embd.rows(ids)?;
    let mut updated = Vec::with_capacity(cfg.layers);
    let blk = vb.pp("blk");
    for (l, (k_cache, v_cache)) in cache.iter().enumerate() {
        let wl = blk.pp(l);
        let xn = rms_norm(&wl.pp("attn_norm"), &x, cfg.eps)?;
        let q = qweight::linear(&wl.pp("attn_q"), &xn, h)?.reshape(&[s, nh, dh])?;
        let k = qweight::linear(&wl.pp("attn_k"), &xn, nkv * dh)?.reshape(&[s, nkv, dh])?;
        let v = qweight::linear(&wl.pp("attn_v"), &xn, nkv * dh)?.reshape(&[s, nkv, dh])?;
        let q = (rope(&q, &cos, &sin)? * scale)?;
        let k = rope(&k, &cos, &sin)?;
        let (kt, vt) = (k.transpose(&[1, 2, 0])?, v.transpose(&[1, 0, 2])?);
        let kl =
            k_cache.dynamic_update_slice(&kt, &[zero_i.clone(), zero_i.clone(), start.clone()])?;
        let vl =
            v_cache.dynamic_update_slice(&vt, &[zero_i.clone(), start.clone(), zero_i.clone()])?;
        let (kr, vr) = match attend {
            Attention::Cache => (&kl, &vl),
            Attention::Chunk => (&kt, &vt),
        };
        let qg = q.reshape(&[s, nkv, rep, dh])?;
        let scores = Value::einsum("sgrd,gdc->grsc", &qg, kr)?;
        let probs = nn::softmax(&(scores + &mask_bias)?, 3)?;
        let ctx = Value::einsum("grsc,gcd->sgrd", &probs, vr)?.reshape(&[s, h])?;
        updated.push((kl, vl));
        x = (x + qweight::linear(&wl.pp("attn_output"), &ctx, h)?)?;
        let xn = rms_norm(&wl.pp("ffn_norm"), &x, cfg.eps)?;
        let gate = nn::silu(&qweight::linear(&wl.pp("ffn_gate"), &xn, cfg.ffn)?)?;
        let up = qweight::linear(&wl.pp("ffn_up"), &xn, cfg.ffn)?;
        x = (x + qweight::linear(&wl.pp("ffn_down"), &(gate * up)?, h)?)?;
    }
    let last = (n - 1.0)?;
    let xl = x.dynamic_slice(&[last, zero_i], &[1, h])?;
    let xl = rms_norm(&vb.pp("output_norm"), &xl, cfg.eps)?;
    let head = if cfg.tied_head {
        embd
    } else {
        QWeight::load(&vb.pp("output"), "weight", &[cfg.vocab_size, h])?
    };
    let logits = head.linear(&xl)?.reshape(&[cfg.vocab_size])?;
    Ok((logits, updated))
}
