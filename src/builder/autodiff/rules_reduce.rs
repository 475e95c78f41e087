//! Differentiation rules of the reductions: `reduce` and `reduce_window`
//! whose body is a sum, max, min or (for `reduce`) product.

use crate::dtype::ArraySpec;
use crate::error::Result;

use super::super::core::{op_err, Value};
use super::super::graph::RegionId;
use super::super::op::{BinaryOp, WindowAttrs};
use super::super::ops_reduce::identity_value;
use super::rules_shape::{dilate, pad_transpose};
use super::{monoid_of, At, Grads};

/// `Op::Reduce` (one operand, one init): a sum broadcasts the cotangent
/// back, max/min send it to the elements equal to the result (split
/// between ties), a product to the product of the other elements.
pub(super) fn reduce(at: &At, dims: &[usize], body: RegionId) -> Result<Grads> {
    let monoid = (at.node.operands.len() == 2)
        .then(|| monoid_of(at.cx.g, body))
        .flatten();
    let g = at.ct0()?;
    let a = at.x(0);
    let ans = at.ans(0);
    let kept: Vec<usize> = (0..a.rank()).filter(|d| !dims.contains(d)).collect();
    let back = |v: &Value| v.broadcast_in_dim(a.dims(), &kept);
    let mut out = Vec::new();
    match monoid {
        Some(BinaryOp::Add) => {
            if at.needs[0] {
                out.push((at.id(0), back(&g)?));
            }
            if at.needs[1] {
                let all: Vec<usize> = (0..g.rank()).collect();
                out.push((at.id(1), g.sum(&all, false)?));
            }
        }
        Some(BinaryOp::Max | BinaryOp::Min) => {
            let loc = a.eq(&back(&ans)?)?.convert(a.dtype())?;
            let counts = loc.sum(dims, false)?;
            out.push((at.id(0), loc.mul(&back(&g.div(&counts)?)?)?));
        }
        Some(BinaryOp::Mul) => {
            out.push((at.id(0), prod_transpose(&a, dims, &g)?));
        }
        _ => return Err(at.no_rule("only sum, max, min and prod reductions are differentiable")),
    }
    Ok(out)
}

/// `Op::ReduceWindow` (one operand, one init): sum pooling's cotangent is a
/// windowed sum of the padded cotangent, max/min pooling's goes to the
/// chosen element of each window.
pub(super) fn reduce_window(at: &At, window: &WindowAttrs, body: RegionId) -> Result<Grads> {
    let monoid = (at.node.operands.len() == 2)
        .then(|| monoid_of(at.cx.g, body))
        .flatten();
    let g = at.ct0()?;
    let a = at.x(0);
    let t = match monoid {
        Some(BinaryOp::Add) => window_sum_transpose(&g, &a, window)?,
        Some(op @ (BinaryOp::Max | BinaryOp::Min)) => {
            window_chooser_transpose(&g, &a, &at.ans(0), window, op)?
        }
        _ => return Err(at.no_rule("only sum, max and min windowed reductions are differentiable")),
    };
    Ok(vec![(at.id(0), t)])
}

