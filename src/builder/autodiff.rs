//! Reverse-mode automatic differentiation over the builder graph: [`vjp`],
//! [`grad`], [`value_and_grad`] (and `_with_aux` forms), [`Value::stop_gradient`].
//!
//! The forward computation is traced into the builder as usual. The reverse
//! pass walks the recorded entry-function nodes backwards from the outputs,
//! accumulating one cotangent per value, and emits the backward computation
//! into the SAME builder with the public op methods, so a `jit` compiles
//! forward and backward as one program.
//!
//! Only values that depend on `wrt` (and are floats) are visited; `wrt`
//! values are independent leaves (cotangents stop there, as for JAX's
//! primal inputs). Integer and bool values never carry cotangents. Every op
//! has an arm in one exhaustive `match` ([`rule`]); an op without a rule is
//! an [`Error::Op`] naming it. While loops are differentiated when their trip
//! count is static (the shape [`Builder::fori_loop`] records): the body is
//! replayed (unrolled) that many times and the unrolled copy is
//! differentiated; see `docs/autodiff.md`.
//!
//! ```
//! use xlayer::builder::{autodiff::value_and_grad, jit, Tree};
//! use xlayer::{ArraySpec, Client};
//! let client = Client::cpu()?;
//! let exe = jit(&client, &[ArraySpec::of::<f32>([2]), ArraySpec::of::<f32>([3, 2])], |b, a| {
//!     let params = Tree::map([("w", Tree::leaf(a[0].clone()))]);
//!     let (loss, g) = value_and_grad(b, &params, |_, p| {
//!         a[1].matmul(p.get("w")?)?.square()?.sum(&[0], false) // sum((x w)^2)
//!     })?;
//!     Ok(vec![loss, g.get("w")?.clone()]) // 2 x^T x w
//! })?;
//! let w = client.buffer_from_host(&[1f32, 0.0], &[2])?;
//! let x = client.buffer_from_host(&[1f32, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2])?;
//! let out = exe.execute(&[&w, &x])?;
//! assert_eq!(out[0].to_vec::<f32>()?, vec![2.0]);
//! assert_eq!(out[1].to_vec::<f32>()?, vec![4.0, 2.0]);
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::collections::{HashMap, HashSet};

use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};

use super::autodiff_collectives as collectives_ad;
use super::core::{op_err, Builder, Value};
use super::graph::{Graph, Node, NodeId, RegionId, ValueId};
use super::op::{
    BinaryOp, CompareDir, ConvAttrs, ConvDims, DotDims, GatherDims, Op, ScatterDims, UnaryOp,
    WindowAttrs,
};
use super::ops_index::ScatterMode;
use super::ops_reduce::identity_value;
use super::tree::Tree;

// ------------------------------------------------------------------ public API

/// Cotangents of `wrt` for `outputs` seeded with `cotangents` (JAX's
/// `vjp(f, *wrt)[1](*cotangents)`), emitted into `b`. `wrt` values are
/// treated as independent inputs; one without a path to the outputs gets zeros.
///
/// Errors: [`Error::Op`] for a non-float `wrt` or output, a cotangent whose
/// type differs from its output's, or an op on the path without a rule.
///
/// ```
/// # use xlayer::{builder::{autodiff::vjp, Builder}, ArraySpec};
/// let b = Builder::new();
/// let x = b.parameter(ArraySpec::of::<f32>([3]), "x")?;
/// let y = x.sin()?;
/// let dx = vjp(&b, &[y], &[x.clone()], &[b.ones(xlayer::DType::F32, &[3])?])?; // cos(x)
/// assert_eq!(dx[0].dims(), &[3]);
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn vjp(
    b: &Builder,
    outputs: &[Value],
    wrt: &[Value],
    cotangents: &[Value],
) -> Result<Vec<Value>> {
    if b.state.borrow().scope.is_some() {
        return Err(op_err(
            "vjp",
            "differentiate in the entry function, not inside a region body",
        ));
    }
    if outputs.len() != cotangents.len() {
        return Err(op_err(
            "vjp",
            format!(
                "{} outputs but {} cotangents",
                outputs.len(),
                cotangents.len()
            ),
        ));
    }
    let g = b.graph();
    for (i, (o, c)) in outputs.iter().zip(cotangents).enumerate() {
        b.check_value("vjp", o)?;
        b.check_value("vjp", c)?;
        if !o.dtype().is_float() {
            return Err(op_err(
                "vjp",
                format!(
                    "output {i} is {}: integer and bool outputs have no cotangent",
                    o.spec
                ),
            ));
        }
        if o.spec != c.spec {
            return Err(op_err(
                "vjp",
                format!("cotangent {i} is {} but output {i} is {}", c.spec, o.spec),
            ));
        }
    }
    for w in wrt {
        b.check_value("vjp", w)?;
        if !w.dtype().is_float() {
            return Err(op_err(
                "vjp",
                format!(
                    "cannot differentiate with respect to {} `{}`: only float values have gradients",
                    w.spec,
                    value_name(&g, w.id)
                ),
            ));
        }
    }
    let ids: Vec<ValueId> = wrt.iter().map(|w| w.id).collect();
    let grads = backprop(b, outputs, cotangents, &ids)?;
    grads
        .into_iter()
        .zip(wrt)
        .map(|(g, w)| match g {
            Some(g) => Ok(g),
            None => b.zeros(w.dtype(), w.dims()),
        })
        .collect()
}

