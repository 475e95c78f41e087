//! Differentiation rules of the contractions: `dot_general` and
//! convolution, as JAX's transpose rules (each cotangent is itself a
//! `dot_general` or a convolution of the output's cotangent).

use crate::error::Result;

use super::super::core::Value;
use super::super::op::{ConvAttrs, ConvDims, DotDims};
use super::rules_shape::dilate;
use super::{At, Grads};

/// `Op::DotGeneral`: each side's cotangent is a contraction of the output's
/// cotangent with the other side.
pub(super) fn dot_general(at: &At, d: &DotDims) -> Result<Grads> {
    let g = at.ct0()?;
    let (a, bb) = (at.x(0), at.x(1));
    let mut out = Vec::new();
    if at.needs[0] {
        out.push((at.id(0), dot_transpose_lhs(&g, &a, &bb, d, false)?));
    }
    if at.needs[1] {
        let swapped = DotDims {
            lhs_batch: d.rhs_batch.clone(),
            rhs_batch: d.lhs_batch.clone(),
            lhs_contract: d.rhs_contract.clone(),
            rhs_contract: d.lhs_contract.clone(),
        };
        out.push((at.id(1), dot_transpose_lhs(&g, &bb, &a, &swapped, true)?));
    }
    Ok(out)
}

/// `Op::Convolution`: the input's cotangent is a transposed convolution,
/// the kernel's a convolution of the input with the cotangent.
pub(super) fn convolution(at: &At, attrs: &ConvAttrs) -> Result<Grads> {
    let g = at.ct0()?;
    let (a, k) = (at.x(0), at.x(1));
    let mut out = Vec::new();
    if at.needs[0] {
        out.push((at.id(0), conv_transpose_lhs(&g, &a, &k, attrs)?));
    }
    if at.needs[1] {
        out.push((at.id(1), conv_transpose_rhs(&g, &a, &k, attrs)?));
    }
    Ok(out)
}

/// `0, 1, ...` ranges of consecutive lengths (JAX's `ranges_like`).
fn ranges_like(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut start = 0;
    lens.iter()
        .map(|&l| {
            let r = (start..start + l).collect();
            start += l;
            r
        })
        .collect()
}

/// JAX's `_dot_general_transpose_lhs`.
fn dot_transpose_lhs(
    g: &Value,
    x: &Value,
    y: &Value,
    d: &DotDims,
    swap_ans: bool,
) -> Result<Value> {
    let remaining = |rank: usize, a: &[usize], b: &[usize]| -> Vec<usize> {
        (0..rank)
            .filter(|i| !a.contains(i) && !b.contains(i))
            .collect()
    };
    let x_kept = remaining(x.rank(), &d.lhs_contract, &d.lhs_batch);
    let y_kept = remaining(y.rank(), &d.rhs_contract, &d.rhs_batch);
    let (ans_batch, ans_y) = if swap_ans {
        let r = ranges_like(&[d.lhs_batch.len(), y_kept.len(), x_kept.len()]);
        (r[0].clone(), r[1].clone())
    } else {
        let r = ranges_like(&[d.lhs_batch.len(), x_kept.len(), y_kept.len()]);
        (r[0].clone(), r[2].clone())
    };
    let dims = DotDims {
        lhs_batch: ans_batch,
        rhs_batch: d.rhs_batch.clone(),
        lhs_contract: ans_y,
        rhs_contract: y_kept,
    };
    let mut order: Vec<usize> = (0..d.rhs_contract.len()).collect();
    order.sort_by_key(|&i| d.rhs_contract[i]);
    let x_contract_sorted_by_y: Vec<usize> = order.iter().map(|&i| d.lhs_contract[i]).collect();
    let pre: Vec<usize> = d
        .lhs_batch
        .iter()
        .chain(&x_kept)
        .chain(&x_contract_sorted_by_y)
        .copied()
        .collect();
    let mut out_axes: Vec<usize> = (0..pre.len()).collect();
    out_axes.sort_by_key(|&i| pre[i]);
    let r = g.dot_general(y, &dims)?;
    if out_axes.iter().enumerate().all(|(i, &p)| i == p) {
        Ok(r)
    } else {
        r.transpose(&out_axes)
    }
}

/// `(lhs_spec, rhs_spec, out_spec)` as JAX orders them: batch/out-feature
/// first, feature/in-feature second, then the spatial dimensions.
fn specs(d: &ConvDims) -> [Vec<usize>; 3] {
    let cat = |a: usize, b: usize, s: &[usize]| {
        let mut v = vec![a, b];
        v.extend_from_slice(s);
        v
    };
    [
        cat(d.input_batch, d.input_feature, &d.input_spatial),
        cat(
            d.kernel_output_feature,
            d.kernel_input_feature,
            &d.kernel_spatial,
        ),
        cat(d.output_batch, d.output_feature, &d.output_spatial),
    ]
}

fn from_specs(lhs: &[usize], rhs: &[usize], out: &[usize]) -> ConvDims {
    ConvDims {
        input_batch: lhs[0],
        input_feature: lhs[1],
        input_spatial: lhs[2..].to_vec(),
        kernel_output_feature: rhs[0],
        kernel_input_feature: rhs[1],
        kernel_spatial: rhs[2..].to_vec(),
        output_batch: out[0],
        output_feature: out[1],
        output_spatial: out[2..].to_vec(),
    }
}