/// Gradient of a product over `dims`: the product of all other elements,
/// via exclusive cumulative products (exact with zeros, as JAX).
fn prod_transpose(x: &Value, dims: &[usize], g: &Value) -> Result<Value> {
    let kept: Vec<usize> = (0..x.rank()).filter(|d| !dims.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
    let kept_dims: Vec<usize> = kept.iter().map(|&d| x.dims()[d]).collect();
    let n: usize = dims.iter().map(|&d| x.dims()[d]).product();
    let mut flat_dims = kept_dims.clone();
    flat_dims.push(n);
    let t = x.transpose(&perm)?.reshape(&flat_dims)?;
    let last = flat_dims.len() - 1;
    let excl = |reverse: bool| -> Result<Value> {
        let src = if reverse {
            t.reverse(&[last])?
        } else {
            t.clone()
        };
        // exclusive: shift right by one, filling with 1, then cumulative product
        let mut low = vec![0i64; flat_dims.len()];
        let mut high = vec![0i64; flat_dims.len()];
        low[last] = 1;
        high[last] = -1;
        let shifted = src.pad(
            &src.scalar_like(1.0)?,
            &low,
            &high,
            &vec![0; flat_dims.len()],
        )?;
        let mut w = WindowAttrs {
            dims: vec![1; flat_dims.len()],
            strides: vec![1; flat_dims.len()],
            base_dilation: vec![1; flat_dims.len()],
            window_dilation: vec![1; flat_dims.len()],
            padding: vec![(0, 0); flat_dims.len()],
        };
        w.dims[last] = n.max(1);
        w.padding[last] = (n.saturating_sub(1) as i64, 0);
        let b = x.builder();
        let one = b.constant_bytes(
            identity_value(BinaryOp::Mul, x.dtype()),
            ArraySpec::new(x.dtype(), []),
        )?;
        let c = b
            .reduce_window(&[shifted], &[one], &w, |a| Ok(vec![a[0].mul(&a[1])?]))?
            .remove(0);
        if reverse {
            c.reverse(&[last])
        } else {
            Ok(c)
        }
    };
    let others = excl(false)?.mul(&excl(true)?)?;
    let gb = g
        .reshape(&kept_dims)?
        .broadcast_in_dim(&flat_dims, &(0..last).collect::<Vec<_>>())?;
    let r = others.mul(&gb)?;
    let mut tdims = kept_dims;
    tdims.extend(dims.iter().map(|&d| x.dims()[d]));
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    r.reshape(&tdims)?.transpose(&inv)
}

/// JAX's `_reduce_window_sum_transpose_rule`.
fn window_sum_transpose(g: &Value, x: &Value, w: &WindowAttrs) -> Result<Value> {
    let r = x.rank();
    let mut low = Vec::new();
    let mut high = Vec::new();
    let mut interior = Vec::new();
    for i in 0..r {
        let l = dilate(x.dims()[i], w.base_dilation[i]);
        let k = dilate(w.dims[i], w.window_dilation[i]);
        let o = dilate(g.dims()[i], w.strides[i]);
        let before = k - w.padding[i].0 - 1;
        low.push(before);
        high.push(l + k - 1 - o - before);
        interior.push(w.strides[i] - 1);
    }
    let padded = g.pad(&g.scalar_like(0.0)?, &low, &high, &interior)?;
    let attrs = WindowAttrs {
        dims: w.dims.clone(),
        strides: w.base_dilation.clone(),
        base_dilation: vec![1; r],
        window_dilation: w.window_dilation.clone(),
        padding: vec![(0, 0); r],
    };
    let zero = g.scalar_like(0.0)?;
    Ok(x.builder()
        .reduce_window(&[padded], &[zero], &attrs, |a| Ok(vec![a[0].add(&a[1])?]))?
        .remove(0))
}

/// Gradient of max/min pooling: each window's cotangent goes to the first
/// element (in window order) equal to the window's result, as XLA's
/// `select_and_scatter` with `ge` does. Built from K strided slices of the
/// padded input (K = window size) and their transposes (interior pads).
fn window_chooser_transpose(
    g: &Value,
    x: &Value,
    ans: &Value,
    w: &WindowAttrs,
    op: BinaryOp,
) -> Result<Value> {
    let r = x.rank();
    if ans.element_count() == 0 {
        return x.builder().zeros(x.dtype(), x.dims());
    }
    let fill = x
        .builder()
        .constant_bytes(identity_value(op, x.dtype()), ArraySpec::new(x.dtype(), []))?;
    let lo: Vec<i64> = w.padding.iter().map(|p| p.0).collect();
    let hi: Vec<i64> = w.padding.iter().map(|p| p.1).collect();
    let dil: Vec<usize> = w.base_dilation.iter().map(|d| d - 1).collect();
    let xp = x.pad(&fill, &lo, &hi, &dil)?;
    let zero = g.scalar_like(0.0)?;
    let mut taken: Option<Value> = None;
    let mut acc: Option<Value> = None;
    let count: usize = w.dims.iter().product();
    for flat in 0..count {
        let mut k = vec![0; r];
        let mut rem = flat;
        for d in (0..r).rev() {
            k[d] = rem % w.dims[d];
            rem /= w.dims[d];
        }
        let start: Vec<usize> = (0..r).map(|d| k[d] * w.window_dilation[d]).collect();
        let limit: Vec<usize> = (0..r)
            .map(|d| start[d] + (ans.dims()[d] - 1) * w.strides[d] + 1)
            .collect();
        let xk = xp.slice(&start, &limit, &w.strides)?;
        let hit = xk.eq(ans)?;
        let sel = match &taken {
            None => hit,
            Some(t) => hit.and(&t.not()?)?,
        };
        taken = Some(match &taken {
            None => sel.clone(),
            Some(t) => t.or(&sel)?,
        });
        let contrib = sel.select(g, &zero)?;
        let low: Vec<i64> = start.iter().map(|&s| s as i64).collect();
        let high: Vec<i64> = (0..r)
            .map(|d| xp.dims()[d] as i64 - limit[d] as i64)
            .collect();
        let interior: Vec<usize> = w.strides.iter().map(|s| s - 1).collect();
        let back = contrib.pad(&zero, &low, &high, &interior)?;
        acc = Some(match acc {
            None => back,
            Some(a) => a.add(&back)?,
        });
    }
    let acc = acc.ok_or_else(|| op_err("reduce_window", "empty window"))?;
    pad_transpose(&acc, &lo, &hi, &dil)
}
