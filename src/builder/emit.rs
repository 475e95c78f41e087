//! StableHLO emission: a [`Graph`] to MLIR text in the generic op form
//! (`%v3 = "stablehlo.add"(%v1, %v2) : (...) -> ...`), which the pinned
//! plugin parses for every op, regions included.

use std::fmt::Write;

use crate::dtype::{ArraySpec, DType};

use super::collectives::{CollectiveAxes, MeshAxes};
use super::graph::{Graph, NodeId, RegionId, ValueId};
use super::op::{ConvAttrs, Op};
use super::shard_map::{DimAxes, ManualAttrs};

/// The SSA name of a value.
fn vref(g: &Graph, v: ValueId) -> String {
    let n = &g.nodes[v.node];
    match n.op {
        Op::RegionArgs => format!("%v{}_{}", v.node, v.output),
        // An identity for autodiff only: the operand itself.
        Op::StopGradient | Op::GradientOf => vref(g, n.operands[0]),
        Op::Parameter { .. }
        | Op::Constant { .. }
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
        | Op::Reduce { .. }
        | Op::ReduceWindow { .. }
        | Op::Gather { .. }
        | Op::Scatter { .. }
        | Op::Sort { .. }
        | Op::TopK { .. }
        | Op::While { .. }
        | Op::Case { .. }
        | Op::ManualComputation { .. }
        | Op::AllReduce { .. }
        | Op::AllGather { .. }
        | Op::ReduceScatter { .. }
        | Op::AllToAll { .. }
        | Op::CollectivePermute { .. }
        | Op::PartitionId
        | Op::CustomCall { .. } => {
            if n.outputs.len() == 1 {
                format!("%v{}", v.node)
            } else {
                format!("%v{}#{}", v.node, v.output)
            }
        }
    }
}

fn i64_array(xs: impl IntoIterator<Item = i64>) -> String {
    let items: Vec<String> = xs.into_iter().map(|x| x.to_string()).collect();
    if items.is_empty() {
        "array<i64>".to_string()
    } else {
        format!("array<i64: {}>", items.join(", "))
    }
}

fn usize_array(xs: &[usize]) -> String {
    i64_array(xs.iter().map(|&x| x as i64))
}