/// `jax.value_and_grad(f, has_aux=True)`: runs `f(b, params)` (traced into
/// `b`), which returns a float scalar loss and an aux tree; returns the loss,
/// the aux tree and the gradients, shaped like `params`.
///
/// Errors: [`Error::Op`] (op `grad`) when the loss is not a float scalar
/// (the message names its shape) or a parameter is not a float; see [`vjp`].
///
/// ```
/// # use xlayer::{builder::{autodiff::value_and_grad_with_aux, Builder, Tree}, ArraySpec};
/// let b = Builder::new();
/// let p = Tree::map([("w", Tree::leaf(b.parameter(ArraySpec::of::<f32>([3]), "w")?))]);
/// let (loss, aux, g) = value_and_grad_with_aux(&b, &p, |_b, p| {
///     let w = p.get("w")?;
///     Ok((w.square()?.sum(&[0], false)?, Tree::leaf(w.clone())))
/// })?;
/// assert_eq!(g.get("w")?.dims(), &[3]); // 2 w
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn value_and_grad_with_aux(
    b: &Builder,
    params: &Tree<Value>,
    f: impl FnOnce(&Builder, Tree<Value>) -> Result<(Value, Tree<Value>)>,
) -> Result<(Value, Tree<Value>, Tree<Value>)> {
    let g = b.graph();
    for (path, p) in params.entries() {
        if !p.dtype().is_float() {
            return Err(op_err(
                "grad",
                format!(
                    "parameter `{path}` ({} `{}`) is {}: only float values have gradients",
                    p.spec,
                    value_name(&g, p.id),
                    p.dtype()
                ),
            ));
        }
    }
    let (loss, aux) = f(b, params.clone())?;
    if loss.rank() != 0 || !loss.dtype().is_float() {
        return Err(op_err(
            "grad",
            format!(
                "the loss must be a float scalar, got {} (reduce it, e.g. with .sum() or .mean())",
                loss.spec
            ),
        ));
    }
    let wrt: Vec<Value> = params.leaves().into_iter().cloned().collect();
    let one = loss.scalar_like(1.0)?;
    let grads = vjp(b, std::slice::from_ref(&loss), &wrt, &[one])?;
    let tree = params.structure().unflatten(grads)?;
    Ok((loss, aux, tree))
}

/// `jax.value_and_grad(f)`: the loss `f(b, params)` (a float scalar) and its
/// gradients shaped like `params`.
///
/// ```
/// # use xlayer::{builder::{autodiff::value_and_grad, Builder, Tree}, ArraySpec};
/// let b = Builder::new();
/// let p = Tree::leaf(b.parameter(ArraySpec::of::<f32>([3]), "w")?);
/// let (loss, g) = value_and_grad(&b, &p, |_b, p| p.leaves()[0].exp()?.sum(&[0], false))?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn value_and_grad(
    b: &Builder,
    params: &Tree<Value>,
    f: impl FnOnce(&Builder, Tree<Value>) -> Result<Value>,
) -> Result<(Value, Tree<Value>)> {
    let (loss, _, g) = value_and_grad_with_aux(b, params, |b, p| Ok((f(b, p)?, Tree::Empty)))?;
    Ok((loss, g))
}

/// `jax.grad(f)`: gradients of the float scalar `f(b, params)`, shaped like `params`.
///
/// ```
/// # use xlayer::{builder::{autodiff::grad, Builder, Tree}, ArraySpec};
/// let b = Builder::new();
/// let p = Tree::leaf(b.parameter(ArraySpec::of::<f32>([2, 2]), "w")?);
/// let g = grad(&b, &p, |_b, p| p.leaves()[0].tanh()?.sum(&[0, 1], false))?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn grad(
    b: &Builder,
    params: &Tree<Value>,
    f: impl FnOnce(&Builder, Tree<Value>) -> Result<Value>,
) -> Result<Tree<Value>> {
    Ok(value_and_grad(b, params, f)?.1)
}

/// `jax.grad(f, has_aux=True)`: the gradients and the aux tree.
///
/// ```
/// # use xlayer::{builder::{autodiff::grad_with_aux, Builder, Tree}, ArraySpec};
/// let b = Builder::new();
/// let p = Tree::leaf(b.parameter(ArraySpec::of::<f32>([2]), "w")?);
/// let (g, aux) = grad_with_aux(&b, &p, |_b, p| Ok((p.leaves()[0].sum(&[0], false)?, Tree::Empty)))?;
/// # Ok::<(), xlayer::Error>(())
/// ```
pub fn grad_with_aux(
    b: &Builder,
    params: &Tree<Value>,
    f: impl FnOnce(&Builder, Tree<Value>) -> Result<(Value, Tree<Value>)>,
) -> Result<(Tree<Value>, Tree<Value>)> {
    let (_, aux, g) = value_and_grad_with_aux(b, params, f)?;
    Ok((g, aux))
}

