//! Differentiation rules of the collectives and of manual regions, as JAX
//! transposes them: `psum` ↔ `psum`, `all_gather` ↔ `psum_scatter`,
//! `ppermute` ↔ the inverse permutation, `all_to_all` ↔ `all_to_all` with
//! the split and concat dimensions swapped.
//!
//! A manual region (`shard_map`) is transposed into another one over the
//! same mesh: it takes the forward inputs and the output cotangents,
//! recomputes the body (its intermediates cannot leave the region), runs
//! the reverse pass over that copy, and returns the input cotangents.
//! Seen from all devices together this is the exact transpose: an output
//! that the spec leaves replicated along some axes is read as the mean of
//! its copies, so each copy's cotangent is divided by their number; an
//! input replicated along some axes is one value used by every device, so
//! its cotangent is the sum of theirs.

use std::collections::HashMap;

use crate::error::Result;

use super::autodiff::{backprop_in, replay_region, value_of};
use super::collectives::{
    all_gather, all_reduce, all_to_all, collective_permute, reduce_scatter, CollectiveAxes,
};
use super::core::{Builder, Value};
use super::graph::{Graph, NodeId, RegionId, ValueId};
use super::op::BinaryOp;
use super::shard_map::{manual_computation, ManualAttrs};

/// `psum`'s transpose: `psum` of the cotangent over the same axes.
pub(super) fn all_reduce_t(ct: &Value, over: &CollectiveAxes) -> Result<Value> {
    all_reduce(ct, over.clone(), BinaryOp::Add)
}

/// `all_gather`'s transpose: `psum_scatter` along the same dimension.
pub(super) fn all_gather_t(ct: &Value, over: &CollectiveAxes, dim: usize) -> Result<Value> {
    reduce_scatter(ct, over.clone(), dim)
}

/// `psum_scatter`'s transpose: `all_gather` along the same dimension.
pub(super) fn reduce_scatter_t(ct: &Value, over: &CollectiveAxes, dim: usize) -> Result<Value> {
    all_gather(ct, over.clone(), dim)
}

/// `all_to_all`'s transpose: split and concat dimensions swapped.
pub(super) fn all_to_all_t(
    ct: &Value,
    over: &CollectiveAxes,
    split_dim: usize,
    concat_dim: usize,
) -> Result<Value> {
    all_to_all(ct, over.clone(), concat_dim, split_dim)
}

/// `ppermute`'s transpose: every pair reversed.
pub(super) fn permute_t(
    ct: &Value,
    over: &CollectiveAxes,
    perm: &[(usize, usize)],
) -> Result<Value> {
    collective_permute(
        ct,
        over.clone(),
        perm.iter().map(|&(s, t)| (t, s)).collect(),
    )
}

/// The cotangents of the inputs of the manual region `n` (see the module
/// documentation).
pub(super) fn manual_rule(
    b: &Builder,
    g: &Graph,
    n: NodeId,
    attrs: &ManualAttrs,
    body: RegionId,
    cts: &[Option<Value>],
    needs: &[bool],
) -> Result<Vec<(ValueId, Value)>> {
    let node = &g.nodes[n];
    let inputs: Vec<Value> = node.operands.iter().map(|&v| value_of(b, g, v)).collect();
    let seeded: Vec<usize> = (0..cts.len()).filter(|&j| cts[j].is_some()).collect();
    let wanted: Vec<usize> = (0..inputs.len())
        .filter(|&i| needs[i] && inputs[i].dtype().is_float())
        .collect();
    if wanted.is_empty() || seeded.is_empty() {
        return Ok(Vec::new());
    }
    let n_in = inputs.len();
    let mut operands = inputs;
    let mut in_specs = attrs.in_specs.clone();
    for &j in &seeded {
        operands.extend(cts[j].clone());
        in_specs.push(attrs.out_specs[j].clone());
    }
    let back = ManualAttrs {
        mesh: attrs.mesh.clone(),
        in_specs,
        out_specs: wanted.iter().map(|&i| attrs.in_specs[i].clone()).collect(),
    };
    let copies = |spec| -> CollectiveAxes {
        CollectiveAxes {
            mesh: attrs.mesh.clone(),
            axes: attrs.replicated(spec),
        }
    };
    let grads = manual_computation(b, back, &operands, |a| {
        let scope = b.state.borrow().scope;
        let mut env = HashMap::new();
        let results = replay_region(b, g, body, &a[..n_in], &mut env)?;
        let mut outs = Vec::with_capacity(seeded.len());
        let mut seeds = Vec::with_capacity(seeded.len());
        for (k, &j) in seeded.iter().enumerate() {
            let c = &a[n_in + k];
            let n = copies(&attrs.out_specs[j]).size();
            seeds.push(if n == 1 {
                c.clone()
            } else {
                c.div(&c.scalar_like(n as f64)?)?
            });
            outs.push(results[j].clone());
        }
        let wrt: Vec<ValueId> = wanted.iter().map(|&i| a[i].id).collect();
        let grads = backprop_in(b, scope, &outs, &seeds, &wrt)?;
        wanted
            .iter()
            .zip(grads)
            .map(|(&i, g)| {
                let g = match g {
                    Some(g) => g,
                    None => b.zeros(a[i].dtype(), a[i].dims())?,
                };
                let over = copies(&attrs.in_specs[i]);
                if over.axes.is_empty() {
                    Ok(g)
                } else {
                    all_reduce(&g, over, BinaryOp::Add)
                }
            })
            .collect()
    })?;
    Ok(wanted
        .into_iter()
        .map(|i| node.operands[i])
        .zip(grads)
        .collect())
}
