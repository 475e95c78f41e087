//! Helpers shared by the benchmarks (`mod common;`). Each bench uses some
//! of them, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod interleaved;
pub mod mlp;

use xlayer::builder::{nn, ConvAttrs, ConvDims, Tree, Value};
use xlayer::flax::{make_causal_mask, Dense, FnModule, LayerNorm, MultiHeadDotProductAttention};
use xlayer::{Buffer, Client, DType};

/// A 3×3 NHWC convolution, stride 1, padding 1 ("same"), plus bias `b`:
/// the conv of the benchmarks' Flax-style CNN.
pub fn conv(x: &Value, k: &Value, b: &Value) -> xlayer::Result<Value> {
    let attrs = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    x.conv_general(k, &attrs)? + b
}

/// The median of `v` (the mean of the middle two for an even count; NaN
/// for an empty `v`).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[m],
        _ => (s[m - 1] + s[m]) / 2.0,
    }
}

/// A map of named f32 parameters on the device, uniform in
/// `±1/sqrt(fan_in)` (fan-in: the product of all dimensions but the last)
/// from a seeded generator.
pub fn random_params(
    client: &Client,
    shapes: &[(&str, Vec<usize>)],
    seed: u64,
) -> xlayer::Result<Tree<Buffer>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut m = Vec::new();
    for (name, dims) in shapes {
        let n: usize = dims.iter().product();
        let fan_in = dims.iter().rev().skip(1).product::<usize>().max(1) as f32;
        let data: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0..1.0) / fan_in.sqrt())
            .collect();
        m.push((
            name.to_string(),
            Tree::leaf(client.buffer_from_host(&data, dims)?),
        ));
    }
    Ok(Tree::Map(m.into_iter().collect()))
}

/// A pre-LayerNorm transformer block as a Flax module: causal
/// self-attention with `heads` heads, then Dense 4·d + gelu (tanh) and
/// Dense d, each with a residual connection (the JAX side's `Block`).
pub fn block(heads: usize) -> FnModule {
    FnModule::new("Block").call(move |s, x, _| {
        let x: Value = x.clone().into_leaf()?;
        let d = x.dims()[2];
        let ones = x.builder().ones(DType::F32, &x.dims()[..2])?;
        let mask = make_causal_mask(&ones, DType::F32)?;
        let h = LayerNorm::new().apply(s, &x)?;
        let h =
            MultiHeadDotProductAttention::new(heads).apply(s, &h, None, None, Some(&mask), None)?;
        let x = (&x + &h)?;
        let h = LayerNorm::new().apply(s, &x)?;
        let h = nn::gelu(&Dense::new(4 * d).apply(s, &h)?, true)?;
        let h = Dense::new(d).apply(s, &h)?;
        Ok(Tree::leaf((x + h)?))
    })
}