fn list(xs: &[usize]) -> String {
    format!(
        "[{}]",
        xs.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn padding_attr(p: &[(i64, i64)]) -> String {
    let rows: Vec<String> = p.iter().map(|(l, h)| format!("[{l}, {h}]")).collect();
    format!("dense<[{}]> : tensor<{}x2xi64>", rows.join(", "), p.len())
}

fn types(specs: &[ArraySpec]) -> String {
    specs
        .iter()
        .map(|s| s.mlir_type())
        .collect::<Vec<_>>()
        .join(", ")
}

fn result_types(specs: &[ArraySpec]) -> String {
    if specs.len() == 1 {
        specs[0].mlir_type()
    } else {
        format!("({})", types(specs))
    }
}

/// A dense literal for a constant's bytes.
fn dense_literal(bytes: &[u8], spec: &ArraySpec) -> String {
    let size = spec.dtype.size_in_bytes();
    if spec.dtype == DType::Bool {
        let vals: Vec<&str> = bytes
            .iter()
            .map(|&b| if b != 0 { "true" } else { "false" })
            .collect();
        if vals.len() == 1 {
            return format!("dense<{}>", vals[0]);
        }
        return format!("dense<{}>", nested(&vals, &spec.dims));
    }
    if bytes.len() == size || spec.element_count() == 0 {
        // One element: a splat. Zero elements: an empty literal.
        if spec.element_count() == 0 {
            return "dense<>".to_string();
        }
    }
    let mut hex = String::with_capacity(bytes.len() * 2 + 4);
    hex.push_str("\"0x");
    for b in bytes {
        let _ = write!(hex, "{b:02X}");
    }
    hex.push('"');
    format!("dense<{hex}>")
}

/// Nests a flat list of literals by `dims` (`[[a, b], [c, d]]`).
fn nested(vals: &[&str], dims: &[usize]) -> String {
    match dims.split_first() {
        None => vals.first().copied().unwrap_or("false").to_string(),
        Some((&n, rest)) => {
            let chunk = rest.iter().product::<usize>().max(1);
            let parts: Vec<String> = (0..n)
                .map(|i| nested(&vals[i * chunk..(i + 1) * chunk], rest))
                .collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

fn conv_dims(c: &ConvAttrs, out_rank: usize) -> String {
    let d = &c.dims;
    let layout = |rank: usize, batch: (usize, &str), feature: (usize, &str), spatial: &[usize]| {
        let mut v = vec![String::new(); rank];
        v[batch.0] = batch.1.to_string();
        v[feature.0] = feature.1.to_string();
        for (i, &s) in spatial.iter().enumerate() {
            v[s] = i.to_string();
        }
        format!("[{}]", v.join(", "))
    };
    let rank = d.input_spatial.len() + 2;
    format!(
        "#stablehlo.conv<{}x{}->{}>",
        layout(
            rank,
            (d.input_batch, "b"),
            (d.input_feature, "f"),
            &d.input_spatial
        ),
        layout(
            rank,
            (d.kernel_input_feature, "i"),
            (d.kernel_output_feature, "o"),
            &d.kernel_spatial
        ),
        layout(
            out_rank,
            (d.output_batch, "b"),
            (d.output_feature, "f"),
            &d.output_spatial
        ),
    )
}

/// The attribute dictionary of a node (without braces), or empty.
fn attributes(g: &Graph, node: NodeId) -> String {
    let n = &g.nodes[node];
    match &n.op {
        Op::Constant { bytes } => format!("value = {} : {}", dense_literal(bytes, &n.outputs[0]), n.outputs[0].mlir_type()),
        Op::Iota { dim } => format!("iota_dimension = {dim} : i64"),
        Op::Compare(dir) => {
            let ty = match g.spec(n.operands[0]).dtype {
                d if d.is_float() => "FLOAT",
                d if d.is_unsigned_int() || d == DType::Bool => "UNSIGNED",
                _ => "SIGNED",
            };
            format!(
                "comparison_direction = #stablehlo<comparison_direction {}>, compare_type = #stablehlo<comparison_type {ty}>",
                dir.mlir_name()
            )
        }
        Op::BroadcastInDim { dims } => format!("broadcast_dimensions = {}", usize_array(dims)),
        Op::Transpose { perm } => format!("permutation = {}", usize_array(perm)),
        Op::Slice { start, limit, strides } => format!(
            "start_indices = {}, limit_indices = {}, strides = {}",
            usize_array(start),
            usize_array(limit),
            usize_array(strides)
        ),
        Op::DynamicSlice { sizes } => format!("slice_sizes = {}", usize_array(sizes)),
        Op::Concatenate { dim } => format!("dimension = {dim} : i64"),
        Op::Pad { low, high, interior } => format!(
            "edge_padding_low = {}, edge_padding_high = {}, interior_padding = {}",
            i64_array(low.iter().copied()),
            i64_array(high.iter().copied()),
            usize_array(interior)
        ),
        Op::Reverse { dims } => format!("dimensions = {}", usize_array(dims)),
        Op::DotGeneral(d) => {
            let mut fields = Vec::new();
            for (name, v) in [
                ("lhs_batching_dimensions", &d.lhs_batch),
                ("rhs_batching_dimensions", &d.rhs_batch),
                ("lhs_contracting_dimensions", &d.lhs_contract),
                ("rhs_contracting_dimensions", &d.rhs_contract),
            ] {
                if !v.is_empty() {
                    fields.push(format!("{name} = {}", list(v)));
                }
            }
            format!("dot_dimension_numbers = #stablehlo.dot<{}>", fields.join(", "))
        }
        Op::Convolution(c) => format!(
            "batch_group_count = {} : i64, dimension_numbers = {}, feature_group_count = {} : i64, lhs_dilation = {}, padding = {}, rhs_dilation = {}, window_strides = {}",
            c.batch_group_count,
            conv_dims(c, n.outputs[0].rank()),
            c.feature_group_count,
            usize_array(&c.lhs_dilation),
            padding_attr(&c.padding),
            usize_array(&c.rhs_dilation),
            usize_array(&c.strides)
        ),
        Op::Reduce { dims, .. } => format!("dimensions = {}", usize_array(dims)),
        Op::ReduceWindow { window: w, .. } => format!(
            "base_dilations = {}, padding = {}, window_dilations = {}, window_dimensions = {}, window_strides = {}",
            usize_array(&w.base_dilation),
            padding_attr(&w.padding),
            usize_array(&w.window_dilation),
            usize_array(&w.dims),
            usize_array(&w.strides)
        ),
        Op::Gather { dims, slice_sizes } => format!(
            "dimension_numbers = #stablehlo.gather<offset_dims = {}, collapsed_slice_dims = {}, start_index_map = {}, index_vector_dim = {}>, indices_are_sorted = false, slice_sizes = {}",
            list(&dims.offset_dims),
            list(&dims.collapsed_slice_dims),
            list(&dims.start_index_map),
            dims.index_vector_dim,
            usize_array(slice_sizes)
        ),
        Op::Scatter { dims, .. } => format!(
            "indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = {}, inserted_window_dims = {}, scatter_dims_to_operand_dims = {}, index_vector_dim = {}>, unique_indices = false",
            list(&dims.update_window_dims),
            list(&dims.inserted_window_dims),
            list(&dims.scatter_dims_to_operand_dims),
            dims.index_vector_dim
        ),
        Op::Sort { dim, stable, .. } => format!("dimension = {dim} : i64, is_stable = {stable}"),
        Op::TopK { k } => format!("k = {k} : i64"),
        Op::ManualComputation { attrs, .. } => manual_attrs_of(g, node, attrs),
        Op::AllReduce { over, .. } => format!(
            "{}, replica_groups = {}, use_global_device_ids",
            channel(node),
            replica_groups(over)
        ),
        Op::AllGather { over, dim } => format!(
            "all_gather_dim = {dim} : i64, {}, replica_groups = {}, use_global_device_ids",
            channel(node),
            replica_groups(over)
        ),
        Op::ReduceScatter { over, dim, .. } => format!(
            "{}, replica_groups = {}, scatter_dimension = {dim} : i64, use_global_device_ids",
            channel(node),
            replica_groups(over)
        ),
        Op::AllToAll {
            over,
            split_dim,
            concat_dim,
        } => format!(
            "{}, concat_dimension = {concat_dim} : i64, replica_groups = {}, split_count = {} : i64, split_dimension = {split_dim} : i64",
            channel(node),
            replica_groups(over),
            over.size()
        ),
        Op::CollectivePermute { over, perm } => {
            let pairs = over.pairs(perm);
            let rows: Vec<String> = pairs.iter().map(|(s, t)| format!("[{s}, {t}]")).collect();
            format!(
                "{}, source_target_pairs = dense<[{}]> : tensor<{}x2xi64>",
                channel(node),
                rows.join(", "),
                pairs.len()
            )
        }
        Op::ShardingConstraint { mesh, spec } => format!(
            "sharding = #sdy.sharding{}",
            sdy_sharding(&mesh_symbol(g, mesh), mesh, spec, n.outputs[0].rank())
        ),
        Op::CustomCall { target, attrs } => {
            let config: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v} : i64")).collect();
            format!(
                "api_version = 4 : i32, backend_config = {{{}}}, call_target_name = \"{target}\"",
                config.join(", ")
            )
        }
        Op::PartitionId
        | Op::Parameter { .. }
        | Op::RegionArgs
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Select
        | Op::Clamp
        | Op::Convert
        | Op::BitcastConvert
        | Op::OptimizationBarrier
        | Op::Reshape
        | Op::DynamicUpdateSlice
        | Op::While { .. }
        | Op::Case { .. }
        | Op::StopGradient
        | Op::GradientOf => String::new(),
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Parameter { .. } | Op::RegionArgs | Op::StopGradient | Op::GradientOf => "",
        Op::Constant { .. } => "stablehlo.constant",
        Op::Iota { .. } => "stablehlo.iota",
        Op::Unary(u) => u.mlir_name(),
        Op::Binary(b) => b.mlir_name(),
        Op::Compare(_) => "stablehlo.compare",
        Op::Select => "stablehlo.select",
        Op::Clamp => "stablehlo.clamp",
        Op::Convert => "stablehlo.convert",
        Op::BitcastConvert => "stablehlo.bitcast_convert",
        Op::OptimizationBarrier => "stablehlo.optimization_barrier",
        Op::ShardingConstraint { .. } => "sdy.sharding_constraint",
        Op::BroadcastInDim { .. } => "stablehlo.broadcast_in_dim",
        Op::Reshape => "stablehlo.reshape",
        Op::Transpose { .. } => "stablehlo.transpose",
        Op::Slice { .. } => "stablehlo.slice",
        Op::DynamicSlice { .. } => "stablehlo.dynamic_slice",
        Op::DynamicUpdateSlice => "stablehlo.dynamic_update_slice",
        Op::Concatenate { .. } => "stablehlo.concatenate",
        Op::Pad { .. } => "stablehlo.pad",
        Op::Reverse { .. } => "stablehlo.reverse",
        Op::DotGeneral(_) => "stablehlo.dot_general",
        Op::Convolution(_) => "stablehlo.convolution",
        Op::Reduce { .. } => "stablehlo.reduce",
        Op::ReduceWindow { .. } => "stablehlo.reduce_window",
        Op::Gather { .. } => "stablehlo.gather",
        Op::Scatter { .. } => "stablehlo.scatter",
        Op::Sort { .. } => "stablehlo.sort",
        Op::TopK { .. } => "chlo.top_k",
        Op::While { .. } => "stablehlo.while",
        Op::Case { .. } => "stablehlo.case",
        Op::ManualComputation { .. } => "sdy.manual_computation",
        Op::AllReduce { .. } => "stablehlo.all_reduce",
        Op::AllGather { .. } => "stablehlo.all_gather",
        Op::ReduceScatter { .. } => "stablehlo.reduce_scatter",
        Op::AllToAll { .. } => "stablehlo.all_to_all",
        Op::CollectivePermute { .. } => "stablehlo.collective_permute",
        Op::PartitionId => "stablehlo.partition_id",
        Op::CustomCall { .. } => "stablehlo.custom_call",
    }
}

/// `channel_handle`: one per collective (the node's index + 1), device to
/// device (type 1), as JAX writes it.
fn channel(node: NodeId) -> String {
    format!(
        "channel_handle = #stablehlo.channel_handle<handle = {}, type = 1>",
        node + 1
    )
}

/// `replica_groups` as a dense `groups x members` i64 tensor.
fn replica_groups(over: &CollectiveAxes) -> String {
    let groups = over.groups();
    let rows: Vec<String> = groups.iter().map(|g| list(g)).collect();
    format!(
        "dense<[{}]> : tensor<{}x{}xi64>",
        rows.join(", "),
        groups.len(),
        groups.first().map_or(0, Vec::len)
    )
}

/// The symbol of `mesh` among the module's `sdy.mesh` declarations.
fn mesh_symbol(g: &Graph, mesh: &MeshAxes) -> String {
    let i = meshes(g).iter().position(|m| m == mesh).unwrap_or(0);
    if i == 0 {
        "mesh".to_string()
    } else {
        format!("mesh_{i}")
    }
}

/// The distinct meshes of the program: that of its input and output
/// shardings first, then those of its manual regions and sharding
/// constraints, in order of first use.
fn meshes(g: &Graph) -> Vec<MeshAxes> {
    let mut out: Vec<MeshAxes> = Vec::new();
    if let Some(io) = &g.shardings {
        out.push(io.mesh.clone());
    }
    for n in &g.nodes {
        let mesh = match &n.op {
            Op::ManualComputation { attrs, .. } => &attrs.mesh,
            Op::ShardingConstraint { mesh, .. } => mesh,
            _ => continue,
        };
        if !out.contains(mesh) {
            out.push(mesh.clone());
        }
    }
    out
}

/// ` {sdy.sharding = ...}` for a parameter or result of `@main` with a
/// sharding, `extra` (other attributes) kept.
fn io_attributes(g: &Graph, spec: Option<&DimAxes>, rank: usize, extra: &[&str]) -> String {
    let mut attrs: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    if let (Some(io), Some(spec)) = (&g.shardings, spec) {
        let symbol = mesh_symbol(g, &io.mesh);
        attrs.push(format!(
            "sdy.sharding = #sdy.sharding{}",
            sdy_sharding(&symbol, &io.mesh, spec, rank)
        ));
    }
    if attrs.is_empty() {
        String::new()
    } else {
        format!(" {{{}}}", attrs.join(", "))
    }
}

/// `<["a"=2, "b"=2]>`.
fn mesh_literal(mesh: &MeshAxes) -> String {
    let axes: Vec<String> = mesh
        .names()
        .iter()
        .zip(mesh.sizes())
        .map(|(n, s)| format!("\"{n}\"={s}"))
        .collect();
    format!("<[{}]>", axes.join(", "))
}

/// One value's Shardy sharding: `<@mesh, [{"a"}, {}]>`.
fn sdy_sharding(symbol: &str, mesh: &MeshAxes, spec: &DimAxes, rank: usize) -> String {
    let dims: Vec<String> = (0..rank)
        .map(|d| {
            let axes: Vec<String> = spec
                .get(d)
                .map(|axes| {
                    axes.iter()
                        .map(|&a| format!("\"{}\"", mesh.names()[a]))
                        .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", axes.join(", "))
        })
        .collect();
    format!("<@{symbol}, [{}]>", dims.join(", "))
}

/// The attributes of an `sdy.manual_computation` over all the mesh's axes.
fn manual_attrs_of(g: &Graph, node: NodeId, attrs: &ManualAttrs) -> String {
    let n = &g.nodes[node];
    let symbol = mesh_symbol(g, &attrs.mesh);
    let per_value = |specs: &[DimAxes], ranks: &[usize]| -> String {
        let items: Vec<String> = specs
            .iter()
            .zip(ranks)
            .map(|(s, &r)| sdy_sharding(&symbol, &attrs.mesh, s, r))
            .collect();
        format!("#sdy.sharding_per_value<[{}]>", items.join(", "))
    };
    let in_ranks: Vec<usize> = n.operands.iter().map(|&v| g.spec(v).rank()).collect();
    let out_ranks: Vec<usize> = n.outputs.iter().map(ArraySpec::rank).collect();
    let axes: Vec<String> = attrs
        .mesh
        .names()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "in_shardings = {}, manual_axes = #sdy<manual_axes{{{}}}>, out_shardings = {}",
        per_value(&attrs.in_specs, &in_ranks),
        axes.join(", "),
        per_value(&attrs.out_specs, &out_ranks)
    )
}

struct Emitter<'g> {
    g: &'g Graph,
    out: String,
}

impl Emitter<'_> {
    fn node(&mut self, node: NodeId, indent: usize) {
        let g = self.g;
        let n = &g.nodes[node];
        // Parameters, region arguments and stop_gradient emit no op
        // (`op_name` decides, over every variant).
        if op_name(&n.op).is_empty() {
            return;
        }
        let pad = " ".repeat(indent);
        let results = if n.outputs.len() == 1 {
            format!("%v{node}")
        } else {
            format!("%v{node}:{}", n.outputs.len())
        };
        let operands: Vec<String> = n.operands.iter().map(|&v| vref(g, v)).collect();
        let operand_types: Vec<ArraySpec> = n.operands.iter().map(|&v| g.spec(v).clone()).collect();
        let _ = write!(
            self.out,
            "{pad}{results} = \"{}\"({})",
            op_name(&n.op),
            operands.join(", ")
        );
        let regions = n.op.regions();
        if !regions.is_empty() {
            self.out.push_str(" (");
            for (i, r) in regions.iter().enumerate() {
                if i > 0 {
                    self.out.push_str(", ");
                }
                self.region(*r, indent + 2);
                let _ = write!(self.out, "{pad}}}");
            }
            self.out.push(')');
        }
        let attrs = attributes(g, node);
        if !attrs.is_empty() {
            let _ = write!(self.out, " {{{attrs}}}");
        }
        let _ = writeln!(
            self.out,
            " : ({}) -> {}",
            types(&operand_types),
            result_types(&n.outputs)
        );
    }

    /// Writes `{ ^bb0(args): body... return` (the closing brace is the caller's).
    fn region(&mut self, r: RegionId, indent: usize) {
        let g = self.g;
        let region = &g.regions[r.0];
        let args = &g.nodes[region.args_node];
        let params: Vec<String> = args
            .outputs
            .iter()
            .enumerate()
            .map(|(i, s)| format!("%v{}_{i}: {}", region.args_node, s.mlir_type()))
            .collect();
        let pad = " ".repeat(indent);
        let _ = writeln!(self.out, "{{\n{pad}^bb0({}):", params.join(", "));
        for &n in &region.nodes {
            self.node(n, indent + 2);
        }
        let results: Vec<String> = region.results.iter().map(|&v| vref(g, v)).collect();
        let result_specs: Vec<ArraySpec> =
            region.results.iter().map(|&v| g.spec(v).clone()).collect();
        let terminator = if region.manual.is_some() {
            "sdy.return"
        } else {
            "stablehlo.return"
        };
        let _ = writeln!(
            self.out,
            "{pad}  \"{terminator}\"({}) : ({}) -> ()",
            results.join(", "),
            types(&result_specs)
        );
    }
}

/// Emits the whole module: `@main` takes the graph's parameters (donors
/// marked `jax.buffer_donor`) and returns `outputs`.
pub fn emit_module(g: &Graph, name: &str, outputs: &[ValueId], donors: &[bool]) -> String {
    let mut e = Emitter {
        g,
        out: String::new(),
    };
    let params: Vec<String> = g
        .params
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let donor: &[&str] = if donors.get(i).copied().unwrap_or(false) {
                &["jax.buffer_donor = true"]
            } else {
                &[]
            };
            let spec = &g.nodes[p].outputs[0];
            let sharding = g.shardings.as_ref().and_then(|io| io.inputs.get(i));
            let attrs = io_attributes(g, sharding, spec.rank(), donor);
            format!("%v{p}: {}{attrs}", spec.mlir_type())
        })
        .collect();
    let out_specs: Vec<ArraySpec> = outputs.iter().map(|&v| g.spec(v).clone()).collect();
    let result_decls: Vec<String> = out_specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let sharding = g.shardings.as_ref().and_then(|io| io.outputs.get(i));
            format!(
                "{}{}",
                spec.mlir_type(),
                io_attributes(g, sharding, spec.rank(), &[])
            )
        })
        .collect();
    let meshes = meshes(g);
    let partitions = meshes.first().map_or(1, MeshAxes::device_count);
    let _ = writeln!(
        e.out,
        "module @{name} attributes {{mhlo.num_partitions = {partitions} : i32, mhlo.num_replicas = 1 : i32}} {{"
    );
    for (i, mesh) in meshes.iter().enumerate() {
        let symbol = mesh_symbol(g, mesh);
        debug_assert!(i > 0 || symbol == "mesh");
        let _ = writeln!(e.out, "  sdy.mesh @{symbol} = {}", mesh_literal(mesh));
    }
    let _ = writeln!(
        e.out,
        "  func.func public @main({}) -> ({}) {{",
        params.join(", "),
        result_decls.join(", ")
    );
    for &n in &g.main_nodes {
        e.node(n, 4);
    }
    let refs: Vec<String> = outputs.iter().map(|&v| vref(g, v)).collect();
    if refs.is_empty() {
        e.out.push_str("    return\n");
    } else {
        let _ = writeln!(
            e.out,
            "    return {} : {}",
            refs.join(", "),
            types(&out_specs)
        );
    }
    e.out.push_str("  }\n}\n");
    e.out
}
