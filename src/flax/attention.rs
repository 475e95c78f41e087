//! `flax.linen.attention`: `dot_product_attention` and
//! `MultiHeadDotProductAttention` (projections `query`/`key`/`value`/`out`
//! as `DenseGeneral`s), masks as `make_attention_mask`/`make_causal_mask`.

use crate::builder::init::{self, Initializer};
use crate::builder::{nn, random, DotDims, Tree, Value};
use crate::dtype::DType;
use crate::error::Result;

use super::linear::{check_call, default_kernel_init, flax_err, DenseGeneral};
use super::module::{merge_param, promote_dtype, MethodSig, Module, CALL};
use super::norm::LayerNorm;
use super::scope::Scope;

fn finfo_min(d: DType) -> f64 {
    match d {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// `nn.dot_product_attention`: `softmax(q kᵀ / √d, masked) v` for
/// `q: [..., q, h, d]`, `k, v: [..., k, h, d]`; `mask` broadcastable to
/// `[..., h, q, k]` (nonzero = attend). Dropout on the weights when
/// `dropout_rng` is given with a positive rate.
pub fn dot_product_attention(
    query: &Value,
    key: &Value,
    value: &Value,
    mask: Option<&Value>,
    dropout: Option<(&Value, f64, bool)>,
    dtype: Option<DType>,
) -> Result<Value> {
    let p = promote_dtype(&[query, key, value], dtype, true)?;
    let (q, k, v) = (&p[0], &p[1], &p[2]);
    let r = q.rank();
    if r < 3 || k.rank() != r || v.rank() != r {
        return Err(flax_err(
            "dot_product_attention".into(),
            format!(
                "q, k, v must have the same rank >= 3, got {}, {}, {}",
                q.spec(),
                k.spec(),
                v.spec()
            ),
        ));
    }
    let dt = q.dtype();
    let depth = q.dims()[r - 1];
    let q = (q / ((depth as f64).sqrt() as f32 as f64))?;
    let nb = r - 3;
    let mut batch: Vec<usize> = (0..nb).collect();
    batch.push(r - 2);
    // '...qhd,...khd->...hqk'
    let mut w = q.dot_general(
        k,
        &DotDims {
            lhs_batch: batch.clone(),
            rhs_batch: batch.clone(),
            lhs_contract: vec![r - 1],
            rhs_contract: vec![r - 1],
        },
    )?;
    if let Some(m) = mask {
        let m = m.ne(&m.scalar_like(0.0)?)?.broadcast_to(w.dims())?;
        let neg = w.scalar_like(finfo_min(dt))?.broadcast_to(w.dims())?;
        w = m.select(&w, &neg)?;
    }
    let mut w = nn::softmax(&w, w.rank() - 1)?;
    if w.dtype() != dt {
        w = w.convert(dt)?;
    }
    if let Some((rng, rate, broadcast)) = dropout {
        if rate > 0.0 {
            let keep_prob = 1.0 - rate;
            let shape: Vec<usize> = if broadcast {
                let mut s = vec![1; r - 2];
                s.extend_from_slice(&w.dims()[w.rank() - 2..]);
                s
            } else {
                w.dims().to_vec()
            };
            let keep = random::bernoulli(rng, keep_prob, &shape)?;
            let mult = (keep.convert(dt)? / keep_prob)?;
            let dims = w.dims().to_vec();
            w = (w * mult.broadcast_to(&dims)?)?;
        }
    }
    // '...hqk,...khd->...qhd'
    let mut wb: Vec<usize> = (0..nb).collect();
    wb.push(nb);
    let out = w.dot_general(
        v,
        &DotDims {
            lhs_batch: wb,
            rhs_batch: batch,
            lhs_contract: vec![r - 1],
            rhs_contract: vec![r - 3],
        },
    )?;
    // out: [..., h, q, d] -> [..., q, h, d]
    let mut perm: Vec<usize> = (0..nb).collect();
    perm.extend([nb + 1, nb, nb + 2]);
    out.transpose(&perm)
}

/// `nn.make_attention_mask(query_input, key_input)` with `pairwise_fn =
/// multiply`: `[..., 1, q, k]` of `dtype`.
pub fn make_attention_mask(query_input: &Value, key_input: &Value, dtype: DType) -> Result<Value> {
    if query_input.rank() == 0 || query_input.rank() != key_input.rank() {
        return Err(flax_err(
            "make_attention_mask".into(),
            format!(
                "inputs need the same rank >= 1, got {} and {}",
                query_input.spec(),
                key_input.spec()
            ),
        ));
    }
    let q = query_input.expand_dims(query_input.rank())?;
    let k = key_input.expand_dims(key_input.rank() - 1)?;
    let mut dims = q.dims().to_vec();
    let n = dims.len();
    dims[n - 1] = k.dims()[n - 1];
    let (q, k) = (q.broadcast_to(&dims)?, k.broadcast_to(&dims)?);
    let m = (q * k)?;
    m.expand_dims(m.rank() - 2)?.convert(dtype)
}

/// `nn.make_causal_mask(x)`: `[batch..., 1, len, len]`, 1 where the key
/// position is not after the query position.
pub fn make_causal_mask(x: &Value, dtype: DType) -> Result<Value> {
    if x.rank() == 0 {
        return Err(flax_err(
            "make_causal_mask".into(),
            format!("input needs rank >= 1, got {}", x.spec()),
        ));
    }
    let b = x.builder();
    let len = x.dims()[x.rank() - 1];
    let idx = b
        .iota(DType::I32, &[len], 0)?
        .broadcast_to(&[&x.dims()[..x.rank() - 1], &[len][..]].concat())?;
    let q = idx.expand_dims(idx.rank())?;
    let k = idx.expand_dims(idx.rank() - 1)?;
    let mut dims = q.dims().to_vec();
    let n = dims.len();
    dims[n - 1] = len;
    let m = q.broadcast_to(&dims)?.ge(&k.broadcast_to(&dims)?)?;
    m.expand_dims(m.rank() - 2)?.convert(dtype)
}

/// `nn.MultiHeadDotProductAttention`.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiHeadDotProductAttention {
    /// Number of heads.
    pub num_heads: usize,
    /// Computation dtype.
    pub dtype: Option<DType>,
    /// Parameter dtype.
    pub param_dtype: DType,
    /// q/k/v features (default: the query's last dimension).
    pub qkv_features: Option<usize>,
    /// Output features (default: the query's last dimension).
    pub out_features: Option<usize>,
    /// Share the dropout mask over batch and heads (default true).
    pub broadcast_dropout: bool,
    /// Attention-weight dropout rate (default 0).
    pub dropout_rate: f64,
    /// Deterministic (no dropout) unless given per call.
    pub deterministic: Option<bool>,
    /// Kernel initializer (lecun_normal).
    pub kernel_init: Initializer,
    /// Bias initializer (zeros).
    pub bias_init: Initializer,
    /// Whether projections have biases.
    pub use_bias: bool,
    /// LayerNorm (no bias) on queries and keys.
    pub normalize_qk: bool,
    /// Explicit submodule name.
    pub name: Option<String>,
}

impl MultiHeadDotProductAttention {
    /// `nn.MultiHeadDotProductAttention(num_heads)` with Flax's defaults.
    pub fn new(num_heads: usize) -> Self {
        MultiHeadDotProductAttention {
            num_heads,
            dtype: None,
            param_dtype: DType::F32,
            qkv_features: None,
            out_features: None,
            broadcast_dropout: true,
            dropout_rate: 0.0,
            deterministic: None,
            kernel_init: default_kernel_init(),
            bias_init: init::zeros(),
            use_bias: true,
            normalize_qk: false,
            name: None,
        }
    }

    /// Named submodule.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Calls the module as a child of `parent`: self-attention when
    /// `inputs_k` is `None`; `inputs_v` defaults to `inputs_k`.
    pub fn apply(
        &self,
        parent: &Scope,
        inputs_q: &Value,
        inputs_k: Option<&Value>,
        inputs_v: Option<&Value>,
        mask: Option<&Value>,
        deterministic: Option<bool>,
    ) -> Result<Value> {
        parent.child("MultiHeadDotProductAttention", self.name.as_deref(), |s| {
            self.call_in(s, inputs_q, inputs_k, inputs_v, mask, deterministic)
        })
    }

    /// The module's body in its own scope.
    pub fn call_in(
        &self,
        s: &Scope,
        inputs_q: &Value,
        inputs_k: Option<&Value>,
        inputs_v: Option<&Value>,
        mask: Option<&Value>,
        deterministic: Option<bool>,
    ) -> Result<Value> {
        let inputs_k = inputs_k.unwrap_or(inputs_q);
        let inputs_v = inputs_v.unwrap_or(inputs_k);
        for (what, v) in [("query", inputs_q), ("key", inputs_k), ("value", inputs_v)] {
            if v.rank() < 2 {
                return Err(flax_err(
                    s.path_text(),
                    format!(
                        "{what} inputs need shape [batch..., length, features], got {}",
                        v.spec()
                    ),
                ));
            }
        }
        let last = inputs_q.dims()[inputs_q.rank() - 1];
        let features = self.out_features.unwrap_or(last);
        let qkv = self.qkv_features.unwrap_or(last);
        if self.num_heads == 0 || !qkv.is_multiple_of(self.num_heads) {
            return Err(flax_err(
                s.path_text(),
                format!(
                    "memory dimension ({qkv}) must be divisible by number of heads ({})",
                    self.num_heads
                ),
            ));
        }
        let head_dim = qkv / self.num_heads;
        let dense = |name: &str| self.projection(name, vec![self.num_heads, head_dim], vec![-1]);
        let mut query = dense("query").apply(s, inputs_q)?;
        let mut key = dense("key").apply(s, inputs_k)?;
        let value = dense("value").apply(s, inputs_v)?;
        if self.normalize_qk {
            let ln = |n: &str| LayerNorm {
                use_bias: false,
                dtype: self.dtype,
                param_dtype: self.param_dtype,
                name: Some(n.to_string()),
                ..LayerNorm::new()
            };
            query = ln("query_ln").apply(s, &query)?;
            key = ln("key_ln").apply(s, &key)?;
        }
        let mut rng = None;
        if self.dropout_rate > 0.0 {
            let det = merge_param(s, "deterministic", self.deterministic, deterministic)?;
            if !det {
                rng = Some(s.make_rng("dropout")?);
            }
        }
        let x = dot_product_attention(
            &query,
            &key,
            &value,
            mask,
            rng.as_ref()
                .map(|r| (r, self.dropout_rate, self.broadcast_dropout)),
            self.dtype,
        )?;
        self.projection("out", vec![features], vec![-2, -1])
            .apply(s, &x)
    }

    /// The `DenseGeneral` projection `name` (`query`, `key`, `value`, `out`).
    fn projection(&self, name: &str, features: Vec<usize>, axis: Vec<isize>) -> DenseGeneral {
        DenseGeneral {
            features,
            axis,
            batch_dims: vec![],
            use_bias: self.use_bias,
            dtype: self.dtype,
            param_dtype: self.param_dtype,
            kernel_init: self.kernel_init.clone(),
            bias_init: self.bias_init.clone(),
            name: Some(name.to_string()),
        }
    }
}

impl Module for MultiHeadDotProductAttention {
    fn type_name(&self) -> String {
        "MultiHeadDotProductAttention".into()
    }
    fn methods(&self) -> Vec<MethodSig> {
        vec![MethodSig::new(
            CALL,
            self.dropout_rate > 0.0 && self.deterministic.is_none(),
        )]
    }
    /// Inputs: `q`, or a tuple `(q, kv)`, `(q, k, v)` or `(q, k, v, mask)`.
    fn call_method(
        &self,
        scope: &Scope,
        method: &str,
        inputs: &Tree<Value>,
        training: Option<bool>,
    ) -> Result<Tree<Value>> {
        check_call("MultiHeadDotProductAttention", method)?;
        let leaves: Vec<Value> = inputs.leaves().into_iter().cloned().collect();
        let (q, k, v, m) = match leaves.as_slice() {
            [q] => (q, None, None, None),
            [q, kv] => (q, Some(kv), None, None),
            [q, k, v] => (q, Some(k), Some(v), None),
            [q, k, v, m] => (q, Some(k), Some(v), Some(m)),
            _ => {
                return Err(flax_err(
                    "MultiHeadDotProductAttention".into(),
                    "inputs are q, (q, kv), (q, k, v) or (q, k, v, mask)",
                ))
            }
        };
        let det = if self.dropout_rate > 0.0 && self.deterministic.is_none() {
            training.map(|t| !t)
        } else {
            None
        };
        Ok(Tree::Leaf(self.call_in(scope, q, k, v, m, det)?))
    }
}