impl Value {
    /// The same value, with no gradient flowing through it (`lax.stop_gradient`).
    /// It emits nothing: the program uses the operand directly.
    ///
    /// ```
    /// # use xlayer::{builder::Builder, ArraySpec};
    /// # let b = Builder::new();
    /// # let x = b.parameter(ArraySpec::of::<f32>([2]), "x")?;
    /// let y = x.stop_gradient()?;
    /// # Ok::<(), xlayer::Error>(())
    /// ```
    pub fn stop_gradient(&self) -> Result<Value> {
        Ok(self
            .builder
            .push(Op::StopGradient, &[self], vec![self.spec.clone()])?
            .remove(0))
    }
}

// ------------------------------------------------------------------ the pass

fn value_name(g: &Graph, v: ValueId) -> String {
    let op = &g.nodes[v.node].op;
    if let Op::Parameter { name, .. } = op {
        name.clone()
    } else {
        format!("%{} ({})", v.node, op.name())
    }
}

/// A value of the graph as a [`Value`].
pub(super) fn value_of(b: &Builder, g: &Graph, v: ValueId) -> Value {
    Value {
        builder: b.clone(),
        id: v,
        spec: g.spec(v).clone(),
        scope: g.nodes[v.node].scope,
    }
}

/// Values each region uses from outside it (its own nested regions included).
fn region_captures(g: &Graph) -> Vec<Vec<ValueId>> {
    let mut caps: Vec<Vec<ValueId>> = vec![Vec::new(); g.regions.len()];
    let mut seen: Vec<HashSet<ValueId>> = vec![HashSet::new(); g.regions.len()];
    for node in &g.nodes {
        let Some(s) = node.scope else { continue };
        for &v in &node.operands {
            let vs = g.nodes[v.node].scope;
            let mut r = Some(s);
            while let Some(rr) = r {
                if g.is_visible(Some(rr), vs) {
                    break;
                }
                if seen[rr.0].insert(v) {
                    caps[rr.0].push(v);
                }
                r = g.regions[rr.0].parent;
            }
        }
    }
    caps
}

/// Walks the entry function backwards from `outputs`; returns the cotangent
/// of each `wrt` (None: no path).
fn backprop(
    b: &Builder,
    outputs: &[Value],
    cotangents: &[Value],
    wrt: &[ValueId],
) -> Result<Vec<Option<Value>>> {
    backprop_in(b, None, outputs, cotangents, wrt)
}

/// [`backprop`] over the nodes of `scope` (`None`: the entry function),
/// emitting the backward ops into the builder's current scope.
pub(super) fn backprop_in(
    b: &Builder,
    scope: Option<RegionId>,
    outputs: &[Value],
    cotangents: &[Value],
    wrt: &[ValueId],
) -> Result<Vec<Option<Value>>> {
    let g = b.graph();
    let nodes: &[NodeId] = match scope {
        None => &g.main_nodes,
        Some(r) => &g.regions[r.0].nodes,
    };
    let wrt_set: HashSet<ValueId> = wrt.iter().copied().collect();
    let Some(first) = wrt.iter().map(|v| v.node).min() else {
        return Ok(Vec::new());
    };
    let caps = region_captures(&g);
    let node_caps = |n: NodeId| -> Vec<ValueId> {
        g.nodes[n]
            .op
            .regions()
            .iter()
            .flat_map(|r| caps[r.0].iter().copied())
            .collect()
    };
    // Forward: which nodes depend on a wrt value.
    let mut active: HashSet<NodeId> = HashSet::new();
    let is_active = |active: &HashSet<NodeId>, v: ValueId| {
        wrt_set.contains(&v) || (active.contains(&v.node) && g.spec(v).dtype.is_float())
    };
    for &n in nodes {
        if n < first {
            continue;
        }
        let node = &g.nodes[n];
        let deps = node.operands.iter().copied().chain(node_caps(n));
        if deps.into_iter().any(|v| is_active(&active, v)) {
            active.insert(n);
        }
    }
    // Backward.
    let mut ct: HashMap<ValueId, Value> = HashMap::new();
    for (o, c) in outputs.iter().zip(cotangents) {
        if is_active(&active, o.id) {
            accumulate(&mut ct, o.id, c.clone())?;
        }
    }
    let mut results: HashMap<ValueId, Value> = HashMap::new();
    let cx = Cx { b, g: &g };
    for &n in nodes.iter().rev() {
        if n < first {
            break;
        }
        let node = &g.nodes[n];
        let mut outs: Vec<Option<Value>> = (0..node.outputs.len())
            .map(|output| ct.remove(&ValueId { node: n, output }))
            .collect();
        for (output, c) in outs.iter_mut().enumerate() {
            let id = ValueId { node: n, output };
            if wrt_set.contains(&id) {
                if let Some(c) = c.take() {
                    results.insert(id, c);
                }
            }
        }
        if !active.contains(&n) || outs.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = node
            .operands
            .iter()
            .map(|&v| is_active(&active, v))
            .collect();
        let capture_needs: Vec<ValueId> = node_caps(n)
            .into_iter()
            .filter(|&v| is_active(&active, v))
            .collect();
        for (v, c) in rule(&cx, n, &outs, &needs, &capture_needs)? {
            if !is_active(&active, v) {
                continue;
            }
            if c.spec != *g.spec(v) {
                return Err(op_err(
                    node.op.name(),
                    format!(
                        "internal: the differentiation rule produced {} for an operand of type {}",
                        c.spec,
                        g.spec(v)
                    ),
                ));
            }
            accumulate(&mut ct, v, c)?;
        }
    }
    Ok(wrt.iter().map(|v| results.get(v).cloned()).collect())
}

