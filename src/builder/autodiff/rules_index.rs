//! Differentiation rules of the indexing ops: gather, scatter (set and add
//! modes), sort and top-k. Their cotangents are scatter-adds of the output's
//! cotangent (or gathers of it) at the indices the forward op used.

use std::collections::HashMap;

use crate::dtype::{ArraySpec, DType};
use crate::error::Result;

use super::super::core::{op_err, Value};
use super::super::graph::{RegionId, ValueId};
use super::super::op::{BinaryOp, GatherDims, Op, ScatterDims};
use super::super::ops_index::ScatterMode;
use super::rules_control::replay_region;
use super::{monoid_of, At, Cx, Grads};

/// `Op::Gather`: the cotangent scatter-added into zeros at the (clamped)
/// start indices.
pub(super) fn gather(at: &At, dims: &GatherDims, slice_sizes: &[usize]) -> Result<Grads> {
    let (a, idx) = (at.x(0), at.x(1));
    Ok(vec![(
        at.id(0),
        gather_transpose(&at.ct0()?, &a, &idx, dims, slice_sizes)?,
    )])
}

/// `Op::Scatter` in set or add mode: the operand gets the cotangent (with
/// the overwritten elements zeroed in set mode), the updates get it
/// gathered at the scatter indices.
pub(super) fn scatter(at: &At, dims: &ScatterDims, body: RegionId) -> Result<Grads> {
    let g = at.ct0()?;
    let (a, idx, upd) = (at.x(0), at.x(1), at.x(2));
    let region = &at.cx.g.regions[body.0];
    let is_set = region.results[..]
        == [ValueId {
            node: region.args_node,
            output: 1,
        }];
    let mode = if is_set {
        ScatterMode::Set
    } else if monoid_of(at.cx.g, body) == Some(BinaryOp::Add) {
        ScatterMode::Add
    } else {
        return Err(at.no_rule("only scatter in set and add modes is differentiable"));
    };
    let mut out = Vec::new();
    if at.needs[0] {
        let t = if mode == ScatterMode::Set {
            g.scatter(&idx, &at.cx.zeros(&upd.spec)?, dims, ScatterMode::Set)?
        } else {
            g.clone()
        };
        out.push((at.id(0), t));
    }
    if at.needs[2] {
        let mut slice_sizes = Vec::new();
        let mut pos = 0;
        for d in 0..a.rank() {
            if dims.inserted_window_dims.contains(&d) {
                slice_sizes.push(1);
            } else {
                slice_sizes.push(upd.dims()[dims.update_window_dims[pos]]);
                pos += 1;
            }
        }
        let gd = GatherDims {
            offset_dims: dims.update_window_dims.clone(),
            collapsed_slice_dims: dims.inserted_window_dims.clone(),
            start_index_map: dims.scatter_dims_to_operand_dims.clone(),
            index_vector_dim: dims.index_vector_dim,
        };
        out.push((at.id(2), g.gather(&idx, &gd, &slice_sizes)?));
    }
    Ok(out)
}

/// `Op::Sort`: each sorted output's cotangent goes back through the
/// permutation the sort applied.
pub(super) fn sort(at: &At, dim: usize, comparator: RegionId, stable: bool) -> Result<Grads> {
    let values: Vec<Value> = (0..at.node.operands.len()).map(|i| at.x(i)).collect();
    let perm = sort_permutation(at.cx, &values, dim, comparator, stable)?;
    let mut out = Vec::new();
    for (i, c) in at.cts.iter().enumerate() {
        if let (Some(c), true) = (c, at.needs[i]) {
            out.push((at.id(i), scatter_along(c, &perm, dim, values[i].dims())?));
        }
    }
    Ok(out)
}

/// `Op::TopK`: the values' cotangent goes back to the positions the
/// indices output names.
pub(super) fn top_k(at: &At) -> Result<Grads> {
    let a = at.x(0);
    let idx = at.ans(1);
    Ok(vec![(
        at.id(0),
        scatter_along(&at.ct0()?, &idx, a.rank() - 1, a.dims())?,
    )])
}

