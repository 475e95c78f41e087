//! Differentiation of the collectives and of manual regions, as JAX
//! transposes them: `psum` ↔ `psum`, `all_gather` ↔ `psum_scatter`,
//! `ppermute` ↔ the inverse permutation, `all_to_all` ↔ `all_to_all` with
//! the split and concat dimensions swapped; `pmax`/`pmin` have no rule
//! (nor in JAX).
//!
//! A manual region (`shard_map`) is transposed into another one over the
//! same mesh: it takes the forward inputs and the output cotangents,
//! recomputes the body (its intermediates cannot leave the region), runs
//! the reverse pass over that copy, and returns the input cotangents.
//! Seen from all devices together this is the exact transpose: an output
//! that its spec leaves replicated along some axes is read as the mean of
//! its copies, so each copy's cotangent is divided by their number; an
//! input replicated along some axes is one value used by every device, so
//! its cotangent is the sum of theirs (`psum`).

use std::collections::HashMap;

use crate::error::Result;

use super::super::collectives::{
    all_gather as gather, all_reduce as reduce, all_to_all as exchange, collective_permute,
    reduce_scatter as scatter, CollectiveAxes,
};
use super::super::graph::{RegionId, ValueId};
use super::super::op::BinaryOp;
use super::super::shard_map::{manual_computation, ManualAttrs};
use super::rules_control::replay_region;
use super::{backprop_in, monoid_of, At, Grads};

/// `psum`'s transpose: `psum` of the cotangent over the same axes.
pub(super) fn all_reduce(at: &At, over: &CollectiveAxes, body: RegionId) -> Result<Grads> {
    if monoid_of(at.cx.g, body) != Some(BinaryOp::Add) {
        return Err(at.no_rule("pmax and pmin are not differentiable"));
    }
    Ok(vec![(
        at.id(0),
        reduce(&at.ct0()?, over.clone(), BinaryOp::Add)?,
    )])
}

/// `all_gather`'s transpose: `psum_scatter` along the same dimension.
pub(super) fn all_gather(at: &At, over: &CollectiveAxes, dim: usize) -> Result<Grads> {
    Ok(vec![(at.id(0), scatter(&at.ct0()?, over.clone(), dim)?)])
}

/// `psum_scatter`'s transpose: `all_gather` along the same dimension.
pub(super) fn reduce_scatter(at: &At, over: &CollectiveAxes, dim: usize) -> Result<Grads> {
    Ok(vec![(at.id(0), gather(&at.ct0()?, over.clone(), dim)?)])
}

/// `all_to_all`'s transpose: split and concat dimensions swapped.
pub(super) fn all_to_all(
    at: &At,
    over: &CollectiveAxes,
    split_dim: usize,
    concat_dim: usize,
) -> Result<Grads> {
    Ok(vec![(
        at.id(0),
        exchange(&at.ct0()?, over.clone(), concat_dim, split_dim)?,
    )])
}

/// `ppermute`'s transpose: every pair reversed.
pub(super) fn ppermute(at: &At, over: &CollectiveAxes, perm: &[(usize, usize)]) -> Result<Grads> {
    let inverse = perm.iter().map(|&(s, t)| (t, s)).collect();
    Ok(vec![(
        at.id(0),
        collective_permute(&at.ct0()?, over.clone(), inverse)?,
    )])
}

/// The cotangents of a manual region's inputs (see the module documentation).
pub(super) fn manual(at: &At, attrs: &ManualAttrs, body: RegionId) -> Result<Grads> {
    let (b, g, node) = (at.cx.b, at.cx.g, at.node);
    let inputs: Vec<_> = (0..node.operands.len()).map(|i| at.x(i)).collect();
    let seeded: Vec<usize> = (0..at.cts.len()).filter(|&j| at.cts[j].is_some()).collect();
    let wanted: Vec<usize> = (0..inputs.len())
        .filter(|&i| at.needs[i] && inputs[i].dtype().is_float())
        .collect();
    if wanted.is_empty() || seeded.is_empty() {
        return Ok(Vec::new());
    }
    let n_in = inputs.len();
    let mut operands = inputs;
    let mut in_specs = attrs.in_specs.clone();
    for &j in &seeded {
        operands.extend(at.cts[j].clone());
        in_specs.push(attrs.out_specs[j].clone());
    }
    let back = ManualAttrs {
        mesh: attrs.mesh.clone(),
        in_specs,
        out_specs: wanted.iter().map(|&i| attrs.in_specs[i].clone()).collect(),
    };
    let copies = |spec| CollectiveAxes {
        mesh: attrs.mesh.clone(),
        axes: attrs.replicated(spec),
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
                    reduce(&g, over, BinaryOp::Add)
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
