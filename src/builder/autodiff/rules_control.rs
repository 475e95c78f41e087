//! Differentiation of control flow: while loops with a static trip count
//! (unrolled) and `case`, both by replaying their regions into the entry
//! function and differentiating the replayed copy with the main pass.

use std::collections::{HashMap, HashSet};

use crate::dtype::DType;
use crate::error::Result;

use super::super::core::{op_err, Builder, Value};
use super::super::graph::{Graph, NodeId, Region, RegionId, ValueId};
use super::super::op::{BinaryOp, CompareDir, Op};
use super::{backprop, region_captures, value_of, At, Grads};

/// Replays the nodes of region `r` into the current scope of `b` with its
/// block arguments bound to `args`; returns the region's results.
pub(super) fn replay_region(
    b: &Builder,
    g: &Graph,
    r: RegionId,
    args: &[Value],
    env: &mut HashMap<ValueId, Value>,
) -> Result<Vec<Value>> {
    let region = &g.regions[r.0];
    for (output, a) in args.iter().enumerate() {
        env.insert(
            ValueId {
                node: region.args_node,
                output,
            },
            a.clone(),
        );
    }
    for &n in &region.nodes {
        if n != region.args_node {
            replay_node(b, g, n, env)?;
        }
    }
    Ok(region
        .results
        .iter()
        .map(|&v| lookup(b, g, v, env))
        .collect())
}

fn lookup(b: &Builder, g: &Graph, v: ValueId, env: &HashMap<ValueId, Value>) -> Value {
    env.get(&v).cloned().unwrap_or_else(|| value_of(b, g, v))
}

fn replay_sub(
    b: &Builder,
    g: &Graph,
    name: &'static str,
    r: RegionId,
    env: &mut HashMap<ValueId, Value>,
) -> Result<RegionId> {
    let specs = g.nodes[g.regions[r.0].args_node].outputs.clone();
    Ok(b.region(name, &specs, |a| replay_region(b, g, r, a, env))?
        .0)
}

