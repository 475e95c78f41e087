//! Convolutions with few input features per output (a first layer on a
//! grey or RGB image) as a sum of shifted products, one per kernel tap and
//! input feature.
//!
//! `out = Σ_{tap, c} slice(x, tap)[.., c] * k[tap, c, :]`, all broadcast
//! into the output's layout: elementwise ops that the CPU compiler fuses
//! into one loop. XLA's CPU convolution (Eigen's) is slow when the
//! contraction is this short: on the pinned plugin a 3x3 convolution of
//! f32[256,28,28,1] to 32 features with bias and relu took 18.8 ms as a
//! `convolution` and 2.3 ms as shifted products; at 3 input features
//! (27 terms) 25.9 against 13.9 ms; at 4 features (36 terms) they were
//! level and at 8 (72 terms) the products were 2.4x slower, hence
//! [`MAX_TERMS`] (docs/benchmarks.md, "Convolutions on the pinned plugin").
//!
//! Only the forward program changes: the result carries the convolution's
//! own gradient (`with_gradient_of`), because the products' gradient (one
//! reduction per term) made a CNN train step 1.5x slower, while the
//! convolution's transposes are convolutions the compiler handles well.
//! The convolution itself is then dead code in a forward program.

use crate::dtype::DType;
use crate::error::Result;

use super::core::Value;
use super::op::ConvAttrs;

/// Largest number of products (kernel taps × input features) lowered this
/// way: measured wins up to 27 (3x3 × 3 features), level at 36.
pub(super) const MAX_TERMS: usize = 27;

/// `x` convolved with `kernel` as shifted products, or `None` when the
/// convolution is not of the supported form: f32/f64 (the sum order of
/// other types would change their rounding), one feature and batch group,
/// no input dilation, no negative padding, at most [`MAX_TERMS`] products
/// and a non-empty output. `out` is the output's dimensions (already
/// checked by `conv_general`).
pub(super) fn shifted_products(
    x: &Value,
    kernel: &Value,
    attrs: &ConvAttrs,
    out: &[usize],
) -> Result<Option<Value>> {
    let d = &attrs.dims;
    let n = d.input_spatial.len();
    let c_in = kernel.dims()[d.kernel_input_feature];
    let taps: usize = d.kernel_spatial.iter().map(|&s| kernel.dims()[s]).product();
    if !matches!(x.dtype(), DType::F32 | DType::F64)
        || attrs.feature_group_count != 1
        || attrs.batch_group_count != 1
        || attrs.lhs_dilation.iter().any(|&v| v != 1)
        || attrs.padding.iter().any(|&(lo, hi)| lo < 0 || hi < 0)
        || taps == 0
        || c_in == 0
        || taps.saturating_mul(c_in) > MAX_TERMS
        || out.contains(&0)
    {
        return Ok(None);
    }
    let rank = n + 2;
    // Pad the spatial dimensions once.
    let xp = if attrs.padding.iter().all(|&p| p == (0, 0)) {
        x.clone()
    } else {
        let mut low = vec![0i64; rank];
        let mut high = vec![0i64; rank];
        for (i, &(lo, hi)) in attrs.padding.iter().enumerate() {
            low[d.input_spatial[i]] = lo;
            high[d.input_spatial[i]] = hi;
        }
        x.pad(&x.scalar_like(0.0)?, &low, &high, &vec![0; rank])?
    };
    // The input's non-feature dimensions, in the input's order, and where
    // each goes in the output.
    let kept: Vec<usize> = (0..rank).filter(|&a| a != d.input_feature).collect();
    let to_out: Vec<usize> = kept
        .iter()
        .map(|&a| {
            if a == d.input_batch {
                d.output_batch
            } else {
                let i = d.input_spatial.iter().position(|&s| s == a).unwrap_or(0);
                d.output_spatial[i]
            }
        })
        .collect();
    // broadcast_in_dim wants the operand's dimensions in output order:
    // transpose the slice first when the layouts order them differently.
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_by_key(|&i| to_out[i]);
    let sorted_out: Vec<usize> = order.iter().map(|&i| to_out[i]).collect();
    let needs_transpose = order.iter().enumerate().any(|(i, &o)| i != o);

    let kernel_sizes: Vec<usize> = d.kernel_spatial.iter().map(|&s| kernel.dims()[s]).collect();
    let c_out = kernel.dims()[d.kernel_output_feature];
    let mut acc: Option<Value> = None;
    for t in 0..taps {
        // The tap's multi-index, last spatial dimension fastest.
        let mut tap = vec![0usize; n];
        let mut rest = t;
        for i in (0..n).rev() {
            tap[i] = rest % kernel_sizes[i];
            rest /= kernel_sizes[i];
        }
        for c in 0..c_in {
            let mut start = vec![0usize; rank];
            let mut limit = xp.dims().to_vec();
            let mut strides = vec![1usize; rank];
            for i in 0..n {
                let a = d.input_spatial[i];
                start[a] = tap[i] * attrs.rhs_dilation[i];
                limit[a] = start[a] + (out[d.output_spatial[i]] - 1) * attrs.strides[i] + 1;
                strides[a] = attrs.strides[i];
            }
            start[d.input_feature] = c;
            limit[d.input_feature] = c + 1;
            let s = xp.slice(&start, &limit, &strides)?;
            let s_dims: Vec<usize> = kept.iter().map(|&a| s.dims()[a]).collect();
            let mut s = s.reshape(&s_dims)?;
            if needs_transpose {
                s = s.transpose(&order[..])?;
            }
            let xs = s.broadcast_in_dim(out, &sorted_out)?;

            let mut kstart = vec![0usize; rank];
            let mut klimit = kernel.dims().to_vec();
            for i in 0..n {
                kstart[d.kernel_spatial[i]] = tap[i];
                klimit[d.kernel_spatial[i]] = tap[i] + 1;
            }
            kstart[d.kernel_input_feature] = c;
            klimit[d.kernel_input_feature] = c + 1;
            let ks = kernel
                .slice(&kstart, &klimit, &vec![1; rank])?
                .reshape(&[c_out])?
                .broadcast_in_dim(out, &[d.output_feature])?;
            let term = xs.mul(&ks)?;
            acc = Some(match acc {
                None => term,
                Some(a) => a.add(&term)?,
            });
        }
    }
    Ok(acc)
}