fn swap01(s: &[usize]) -> Vec<usize> {
    let mut v = s.to_vec();
    v.swap(0, 1);
    v
}

fn take(shape: &[usize], idx: &[usize]) -> Vec<usize> {
    idx.iter().map(|&i| shape[i]).collect()
}

fn reshape_axis_out_of(src: usize, size1: usize, x: &Value) -> Result<Value> {
    let mut shape = x.dims().to_vec();
    let size2 = shape[src] / size1;
    shape.splice(src..=src, [size1, size2]);
    x.reshape(&shape)
}

fn reshape_axis_into(src: usize, dst: usize, x: &Value) -> Result<Value> {
    let mut perm: Vec<usize> = (0..x.rank()).filter(|&i| i != src).collect();
    perm.insert(dst, src);
    let mut shape: Vec<usize> = x.dims().to_vec();
    shape.remove(src);
    shape[dst] *= x.dims()[src];
    x.transpose(&perm)?.reshape(&shape)
}

/// Per spatial dimension, the dilated extents `(l, r, o)` of the input,
/// the kernel and the output cotangent `g`: the terms of JAX's transpose
/// padding formulas.
fn dilated_extents(g: &Value, lhs: &Value, rhs: &Value, a: &ConvAttrs) -> Vec<(i64, i64, i64)> {
    let [lhs_spec, rhs_spec, out_spec] = specs(&a.dims);
    let in_shape = take(lhs.dims(), &lhs_spec[2..]);
    let win = take(rhs.dims(), &rhs_spec[2..]);
    let out_shape = take(g.dims(), &out_spec[2..]);
    (0..in_shape.len())
        .map(|i| {
            (
                dilate(in_shape[i], a.lhs_dilation[i]),
                dilate(win[i], a.rhs_dilation[i]),
                dilate(out_shape[i], a.strides[i]),
            )
        })
        .collect()
}

/// JAX's `_conv_general_dilated_transpose_lhs`.
fn conv_transpose_lhs(g: &Value, lhs: &Value, rhs: &Value, a: &ConvAttrs) -> Result<Value> {
    let [lhs_spec, rhs_spec, out_spec] = specs(&a.dims);
    let sr = &rhs_spec[2..];
    let t_rhs_spec = swap01(&rhs_spec);
    let mut fgc = a.feature_group_count;
    let bgc = a.batch_group_count;
    let mut k = rhs.clone();
    if fgc > 1 {
        k = reshape_axis_out_of(rhs_spec[0], fgc, &k)?;
        k = reshape_axis_into(rhs_spec[0], rhs_spec[1], &k)?;
    } else if bgc > 1 {
        k = reshape_axis_out_of(rhs_spec[0], bgc, &k)?;
        k = reshape_axis_into(rhs_spec[0], rhs_spec[1], &k)?;
        fgc = bgc;
    }
    let padding: Vec<(i64, i64)> = dilated_extents(g, lhs, rhs, a)
        .into_iter()
        .enumerate()
        .map(|(i, (l, r, o))| {
            let before = r - a.padding[i].0 - 1;
            (before, l + r - 1 - o - before)
        })
        .collect();
    let revd = k.reverse(sr)?;
    let attrs = ConvAttrs {
        dims: from_specs(&out_spec, &t_rhs_spec, &lhs_spec),
        strides: a.lhs_dilation.clone(),
        padding,
        lhs_dilation: a.strides.clone(),
        rhs_dilation: a.rhs_dilation.clone(),
        feature_group_count: fgc,
        batch_group_count: 1,
    };
    let mut out = g.conv_general(&revd, &attrs)?;
    if bgc > 1 {
        out = reshape_axis_out_of(lhs_spec[1], bgc, &out)?;
        out = reshape_axis_into(lhs_spec[1], lhs_spec[0], &out)?;
    }
    Ok(out)
}

/// JAX's `_conv_general_dilated_transpose_rhs`.
fn conv_transpose_rhs(g: &Value, lhs: &Value, rhs: &Value, a: &ConvAttrs) -> Result<Value> {
    let [lhs_spec, rhs_spec, out_spec] = specs(&a.dims);
    let (mut fgc, mut bgc) = (a.feature_group_count, a.batch_group_count);
    if bgc > 1 {
        fgc = bgc;
        bgc = 1;
    } else if fgc > 1 {
        bgc = fgc;
        fgc = 1;
    }
    let padding: Vec<(i64, i64)> = dilated_extents(g, lhs, rhs, a)
        .into_iter()
        .enumerate()
        .map(|(i, (l, r, o))| {
            let lo = a.padding[i].0;
            (lo, (o - l) + (r - lo - 1))
        })
        .collect();
    let attrs = ConvAttrs {
        dims: from_specs(&swap01(&lhs_spec), &swap01(&out_spec), &swap01(&rhs_spec)),
        strides: a.rhs_dilation.clone(),
        padding,
        lhs_dilation: a.lhs_dilation.clone(),
        rhs_dilation: a.strides.clone(),
        feature_group_count: fgc,
        batch_group_count: bgc,
    };
    lhs.conv_general(g, &attrs)
}