fn accumulate(ct: &mut HashMap<ValueId, Value>, v: ValueId, c: Value) -> Result<()> {
    let new = match ct.remove(&v) {
        Some(old) => old.add(&c)?,
        None => c,
    };
    ct.insert(v, new);
    Ok(())
}

struct Cx<'a> {
    b: &'a Builder,
    g: &'a Graph,
}

impl Cx<'_> {
    fn val(&self, v: ValueId) -> Value {
        value_of(self.b, self.g, v)
    }
    fn zeros(&self, spec: &ArraySpec) -> Result<Value> {
        self.b.zeros(spec.dtype, &spec.dims)
    }
}

fn no_rule(op: &Op, why: &str) -> Error {
    op_err(op.name(), format!("no differentiation rule: {why}"))
}

/// The binary op a one-node region computes on its two arguments
/// (`(a, b) -> a op b`), for reduce, reduce_window and scatter bodies.
fn monoid_of(g: &Graph, r: RegionId) -> Option<BinaryOp> {
    let region = &g.regions[r.0];
    let [res] = region.results[..] else {
        return None;
    };
    let node = &g.nodes[res.node];
    let Op::Binary(op) = node.op else {
        return None;
    };
    let args: Vec<(NodeId, usize)> = node.operands.iter().map(|v| (v.node, v.output)).collect();
    let a = region.args_node;
    (args == [(a, 0), (a, 1)] || args == [(a, 1), (a, 0)]).then_some(op)
}