/// Clamps gather start indices into range (as the gather itself does) so
/// the transposed scatter hits the same elements.
fn clamp_indices(idx: &Value, bounds: &[i64], index_vector_dim: usize) -> Result<Value> {
    let zero = idx.scalar_like(0.0)?;
    if index_vector_dim == idx.rank() {
        let hi = idx.scalar_like(bounds[0] as f64)?;
        return idx.maximum(&zero)?.minimum(&hi);
    }
    let his: Vec<Value> = bounds
        .iter()
        .map(|&v| idx.scalar_like(v as f64)?.reshape(&[1]))
        .collect::<Result<_>>()?;
    let hi = Value::concatenate(&his, 0)?.broadcast_in_dim(idx.dims(), &[index_vector_dim])?;
    idx.maximum(&zero)?.minimum(&hi)
}

/// JAX's `_gather_transpose_rule`: scatter-add of the cotangent into zeros.
fn gather_transpose(
    g: &Value,
    a: &Value,
    idx: &Value,
    dims: &GatherDims,
    slice_sizes: &[usize],
) -> Result<Value> {
    let bounds: Vec<i64> = dims
        .start_index_map
        .iter()
        .map(|&d| a.dims()[d] as i64 - slice_sizes[d] as i64)
        .collect();
    let idx = clamp_indices(idx, &bounds, dims.index_vector_dim)?;
    let sd = ScatterDims {
        update_window_dims: dims.offset_dims.clone(),
        inserted_window_dims: dims.collapsed_slice_dims.clone(),
        scatter_dims_to_operand_dims: dims.start_index_map.clone(),
        index_vector_dim: dims.index_vector_dim,
    };
    let z = a.builder().zeros(a.dtype(), a.dims())?;
    z.scatter(&idx, g, &sd, ScatterMode::Add)
}

/// Full index tuples `[..., r]` addressing `dims` with `along` replacing the
/// position along `axis`.
fn index_tuples(along: &Value, axis: usize) -> Result<Value> {
    let b = along.builder();
    let dims = along.dims().to_vec();
    let mut shape1 = dims.clone();
    shape1.push(1);
    let parts: Vec<Value> = (0..dims.len())
        .map(|d| {
            let v = if d == axis {
                along.convert(DType::I32)?
            } else {
                b.iota(DType::I32, &dims, d)?
            };
            v.reshape(&shape1)
        })
        .collect::<Result<_>>()?;
    Value::concatenate(&parts, dims.len())
}

/// `out[..., along[i], ...] += g[..., i, ...]` into zeros of `dims`.
fn scatter_along(g: &Value, along: &Value, axis: usize, dims: &[usize]) -> Result<Value> {
    let r = dims.len();
    let idx = index_tuples(along, axis)?;
    let sd = ScatterDims {
        update_window_dims: vec![],
        inserted_window_dims: (0..r).collect(),
        scatter_dims_to_operand_dims: (0..r).collect(),
        index_vector_dim: r,
    };
    g.builder()
        .zeros(g.dtype(), dims)?
        .scatter(&idx, g, &sd, ScatterMode::Add)
}

/// Re-sorts `values` with an iota appended (the comparator ignores it);
/// returns the permutation: output position i came from `perm[i]`.
fn sort_permutation(
    cx: &Cx,
    values: &[Value],
    dim: usize,
    comparator: RegionId,
    stable: bool,
) -> Result<Value> {
    let b = cx.b;
    let dims = values[0].dims().to_vec();
    let iota = b.iota(DType::I32, &dims, dim)?;
    let mut arg_specs: Vec<ArraySpec> = cx.g.nodes[cx.g.regions[comparator.0].args_node]
        .outputs
        .clone();
    arg_specs.push(ArraySpec::new(DType::I32, []));
    arg_specs.push(ArraySpec::new(DType::I32, []));
    let n_old = arg_specs.len() - 2;
    let (rid, _) = b.region("sort", &arg_specs, |a| {
        let mut env = HashMap::new();
        replay_region(b, cx.g, comparator, &a[..n_old], &mut env)
    })?;
    let mut operands: Vec<&Value> = values.iter().collect();
    operands.push(&iota);
    let mut specs: Vec<ArraySpec> = values.iter().map(|v| v.spec.clone()).collect();
    specs.push(iota.spec.clone());
    let mut outs = b.push(
        Op::Sort {
            dim,
            stable,
            comparator: rid,
        },
        &operands,
        specs,
    )?;
    outs.pop()
        .ok_or_else(|| op_err("sort", "internal: no permutation output"))
}
