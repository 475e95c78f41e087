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
//! has an arm in one exhaustive `match` (`rule`) that hands over to its
//! family's rules (`rules_elementwise`, `rules_shape`, `rules_linalg`,
//! `rules_reduce`, `rules_index`, `rules_control`); an op without a rule is
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

mod rules_collectives;
mod rules_control;
mod rules_elementwise;
mod rules_index;
mod rules_linalg;
mod rules_reduce;
mod rules_shape;

use std::collections::{HashMap, HashSet};

use crate::dtype::ArraySpec;
use crate::error::{Error, Result};

use super::core::{op_err, Builder, Value};
use super::graph::{Graph, Node, NodeId, RegionId, ValueId};
use super::op::{BinaryOp, Op};
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

    /// This value, differentiated as `surrogate` (same type): a custom
    /// derivative that keeps the forward program to this value's own ops
    /// (`surrogate` is dead code there, dropped by the compiler).
    ///
    /// Errors: [`crate::Error::DTypeMismatch`] (both types) when the two
    /// types differ.
    pub(crate) fn with_gradient_of(&self, surrogate: &Value) -> Result<Value> {
        if surrogate.spec != self.spec {
            return Err(crate::Error::DTypeMismatch {
                op: "gradient_of",
                lhs: self.spec.clone(),
                rhs: surrogate.spec.clone(),
            });
        }
        Ok(self
            .builder
            .push(Op::GradientOf, &[self, surrogate], vec![self.spec.clone()])?
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
fn value_of(b: &Builder, g: &Graph, v: ValueId) -> Value {
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
/// emitting the backward ops into the builder's current scope (a manual
/// region's transpose differentiates its replayed body inside a new one).
fn backprop_in(
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

/// The cotangents of one node's operands (and captured values), as a rule
/// returns them.
type Grads = Vec<(ValueId, Value)>;

/// One node under differentiation: its operands, the cotangents of its
/// outputs, and which operands need a cotangent.
struct At<'a> {
    cx: &'a Cx<'a>,
    n: NodeId,
    node: &'a Node,
    cts: &'a [Option<Value>],
    needs: &'a [bool],
    captures: &'a [ValueId],
}

impl At<'_> {
    /// Operand `i` as a [`ValueId`].
    fn id(&self, i: usize) -> ValueId {
        self.node.operands[i]
    }
    /// Operand `i` as a [`Value`].
    fn x(&self, i: usize) -> Value {
        self.cx.val(self.node.operands[i])
    }
    /// Output `output` of the node itself.
    fn ans(&self, output: usize) -> Value {
        self.cx.val(ValueId {
            node: self.n,
            output,
        })
    }
    /// The cotangent of output 0 (present whenever a rule runs on a
    /// one-output node).
    fn ct0(&self) -> Result<Value> {
        self.cts[0]
            .clone()
            .ok_or_else(|| op_err(self.node.op.name(), "internal: missing cotangent"))
    }
    fn no_rule(&self, why: &str) -> Error {
        no_rule(&self.node.op, why)
    }
}

/// The cotangent of every operand (and captured value) of node `n`, given
/// the cotangents of its outputs: the exhaustive match over [`Op`], one
/// arm per op, each handing over to its family's rules (`rules_*.rs`).
fn rule(
    cx: &Cx,
    n: NodeId,
    cts: &[Option<Value>],
    needs: &[bool],
    captures: &[ValueId],
) -> Result<Grads> {
    let node: &Node = &cx.g.nodes[n];
    let at = At {
        cx,
        n,
        node,
        cts,
        needs,
        captures,
    };
    match &node.op {
        Op::Parameter { .. }
        | Op::RegionArgs
        | Op::Constant { .. }
        | Op::Iota { .. }
        | Op::Compare(_)
        | Op::StopGradient => Ok(Vec::new()),
        Op::BitcastConvert => Err(at.no_rule("bit reinterpretation is not differentiable")),
        Op::Unary(u) => rules_elementwise::unary(&at, *u),
        Op::Binary(op) => rules_elementwise::binary(&at, *op),
        Op::Select => rules_elementwise::select(&at),
        Op::Clamp => rules_elementwise::clamp(&at),
        Op::Convert => rules_elementwise::convert(&at),
        Op::BroadcastInDim { dims } => rules_shape::broadcast_in_dim(&at, dims),
        Op::Reshape => rules_shape::reshape(&at),
        // The custom derivative: the cotangent goes to the surrogate only.
        Op::GradientOf => Ok(vec![(at.id(1), at.ct0()?)]),
        // The barrier only orders compilation; its derivative is the identity.
        Op::OptimizationBarrier => Ok(vec![(at.id(0), at.ct0()?)]),
        // As JAX: the cotangent under the same constraint.
        Op::ShardingConstraint { mesh, spec } => Ok(vec![(
            at.id(0),
            crate::builder::shardings::constrain(&at.ct0()?, mesh.clone(), spec.clone())?,
        )]),
        Op::Transpose { perm } => rules_shape::transpose(&at, perm),
        Op::Slice { start, strides, .. } => rules_shape::slice(&at, start, strides),
        Op::DynamicSlice { .. } => rules_shape::dynamic_slice(&at),
        Op::DynamicUpdateSlice => rules_shape::dynamic_update_slice(&at),
        Op::Concatenate { dim } => rules_shape::concatenate(&at, *dim),
        Op::Pad {
            low,
            high,
            interior,
        } => rules_shape::pad(&at, low, high, interior),
        Op::Reverse { dims } => rules_shape::reverse(&at, dims),
        Op::DotGeneral(d) => rules_linalg::dot_general(&at, d),
        Op::Convolution(attrs) => rules_linalg::convolution(&at, attrs),
        Op::Reduce { dims, body } => rules_reduce::reduce(&at, dims, *body),
        Op::ReduceWindow { window, body } => rules_reduce::reduce_window(&at, window, *body),
        Op::Gather { dims, slice_sizes } => rules_index::gather(&at, dims, slice_sizes),
        Op::Scatter { dims, body } => rules_index::scatter(&at, dims, *body),
        Op::Sort {
            dim,
            stable,
            comparator,
        } => rules_index::sort(&at, *dim, *comparator, *stable),
        Op::TopK { .. } => rules_index::top_k(&at),
        Op::While { cond, body } => rules_control::while_loop(&at, *cond, *body),
        Op::Case { branches } => rules_control::case(&at, branches),
        Op::ManualComputation { attrs, body } => rules_collectives::manual(&at, attrs, *body),
        Op::AllReduce { over, body } => rules_collectives::all_reduce(&at, over, *body),
        Op::AllGather { over, dim } => rules_collectives::all_gather(&at, over, *dim),
        Op::ReduceScatter { over, dim, .. } => rules_collectives::reduce_scatter(&at, over, *dim),
        Op::AllToAll {
            over,
            split_dim,
            concat_dim,
        } => rules_collectives::all_to_all(&at, over, *split_dim, *concat_dim),
        Op::CollectivePermute { over, perm } => rules_collectives::ppermute(&at, over, perm),
        Op::PartitionId => Ok(Vec::new()),
        Op::CustomCall { .. } => Err(at.no_rule("a custom call's kernel has no derivative")),
    }
}