/// The cotangent of every operand (and captured value) of node `n`, given
/// the cotangents of its outputs. The exhaustive match over [`Op`].
fn rule(
    cx: &Cx,
    n: NodeId,
    cts: &[Option<Value>],
    needs: &[bool],
    captures: &[ValueId],
) -> Result<Vec<(ValueId, Value)>> {
    let node: &Node = &cx.g.nodes[n];
    let ops = &node.operands;
    let x = |i: usize| cx.val(ops[i]);
    let ct0 = || {
        cts[0]
            .clone()
            .ok_or_else(|| op_err(node.op.name(), "internal: missing cotangent"))
    };
    let mut out: Vec<(ValueId, Value)> = Vec::new();
    match &node.op {
        Op::Parameter { .. }
        | Op::RegionArgs
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Compare(_)
        | Op::StopGradient => {}
        Op::BitcastConvert => {
            return Err(no_rule(
                &node.op,
                "bit reinterpretation is not differentiable",
            ))
        }
        Op::Unary(u) => {
            let ans = cx.val(ValueId { node: n, output: 0 });
            if let Some(g) = unary_rule(*u, &x(0), &ans, &ct0()?)? {
                out.push((ops[0], g));
            }
        }
        Op::Binary(op) => {
            let ans = cx.val(ValueId { node: n, output: 0 });
            let (gx, gy) = binary_rule(*op, &x(0), &x(1), &ans, &ct0()?, needs)?;
            out.extend(gx.map(|g| (ops[0], g)));
            out.extend(gy.map(|g| (ops[1], g)));
        }
        Op::Select => {
            let (p, g) = (x(0), ct0()?);
            let z = cx.zeros(&g.spec)?;
            if needs[1] {
                out.push((ops[1], p.select(&g, &z)?));
            }
            if needs[2] {
                out.push((ops[2], p.select(&z, &g)?));
            }
        }
        Op::Clamp => {
            let (lo, v, hi, g) = (x(0), x(1), x(2), ct0()?);
            let z = cx.zeros(&g.spec)?;
            let fit = |t: Value, like: &Value| -> Result<Value> {
                if like.rank() == 0 && t.rank() > 0 {
                    t.sum(&(0..t.rank()).collect::<Vec<_>>(), false)
                } else {
                    Ok(t)
                }
            };
            if needs[0] {
                let m = lo.gt(&v)?.and(&lo.lt(&hi)?)?;
                out.push((ops[0], fit(m.select(&g, &z)?, &lo)?));
            }
            if needs[1] {
                let m = v.gt(&lo)?.and(&v.lt(&hi)?)?;
                out.push((ops[1], m.select(&g, &z)?));
            }
            if needs[2] {
                let m = hi.lt(&v)?;
                out.push((ops[2], fit(m.select(&g, &z)?, &hi)?));
            }
        }
        Op::Convert => {
            let a = x(0);
            if a.dtype().is_float() {
                out.push((ops[0], ct0()?.convert(a.dtype())?));
            }
        }
        Op::BroadcastInDim { dims } => {
            out.push((ops[0], unbroadcast(&ct0()?, &x(0), dims)?));
        }
        Op::Reshape => out.push((ops[0], ct0()?.reshape(x(0).dims())?)),
        // The barrier only orders compilation; its derivative is the identity.
        Op::OptimizationBarrier => out.push((ops[0], ct0()?)),
        Op::Transpose { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            out.push((ops[0], ct0()?.transpose(&inv)?));
        }
        Op::Slice { start, strides, .. } => {
            let g = ct0()?;
            let a = x(0);
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
            out.push((ops[0], g.pad(&g.scalar_like(0.0)?, &low, &high, &interior)?));
        }
        Op::DynamicSlice { .. } => {
            let starts: Vec<Value> = (1..ops.len()).map(x).collect();
            let z = cx.zeros(&x(0).spec)?;
            out.push((ops[0], z.dynamic_update_slice(&ct0()?, &starts)?));
        }
        Op::DynamicUpdateSlice => {
            let g = ct0()?;
            let upd = x(1);
            let starts: Vec<Value> = (2..ops.len()).map(x).collect();
            if needs[0] {
                let z = cx.zeros(&upd.spec)?;
                out.push((ops[0], g.dynamic_update_slice(&z, &starts)?));
            }
            if needs[1] {
                out.push((ops[1], g.dynamic_slice(&starts, upd.dims())?));
            }
        }
        Op::Concatenate { dim } => {
            let g = ct0()?;
            let mut at = 0;
            for (i, &v) in ops.iter().enumerate() {
                let size = cx.g.spec(v).dims[*dim];
                if needs[i] {
                    out.push((v, g.slice_axis(*dim, at, at + size)?));
                }
                at += size;
            }
        }
        Op::Pad {
            low,
            high,
            interior,
        } => {
            let g = ct0()?;
            let t = pad_transpose(&g, low, high, interior)?;
            if needs[1] {
                let all: Vec<usize> = (0..g.rank()).collect();
                let tp = g.sum(&all, false)?.sub(&t.sum(&all, false)?)?;
                out.push((ops[1], tp));
            }
            if needs[0] {
                out.push((ops[0], t));
            }
        }
        Op::Reverse { dims } => out.push((ops[0], ct0()?.reverse(dims)?)),
        Op::DotGeneral(d) => {
            let g = ct0()?;
            let (a, bb) = (x(0), x(1));
            if needs[0] {
                out.push((ops[0], dot_transpose_lhs(&g, &a, &bb, d, false)?));
            }
            if needs[1] {
                let swapped = DotDims {
                    lhs_batch: d.rhs_batch.clone(),
                    rhs_batch: d.lhs_batch.clone(),
                    lhs_contract: d.rhs_contract.clone(),
                    rhs_contract: d.lhs_contract.clone(),
                };
                out.push((ops[1], dot_transpose_lhs(&g, &bb, &a, &swapped, true)?));
            }
        }
        Op::Convolution(attrs) => {
            let g = ct0()?;
            let (a, k) = (x(0), x(1));
            if needs[0] {
                out.push((ops[0], conv_transpose_lhs(&g, &a, &k, attrs)?));
            }
            if needs[1] {
                out.push((ops[1], conv_transpose_rhs(&g, &a, &k, attrs)?));
            }
        }
        Op::Reduce { dims, body } => {
            let monoid = (ops.len() == 2).then(|| monoid_of(cx.g, *body)).flatten();
            let g = ct0()?;
            let a = x(0);
            let ans = cx.val(ValueId { node: n, output: 0 });
            let kept: Vec<usize> = (0..a.rank()).filter(|d| !dims.contains(d)).collect();
            let back = |v: &Value| v.broadcast_in_dim(a.dims(), &kept);
            match monoid {
                Some(BinaryOp::Add) => {
                    if needs[0] {
                        out.push((ops[0], back(&g)?));
                    }
                    if needs[1] {
                        let all: Vec<usize> = (0..g.rank()).collect();
                        out.push((ops[1], g.sum(&all, false)?));
                    }
                }
                Some(BinaryOp::Max | BinaryOp::Min) => {
                    let loc = a.eq(&back(&ans)?)?.convert(a.dtype())?;
                    let counts = loc.sum(dims, false)?;
                    out.push((ops[0], loc.mul(&back(&g.div(&counts)?)?)?));
                }
                Some(BinaryOp::Mul) => {
                    out.push((ops[0], prod_transpose(&a, dims, &g)?));
                }
                _ => {
                    return Err(no_rule(
                        &node.op,
                        "only sum, max, min and prod reductions are differentiable",
                    ))
                }
            }
        }
        Op::ReduceWindow { window, body } => {
            let monoid = (ops.len() == 2).then(|| monoid_of(cx.g, *body)).flatten();
            let g = ct0()?;
            let a = x(0);
            match monoid {
                Some(BinaryOp::Add) => {
                    out.push((ops[0], window_sum_transpose(&g, &a, window)?));
                }
                Some(op @ (BinaryOp::Max | BinaryOp::Min)) => {
                    let ans = cx.val(ValueId { node: n, output: 0 });
                    out.push((ops[0], window_chooser_transpose(&g, &a, &ans, window, op)?));
                }
                _ => {
                    return Err(no_rule(
                        &node.op,
                        "only sum, max and min windowed reductions are differentiable",
                    ))
                }
            }
        }
        Op::Gather { dims, slice_sizes } => {
            let (a, idx) = (x(0), x(1));
            out.push((
                ops[0],
                gather_transpose(&ct0()?, &a, &idx, dims, slice_sizes)?,
            ));
        }
        Op::Scatter { dims, body } => {
            let g = ct0()?;
            let (a, idx, upd) = (x(0), x(1), x(2));
            let region = &cx.g.regions[body.0];
            let is_set = region.results[..]
                == [ValueId {
                    node: region.args_node,
                    output: 1,
                }];
            let mode = if is_set {
                ScatterMode::Set
            } else if monoid_of(cx.g, *body) == Some(BinaryOp::Add) {
                ScatterMode::Add
            } else {
                return Err(no_rule(
                    &node.op,
                    "only scatter in set and add modes is differentiable",
                ));
            };
            if needs[0] {
                let t = if mode == ScatterMode::Set {
                    g.scatter(&idx, &cx.zeros(&upd.spec)?, dims, ScatterMode::Set)?
                } else {
                    g.clone()
                };
                out.push((ops[0], t));
            }
            if needs[2] {
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
                out.push((ops[2], g.gather(&idx, &gd, &slice_sizes)?));
            }
        }
        Op::Sort {
            dim,
            stable,
            comparator,
        } => {
            let values: Vec<Value> = (0..ops.len()).map(x).collect();
            let perm = sort_permutation(cx, &values, *dim, *comparator, *stable)?;
            for (i, c) in cts.iter().enumerate() {
                if let (Some(c), true) = (c, needs[i]) {
                    out.push((ops[i], scatter_along(c, &perm, *dim, values[i].dims())?));
                }
            }
        }
        Op::TopK { .. } => {
            let a = x(0);
            let idx = cx.val(ValueId { node: n, output: 1 });
            out.push((
                ops[0],
                scatter_along(&ct0()?, &idx, a.rank() - 1, a.dims())?,
            ));
        }
        Op::While { cond, body } => {
            out = while_rule(cx, n, *cond, *body, cts, needs, captures)?;
        }
        Op::Case { branches } => {
            out = case_rule(cx, n, branches, cts, captures)?;
        }
        Op::ManualComputation { attrs, body } => {
            out = collectives_ad::manual_rule(cx.b, cx.g, n, attrs, *body, cts, needs)?;
        }
        Op::AllReduce { over, body } => {
            if monoid_of(cx.g, *body) != Some(BinaryOp::Add) {
                return Err(no_rule(&node.op, "pmax and pmin are not differentiable"));
            }
            out.push((ops[0], collectives_ad::all_reduce_t(&ct0()?, over)?));
        }
        Op::AllGather { over, dim } => {
            out.push((ops[0], collectives_ad::all_gather_t(&ct0()?, over, *dim)?));
        }
        Op::ReduceScatter { over, dim, .. } => {
            out.push((
                ops[0],
                collectives_ad::reduce_scatter_t(&ct0()?, over, *dim)?,
            ));
        }
        Op::AllToAll {
            over,
            split_dim,
            concat_dim,
        } => {
            out.push((
                ops[0],
                collectives_ad::all_to_all_t(&ct0()?, over, *split_dim, *concat_dim)?,
            ));
        }
        Op::CollectivePermute { over, perm } => {
            out.push((ops[0], collectives_ad::permute_t(&ct0()?, over, perm)?));
        }
        Op::PartitionId => {}
    }
    Ok(out)
}

