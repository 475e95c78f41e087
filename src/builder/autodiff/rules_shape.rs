//! Differentiation rules of the shape ops: broadcast, reshape, transpose,
//! slices, concatenation, padding and reversal. Each cotangent is the
//! transpose of the (linear) op applied to the output's cotangent.

use std::collections::HashSet;

use crate::error::Result;

use super::super::core::Value;
use super::{At, Grads};

/// `Op::BroadcastInDim`: the broadcast dimensions summed away.
pub(super) fn broadcast_in_dim(at: &At, dims: &[usize]) -> Result<Grads> {
    Ok(vec![(at.id(0), unbroadcast(&at.ct0()?, &at.x(0), dims)?)])
}

/// `Op::Reshape`: the cotangent reshaped back.
pub(super) fn reshape(at: &At) -> Result<Grads> {
    Ok(vec![(at.id(0), at.ct0()?.reshape(at.x(0).dims())?)])
}

/// `Op::Transpose`: the cotangent under the inverse permutation.
pub(super) fn transpose(at: &At, perm: &[usize]) -> Result<Grads> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    Ok(vec![(at.id(0), at.ct0()?.transpose(&inv)?)])
}

/// `Op::Slice`: the cotangent padded back into the operand's shape, with
/// interior padding for the strides.
pub(super) fn slice(at: &At, start: &[usize], strides: &[usize]) -> Result<Grads> {
    let g = at.ct0()?;
    let a = at.x(0);
    let mut low = Vec::new();
    let mut high = Vec::new();
    let mut interior = Vec::new();
    for d in 0..a.rank() {
        let real_limit = if g.dims()[d] == 0 {
            start[d]
        } else {
            start[d] + (g.dims()[d] - 1) * strides[d] + 1
        };
        low.push(start[d] as i64);
        high.push(a.dims()[d] as i64 - real_limit as i64);
        interior.push(strides[d] - 1);
    }
    Ok(vec![(
        at.id(0),
        g.pad(&g.scalar_like(0.0)?, &low, &high, &interior)?,
    )])
}

/// `Op::DynamicSlice`: the cotangent written into zeros at the same starts.
pub(super) fn dynamic_slice(at: &At) -> Result<Grads> {
    let starts: Vec<Value> = (1..at.node.operands.len()).map(|i| at.x(i)).collect();
    let z = at.cx.zeros(&at.x(0).spec)?;
    Ok(vec![(
        at.id(0),
        z.dynamic_update_slice(&at.ct0()?, &starts)?,
    )])
}

/// `Op::DynamicUpdateSlice`: the operand gets the cotangent with the
/// update's window zeroed, the update gets that window.
pub(super) fn dynamic_update_slice(at: &At) -> Result<Grads> {
    let g = at.ct0()?;
    let upd = at.x(1);
    let starts: Vec<Value> = (2..at.node.operands.len()).map(|i| at.x(i)).collect();
    let mut out = Vec::new();
    if at.needs[0] {
        let z = at.cx.zeros(&upd.spec)?;
        out.push((at.id(0), g.dynamic_update_slice(&z, &starts)?));
    }
    if at.needs[1] {
        out.push((at.id(1), g.dynamic_slice(&starts, upd.dims())?));
    }
    Ok(out)
}

/// `Op::Concatenate`: each operand gets its slice of the cotangent.
pub(super) fn concatenate(at: &At, dim: usize) -> Result<Grads> {
    let g = at.ct0()?;
    let mut out = Vec::new();
    let mut pos = 0;
    for (i, &v) in at.node.operands.iter().enumerate() {
        let size = at.cx.g.spec(v).dims[dim];
        if at.needs[i] {
            out.push((v, g.slice_axis(dim, pos, pos + size)?));
        }
        pos += size;
    }
    Ok(out)
}

/// `Op::Pad`: the operand gets the unpadded cotangent, the padding value
/// the sum of the rest.
pub(super) fn pad(at: &At, low: &[i64], high: &[i64], interior: &[usize]) -> Result<Grads> {
    let g = at.ct0()?;
    let t = pad_transpose(&g, low, high, interior)?;
    let mut out = Vec::new();
    if at.needs[1] {
        let all: Vec<usize> = (0..g.rank()).collect();
        let tp = g.sum(&all, false)?.sub(&t.sum(&all, false)?)?;
        out.push((at.id(1), tp));
    }
    if at.needs[0] {
        out.push((at.id(0), t));
    }
    Ok(out)
}

/// `Op::Reverse`: the cotangent reversed back.
pub(super) fn reverse(at: &At, dims: &[usize]) -> Result<Grads> {
    Ok(vec![(at.id(0), at.ct0()?.reverse(dims)?)])
}

/// Transpose of `broadcast_in_dim(x, out, dims)`: sums the broadcast
/// dimensions of `g` and reshapes to `x`'s shape.
fn unbroadcast(g: &Value, x: &Value, dims: &[usize]) -> Result<Value> {
    let kept: Vec<usize> = (0..x.rank())
        .filter(|&i| x.dims()[i] == g.dims()[dims[i]])
        .collect();
    let keep_out: HashSet<usize> = kept.iter().map(|&i| dims[i]).collect();
    let summed: Vec<usize> = (0..g.rank()).filter(|d| !keep_out.contains(d)).collect();
    let mut r = if summed.is_empty() {
        g.clone()
    } else {
        g.sum(&summed, false)?
    };
    // The remaining dimensions are in output order; put them in operand order.
    let mut order: Vec<usize> = kept.iter().map(|&i| dims[i]).collect();
    order.sort_unstable();
    let perm: Vec<usize> = kept
        .iter()
        .map(|&i| order.iter().position(|&o| o == dims[i]).unwrap_or(0))
        .collect();
    if perm.iter().enumerate().any(|(i, &p)| i != p) {
        r = r.transpose(&perm)?;
    }
    r.reshape(x.dims())
}

/// Transpose of `pad(x, low, high, interior)` with respect to `x` (JAX's `_pad_transpose`).
pub(super) fn pad_transpose(
    g: &Value,
    low: &[i64],
    high: &[i64],
    interior: &[usize],
) -> Result<Value> {
    let neg = |v: &[i64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let r = g.rank();
    let unpadded = g.pad(&g.scalar_like(0.0)?, &neg(low), &neg(high), &vec![0; r])?;
    let strides: Vec<usize> = interior.iter().map(|i| i + 1).collect();
    unpadded.slice(&vec![0; r], unpadded.dims(), &strides)
}

/// The extent of `d` elements dilated by `k` (0 for no elements).
pub(super) fn dilate(d: usize, k: usize) -> i64 {
    if d == 0 {
        0
    } else {
        1 + (k * (d - 1)) as i64
    }
}
