//! The traced graph, kept as data: nodes with operands and output types,
//! nested regions (bodies of reduce, while, sort...), parameters.
//!
//! Nodes are stored in creation order, which is a topological order; every
//! operand refers to an earlier node. A later autodiff pass walks the same
//! arrays backwards.

use crate::dtype::ArraySpec;

use super::collectives::MeshAxes;
use super::op::Op;
use super::shardings::IoShardings;

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// Index of a region in [`Graph::regions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub usize);

/// One output of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueId {
    /// The node.
    pub node: NodeId,
    /// Which of its outputs.
    pub output: usize,
}

/// An operation with its operands and the types of its outputs.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Its inputs, in order.
    pub operands: Vec<ValueId>,
    /// The types of its outputs.
    pub outputs: Vec<ArraySpec>,
    /// The region it belongs to (`None`: the entry function).
    pub scope: Option<RegionId>,
}

/// A nested computation: block arguments, nodes, results.
#[derive(Debug, Clone)]
pub struct Region {
    /// The enclosing region (`None`: the entry function).
    pub parent: Option<RegionId>,
    /// The [`Op::RegionArgs`] node holding the block arguments.
    pub args_node: NodeId,
    /// The nodes of the region, in order (the args node first).
    pub nodes: Vec<NodeId>,
    /// What the region returns.
    pub results: Vec<ValueId>,
    /// The mesh of a manual region (a `shard_map` body): its collectives
    /// name these axes, and it cannot see values defined outside it.
    pub manual: Option<MeshAxes>,
}

/// A whole traced program.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Every node, in creation order.
    pub nodes: Vec<Node>,
    /// Every region.
    pub regions: Vec<Region>,
    /// Nodes of the entry function, in order.
    pub main_nodes: Vec<NodeId>,
    /// The [`Op::Parameter`] nodes, by parameter index.
    pub params: Vec<NodeId>,
    /// The shardings of the entry function's parameters and results
    /// (`jit`'s `in_shardings` / `out_shardings`), if any.
    pub shardings: Option<IoShardings>,
}

impl Graph {
    /// The type of a value.
    pub fn spec(&self, v: ValueId) -> &ArraySpec {
        &self.nodes[v.node].outputs[v.output]
    }

    /// Whether code in `inner` may use a value defined in `outer`
    /// (same region, or an enclosing one not beyond a manual region, which
    /// is isolated from what is outside it).
    pub fn is_visible(&self, outer: Option<RegionId>, inner: Option<RegionId>) -> bool {
        let mut s = inner;
        loop {
            if s == outer {
                return true;
            }
            match s {
                None => return false,
                Some(r) if self.regions[r.0].manual.is_some() => return false,
                Some(r) => s = self.regions[r.0].parent,
            }
        }
    }
}