// ------------------------------------------------------------------ elementwise

fn unary_rule(op: UnaryOp, x: &Value, ans: &Value, g: &Value) -> Result<Option<Value>> {
    use UnaryOp::*;
    let c = |v: f64| x.scalar_like(v);
    let r = match op {
        Neg => g.neg()?,
        Abs => x.ge(&c(0.0)?)?.select(g, &g.neg()?)?,
        // Piecewise constant: a zero cotangent (as JAX's symbolic zero, even for inf/NaN g).
        Sign | Floor | Ceil | RoundNearestAfz | RoundNearestEven => return Ok(None),
        Exp => g.mul(ans)?,
        Expm1 => g.mul(&ans.add(&c(1.0)?)?)?,
        Log => g.div(x)?,
        Log1p => g.div(&x.add(&c(1.0)?)?)?,
        Sqrt => g.mul(&c(0.5)?.div(ans)?)?,
        Rsqrt => g.mul(&c(-0.5)?.mul(&ans.div(x)?)?)?,
        Cbrt => g.mul(&c(1.0 / 3.0)?.mul(&ans.mul(ans)?.recip()?)?)?,
        Tanh => g.add(&g.mul(ans)?)?.mul(&c(1.0)?.sub(ans)?)?,
        Logistic => g.mul(&ans.mul(&c(1.0)?.sub(ans)?)?)?,
        Sin => g.mul(&x.cos()?)?,
        Cos => g.mul(&x.sin()?.neg()?)?,
        Tan => g.mul(&c(1.0)?.add(&ans.square()?)?)?,
        Erf => c(2.0 / std::f64::consts::PI.sqrt())?.mul(&g.mul(&x.square()?.neg()?.exp()?)?)?,
        Erfc => c(-2.0 / std::f64::consts::PI.sqrt())?.mul(&g.mul(&x.square()?.neg()?.exp()?)?)?,
        ErfInv => c(std::f64::consts::PI.sqrt() / 2.0)?.mul(&g.mul(&ans.square()?.exp()?)?)?,
        IsFinite | Not | PopCount => return Ok(None),
    };
    Ok(Some(r))
}