fn replay_node(b: &Builder, g: &Graph, n: NodeId, env: &mut HashMap<ValueId, Value>) -> Result<()> {
    let node = &g.nodes[n];
    let operands: Vec<Value> = node
        .operands
        .iter()
        .map(|&v| lookup(b, g, v, env))
        .collect();
    let name = node.op.name();
    let op = match &node.op {
        Op::Reduce { dims, body } => Op::Reduce {
            dims: dims.clone(),
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::ReduceWindow { window, body } => Op::ReduceWindow {
            window: window.clone(),
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::Scatter { dims, body } => Op::Scatter {
            dims: dims.clone(),
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::Sort {
            dim,
            stable,
            comparator,
        } => Op::Sort {
            dim: *dim,
            stable: *stable,
            comparator: replay_sub(b, g, name, *comparator, env)?,
        },
        Op::While { cond, body } => Op::While {
            cond: replay_sub(b, g, name, *cond, env)?,
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::Case { branches } => Op::Case {
            branches: branches
                .iter()
                .map(|&r| replay_sub(b, g, name, r, env))
                .collect::<Result<_>>()?,
        },
        Op::ManualComputation { attrs, body } => {
            let specs = g.nodes[g.regions[body.0].args_node].outputs.clone();
            let (body, _) = b.manual_region(attrs.mesh.clone(), &specs, |a| {
                replay_region(b, g, *body, a, env)
            })?;
            Op::ManualComputation {
                attrs: attrs.clone(),
                body,
            }
        }
        Op::AllReduce { over, body } => Op::AllReduce {
            over: over.clone(),
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::ReduceScatter { over, dim, body } => Op::ReduceScatter {
            over: over.clone(),
            dim: *dim,
            body: replay_sub(b, g, name, *body, env)?,
        },
        Op::Parameter { .. } | Op::RegionArgs => {
            return Err(op_err(name, "internal: cannot replay a parameter"))
        }
        // No regions: the op as it is.
        op @ (Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Clamp
        | Op::Convert
        | Op::BitcastConvert
        | Op::OptimizationBarrier
        | Op::ShardingConstraint { .. }
        | Op::BroadcastInDim { .. }
        | Op::Reshape
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::DynamicSlice { .. }
        | Op::DynamicUpdateSlice
        | Op::Concatenate { .. }
        | Op::Pad { .. }
        | Op::Reverse { .. }
        | Op::DotGeneral(_)
        | Op::Convolution(_)
        | Op::Gather { .. }
        | Op::TopK { .. }
        | Op::StopGradient
        | Op::AllGather { .. }
        | Op::AllToAll { .. }
        | Op::CollectivePermute { .. }
        | Op::PartitionId
        | Op::CustomCall { .. }
        | Op::GradientOf) => op.clone(),
    };
    let refs: Vec<&Value> = operands.iter().collect();
    let outs = b.push(op, &refs, node.outputs.clone())?;
    for (output, o) in outs.into_iter().enumerate() {
        env.insert(ValueId { node: n, output }, o);
    }
    Ok(())
}

/// An i32 scalar constant's value.
fn const_i32(g: &Graph, v: ValueId) -> Option<i32> {
    let node = &g.nodes[v.node];
    let (Op::Constant { bytes }, [spec]) = (&node.op, &node.outputs[..]) else {
        return None;
    };
    if spec.dtype != DType::I32 || !spec.dims.is_empty() {
        return None;
    }
    Some(i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// The trip count of a loop recorded by [`Builder::fori_loop`]: carry 0
/// starts at a constant, the condition is `carry0 < constant`, the body
/// adds the constant 1 to it.
fn static_trip_count(g: &Graph, init0: ValueId, cond: RegionId, body: RegionId) -> Option<usize> {
    let lower = const_i32(g, init0)?;
    let c = &g.regions[cond.0];
    let [res] = c.results[..] else { return None };
    let cmp = &g.nodes[res.node];
    let arg0 = |r: &Region| ValueId {
        node: r.args_node,
        output: 0,
    };
    if cmp.op != Op::Compare(CompareDir::Lt) || cmp.operands.first() != Some(&arg0(c)) {
        return None;
    }
    let upper = const_i32(g, *cmp.operands.get(1)?)?;
    let bo = &g.regions[body.0];
    let inc = &g.nodes[bo.results.first()?.node];
    if inc.op != Op::Binary(BinaryOp::Add)
        || inc.operands.first() != Some(&arg0(bo))
        || const_i32(g, *inc.operands.get(1)?) != Some(1)
    {
        return None;
    }
    Some((upper as i64 - lower as i64).max(0) as usize)
}

fn dedup(v: impl IntoIterator<Item = ValueId>) -> Vec<ValueId> {
    let mut seen = HashSet::new();
    v.into_iter().filter(|x| seen.insert(*x)).collect()
}

/// `Op::While` with a static trip count: the body is replayed (unrolled)
/// in the entry function and the unrolled copy is differentiated.
pub(super) fn while_loop(at: &At, cond: RegionId, body: RegionId) -> Result<Grads> {
    let (cx, node) = (at.cx, at.node);
    let trips = node
        .operands
        .first()
        .and_then(|&i0| static_trip_count(cx.g, i0, cond, body))
        .ok_or_else(|| {
            at.no_rule(
                "only loops with a static trip count (Builder::fori_loop with constant bounds) are differentiable",
            )
        })?;
    let mut carry: Vec<Value> = node.operands.iter().map(|&v| cx.val(v)).collect();
    for _ in 0..trips {
        let mut env = HashMap::new();
        carry = replay_region(cx.b, cx.g, body, &carry, &mut env)?;
    }
    let (outs, seeds): (Vec<Value>, Vec<Value>) = carry
        .into_iter()
        .zip(at.cts)
        .filter_map(|(o, c)| c.clone().map(|c| (o, c)))
        .unzip();
    let wrt = dedup(
        node.operands
            .iter()
            .zip(at.needs)
            .filter(|(_, &need)| need)
            .map(|(&v, _)| v)
            .chain(at.captures.iter().copied()),
    );
    let grads = backprop(cx.b, &outs, &seeds, &wrt)?;
    Ok(wrt
        .into_iter()
        .zip(grads)
        .filter_map(|(v, g)| g.map(|g| (v, g)))
        .collect())
}

/// `Op::Case` (`case`/`cond`): every branch is replayed in the entry
/// function and differentiated with its cotangents masked by `index == i`.
pub(super) fn case(at: &At, branches: &[RegionId]) -> Result<Grads> {
    let cx = at.cx;
    let index = at.x(0);
    let caps = region_captures(cx.g);
    let mut out = Vec::new();
    for (i, &r) in branches.iter().enumerate() {
        let mut env = HashMap::new();
        let results = replay_region(cx.b, cx.g, r, &[], &mut env)?;
        let on = index.eq(&index.scalar_like(i as f64)?)?;
        let mut outs = Vec::new();
        let mut seeds = Vec::new();
        for (o, c) in results.into_iter().zip(at.cts) {
            if let Some(c) = c {
                seeds.push(on.select(c, &c.scalar_like(0.0)?)?);
                outs.push(o);
            }
        }
        let wrt: Vec<ValueId> = dedup(
            caps[r.0]
                .iter()
                .copied()
                .filter(|v| at.captures.contains(v)),
        );
        let grads = backprop(cx.b, &outs, &seeds, &wrt)?;
        out.extend(
            wrt.into_iter()
                .zip(grads)
                .filter_map(|(v, g)| g.map(|g| (v, g))),
        );
    }
    Ok(out)
}