/// JAX's `_balanced_eq(x, z, y)`: 1 where x == z, halved where also y == z.
fn balanced_eq(x: &Value, z: &Value, y: &Value) -> Result<Value> {
    let one = z.scalar_like(1.0)?;
    let zero = z.scalar_like(0.0)?;
    let two = z.scalar_like(2.0)?;
    x.eq(z)?
        .select(&one, &zero)?
        .div(&y.eq(z)?.select(&two, &one)?)
}

fn replace_zero(x: &Value) -> Result<Value> {
    x.eq(&x.scalar_like(0.0)?)?.select(&x.scalar_like(1.0)?, x)
}

type Pair = (Option<Value>, Option<Value>);

fn binary_rule(
    op: BinaryOp,
    x: &Value,
    y: &Value,
    ans: &Value,
    g: &Value,
    needs: &[bool],
) -> Result<Pair> {
    use BinaryOp::*;
    let (nx, ny) = (needs[0], needs[1]);
    let when = |need: bool, f: &dyn Fn() -> Result<Value>| -> Result<Option<Value>> {
        if need {
            f().map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(match op {
        Add => (when(nx, &|| Ok(g.clone()))?, when(ny, &|| Ok(g.clone()))?),
        Sub => (when(nx, &|| Ok(g.clone()))?, when(ny, &|| g.neg())?),
        Mul => (when(nx, &|| g.mul(y))?, when(ny, &|| g.mul(x))?),
        Div => (
            when(nx, &|| g.div(y))?,
            when(ny, &|| g.neg()?.mul(x)?.div(&y.square()?))?,
        ),
        Rem => (
            when(nx, &|| Ok(g.clone()))?,
            when(ny, &|| {
                let q = x.div(y)?;
                g.neg()?.mul(&q.sign()?.mul(&q.abs()?.floor()?)?)
            })?,
        ),
        Pow => (
            when(nx, &|| {
                g.mul(&y.mul(&x.pow(&y.sub(&y.scalar_like(1.0)?)?)?)?)
            })?,
            when(ny, &|| g.mul(&replace_zero(x)?.log()?.mul(ans)?))?,
        ),
        Max | Min => (
            when(nx, &|| g.mul(&balanced_eq(x, ans, y)?))?,
            when(ny, &|| g.mul(&balanced_eq(y, ans, x)?))?,
        ),
        Atan2 => {
            let den = || x.square()?.add(&y.square()?);
            (
                when(nx, &|| g.mul(&y.div(&den()?)?))?,
                when(ny, &|| g.mul(&x.neg()?.div(&den()?)?))?,
            )
        }
        And | Or | Xor | ShiftLeft | ShiftRightArithmetic | ShiftRightLogical => (None, None),
    })
}

// ------------------------------------------------------------------ shapes

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
fn pad_transpose(g: &Value, low: &[i64], high: &[i64], interior: &[usize]) -> Result<Value> {
    let neg = |v: &[i64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    let r = g.rank();
    let unpadded = g.pad(&g.scalar_like(0.0)?, &neg(low), &neg(high), &vec![0; r])?;
    let strides: Vec<usize> = interior.iter().map(|i| i + 1).collect();
    unpadded.slice(&vec![0; r], unpadded.dims(), &strides)
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

// ------------------------------------------------------------------ convolution

fn dilate(d: usize, k: usize) -> i64 {
    if d == 0 {
        0
    } else {
        1 + (k * (d - 1)) as i64
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

/// JAX's `_conv_general_dilated_transpose_lhs`.
fn conv_transpose_lhs(g: &Value, lhs: &Value, rhs: &Value, a: &ConvAttrs) -> Result<Value> {
    let [lhs_spec, rhs_spec, out_spec] = specs(&a.dims);
    let (sl, sr, so) = (&lhs_spec[2..], &rhs_spec[2..], &out_spec[2..]);
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
    let in_shape = take(lhs.dims(), sl);
    let win = take(rhs.dims(), sr);
    let out_shape = take(g.dims(), so);
    let padding: Vec<(i64, i64)> = (0..sl.len())
        .map(|i| {
            let l = dilate(in_shape[i], a.lhs_dilation[i]);
            let r = dilate(win[i], a.rhs_dilation[i]);
            let o = dilate(out_shape[i], a.strides[i]);
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
    let (sl, sr, so) = (&lhs_spec[2..], &rhs_spec[2..], &out_spec[2..]);
    let (mut fgc, mut bgc) = (a.feature_group_count, a.batch_group_count);
    if bgc > 1 {
        fgc = bgc;
        bgc = 1;
    } else if fgc > 1 {
        bgc = fgc;
        fgc = 1;
    }
    let in_shape = take(lhs.dims(), sl);
    let win = take(rhs.dims(), sr);
    let out_shape = take(g.dims(), so);
    let padding: Vec<(i64, i64)> = (0..sl.len())
        .map(|i| {
            let l = dilate(in_shape[i], a.lhs_dilation[i]);
            let r = dilate(win[i], a.rhs_dilation[i]);
            let o = dilate(out_shape[i], a.strides[i]);
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

// ------------------------------------------------------------------ reductions

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

// ------------------------------------------------------------------ indexing

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

// ------------------------------------------------------------------ control flow

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
        | Op::PartitionId) => op.clone(),
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
    let arg0 = |r: &super::graph::Region| ValueId {
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

/// While loops with a static trip count: the body is replayed (unrolled)
/// in the entry function and the unrolled copy is differentiated.
fn while_rule(
    cx: &Cx,
    n: NodeId,
    cond: RegionId,
    body: RegionId,
    cts: &[Option<Value>],
    needs: &[bool],
    captures: &[ValueId],
) -> Result<Vec<(ValueId, Value)>> {
    let node = &cx.g.nodes[n];
    let trips = node
        .operands
        .first()
        .and_then(|&i0| static_trip_count(cx.g, i0, cond, body))
        .ok_or_else(|| {
            no_rule(
                &node.op,
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
        .zip(cts)
        .filter_map(|(o, c)| c.clone().map(|c| (o, c)))
        .unzip();
    let wrt = dedup(
        node.operands
            .iter()
            .zip(needs)
            .filter(|(_, &need)| need)
            .map(|(&v, _)| v)
            .chain(captures.iter().copied()),
    );
    let grads = backprop(cx.b, &outs, &seeds, &wrt)?;
    Ok(wrt
        .into_iter()
        .zip(grads)
        .filter_map(|(v, g)| g.map(|g| (v, g)))
        .collect())
}

/// `case`/`cond`: every branch is replayed in the entry function and
/// differentiated with its cotangents masked by `index == i`.
fn case_rule(
    cx: &Cx,
    n: NodeId,
    branches: &[RegionId],
    cts: &[Option<Value>],
    captures: &[ValueId],
) -> Result<Vec<(ValueId, Value)>> {
    let node = &cx.g.nodes[n];
    let index = cx.val(node.operands[0]);
    let caps = region_captures(cx.g);
    let mut out = Vec::new();
    for (i, &r) in branches.iter().enumerate() {
        let mut env = HashMap::new();
        let results = replay_region(cx.b, cx.g, r, &[], &mut env)?;
        let on = index.eq(&index.scalar_like(i as f64)?)?;
        let mut outs = Vec::new();
        let mut seeds = Vec::new();
        for (o, c) in results.into_iter().zip(cts) {
            if let Some(c) = c {
                seeds.push(on.select(c, &c.scalar_like(0.0)?)?);
                outs.push(o);
            }
        }
        let wrt: Vec<ValueId> = dedup(caps[r.0].iter().copied().filter(|v| captures.contains(v)));
        let grads = backprop(cx.b, &outs, &seeds, &wrt)?;
        out.extend(
            wrt.into_iter()
                .zip(grads)
                .filter_map(|(v, g)| g.map(|g| (v, g))),
        );
    }
    Ok(out)
}
