//! xlayer's own count of an optimized HLO module's flops, transcendentals
//! and bytes accessed, for plugins whose `PJRT_Executable_GetCostAnalysis`
//! answers `Unimplemented` (the `cpu-zml` and `cpu-lammps` builds).
//!
//! The rules follow the published definitions of XLA's `HloCostAnalysis`:
//! - an elementwise op costs one flop per output element, or one
//!   transcendental for exp, log, tanh, power, sqrt, rsqrt, sin, cos, ...;
//! - a dot costs 2 flops per output element per contracted element (one
//!   multiply-add);
//! - a convolution costs 2 flops per multiply-add actually done: for each
//!   spatial dimension only the (output, kernel) position pairs that land
//!   inside the input (not in its padding or between dilated elements)
//!   count;
//! - a reduce applies its reducer (input elements − output elements)
//!   times, a reduce-window (window elements − 1) times per output element;
//! - a fusion, call, while body or conditional branch costs what its
//!   instructions cost (a while body counts once: the trip count is not
//!   known here; a conditional counts its costliest branch);
//! - copies, reshapes, slices, broadcasts, transposes, custom calls and
//!   data movement cost no flops.
//!
//! Bytes accessed are counted per top-level instruction (a fusion is one):
//! its operands and its result, once each; parameters, tuples,
//! `get-tuple-element` and bitcasts move nothing. XLA refines this per
//! fusion operand (a fused slice reads less), so the byte count can be
//! higher than the compiler's own.

use std::collections::HashMap;

use super::hlo_proto::{
    primitive_bits, HloComputationProto, HloInstructionProto, HloModuleProto, ShapeProto,
};

/// What one computation (or instruction) costs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counts {
    pub flops: f64,
    pub transcendentals: f64,
    pub bytes_accessed: f64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.flops += other.flops;
        self.transcendentals += other.transcendentals;
        self.bytes_accessed += other.bytes_accessed;
    }
}

/// Nested computations deeper than this are not followed (a malformed
/// module could name itself).
const MAX_DEPTH: usize = 64;

/// The entry computation's cost, or `None` when the module names no entry
/// computation it holds.
pub(crate) fn count_module(module: &HloModuleProto) -> Option<Counts> {
    let computations: HashMap<i64, &HloComputationProto> =
        module.computations.iter().map(|c| (c.id, c)).collect();
    let entry = *computations.get(&module.entry_computation_id)?;
    let mut counter = Counter {
        computations,
        memo: HashMap::new(),
    };
    Some(counter.computation(entry, true, 0))
}

struct Counter<'a> {
    computations: HashMap<i64, &'a HloComputationProto>,
    /// (computation id, whether bytes count) → its cost.
    memo: HashMap<(i64, bool), Counts>,
}

impl<'a> Counter<'a> {
    /// The cost of `c`; its instructions' bytes count when `top_level`
    /// (not inside a fusion).
    fn computation(&mut self, c: &'a HloComputationProto, top_level: bool, depth: usize) -> Counts {
        if let Some(done) = self.memo.get(&(c.id, top_level)) {
            return *done;
        }
        let shapes: HashMap<i64, &ShapeProto> = c
            .instructions
            .iter()
            .filter_map(|i| Some((i.id, i.shape.as_ref()?)))
            .collect();
        let mut total = Counts::default();
        for inst in &c.instructions {
            total.add(self.instruction(inst, &shapes, top_level, depth));
        }
        self.memo.insert((c.id, top_level), total);
        total
    }

    /// The flops of the computation called `id` (0 when it is unknown or
    /// nested too deep).
    fn called(&mut self, id: i64, top_level: bool, depth: usize) -> Counts {
        if depth >= MAX_DEPTH {
            return Counts::default();
        }
        match self.computations.get(&id).copied() {
            Some(c) => self.computation(c, top_level, depth + 1),
            None => Counts::default(),
        }
    }

    fn instruction(
        &mut self,
        inst: &HloInstructionProto,
        shapes: &HashMap<i64, &ShapeProto>,
        top_level: bool,
        depth: usize,
    ) -> Counts {
        let out = inst.shape.as_ref();
        let out_elements = out.map_or(0.0, first_array_elements);
        let operand = |k: usize| {
            inst.operand_ids
                .get(k)
                .and_then(|id| shapes.get(id).copied())
        };
        let mut cost = Counts::default();
        let op = inst.opcode.as_str();
        if is_transcendental(op) {
            cost.transcendentals = out_elements;
        } else if is_elementwise_flop(op) {
            cost.flops = out_elements;
        } else {
            match op {
                "dot" => cost.flops = dot_flops(inst, operand(0), out_elements),
                "convolution" => cost.flops = convolution_flops(inst, operand(0), operand(1), out),
                "reduce" => {
                    let reducer = self.first_called(inst, depth).flops;
                    let input = operand(0).map_or(0.0, first_array_elements);
                    cost.flops = (input - out_elements).max(0.0) * reducer;
                }
                "reduce-window" => {
                    let reducer = self.first_called(inst, depth).flops;
                    let window: f64 = inst.window.as_ref().map_or(1.0, |w| {
                        w.dimensions.iter().map(|d| d.size.max(1) as f64).product()
                    });
                    cost.flops = (window - 1.0) * out_elements * reducer;
                }
                "map" => cost.flops = self.first_called(inst, depth).flops * out_elements,
                "scatter" => {
                    let updates = inst
                        .operand_ids
                        .last()
                        .and_then(|id| shapes.get(id))
                        .map_or(0.0, |s| first_array_elements(s));
                    cost.flops = self.first_called(inst, depth).flops * updates;
                }
                "sort" => {
                    let n = operand(0).map_or(0.0, first_array_elements);
                    cost.flops = if n > 1.0 { n * n.log2().ceil() } else { 0.0 };
                }
                "fusion" => {
                    let inner = self.first_called(inst, depth);
                    cost.flops = inner.flops;
                    cost.transcendentals = inner.transcendentals;
                }
                "conditional" => {
                    let mut costliest = Counts::default();
                    for &id in &inst.called_computation_ids {
                        let branch = self.called(id, top_level, depth);
                        if branch.flops + branch.transcendentals
                            > costliest.flops + costliest.transcendentals
                        {
                            costliest = branch;
                        }
                    }
                    return costliest;
                }
                "call" | "while" | "async-start" => {
                    let mut inner = Counts::default();
                    for &id in &inst.called_computation_ids {
                        inner.add(self.called(id, top_level, depth));
                    }
                    return inner;
                }
                _ => {}
            }
        }
        if top_level && moves_bytes(op) {
            let operands: f64 = inst
                .operand_ids
                .iter()
                .filter_map(|id| shapes.get(id))
                .map(|s| shape_bytes(s))
                .sum();
            cost.bytes_accessed = operands + out.map_or(0.0, shape_bytes);
        }
        cost
    }

    /// The cost of an instruction's first called computation (its reducer,
    /// mapped function or fused body), counted without bytes.
    fn first_called(&mut self, inst: &HloInstructionProto, depth: usize) -> Counts {
        inst.called_computation_ids
            .first()
            .map_or(Counts::default(), |&id| self.called(id, false, depth))
    }
}

fn is_transcendental(op: &str) -> bool {
    matches!(
        op,
        "exponential"
            | "exponential-minus-one"
            | "log"
            | "log-plus-one"
            | "logistic"
            | "power"
            | "sqrt"
            | "cbrt"
            | "rsqrt"
            | "tanh"
            | "sine"
            | "cosine"
            | "tan"
            | "atan2"
            | "erf"
    )
}

fn is_elementwise_flop(op: &str) -> bool {
    matches!(
        op,
        "add"
            | "subtract"
            | "multiply"
            | "divide"
            | "maximum"
            | "minimum"
            | "remainder"
            | "and"
            | "or"
            | "xor"
            | "not"
            | "negate"
            | "abs"
            | "sign"
            | "floor"
            | "ceil"
            | "round-nearest-afz"
            | "round-nearest-even"
            | "compare"
            | "clamp"
            | "convert"
            | "shift-left"
            | "shift-right-arithmetic"
            | "shift-right-logical"
            | "popcnt"
            | "count-leading-zeros"
            | "is-finite"
            | "real"
            | "imag"
            | "complex"
            | "reduce-precision"
    )
}

/// Whether a top-level instruction of this kind reads or writes memory.
fn moves_bytes(op: &str) -> bool {
    !matches!(
        op,
        "parameter" | "tuple" | "get-tuple-element" | "bitcast" | "constant" | "after-all"
    )
}

/// 2 flops per output element per contracted element.
fn dot_flops(inst: &HloInstructionProto, lhs: Option<&ShapeProto>, out_elements: f64) -> f64 {
    let (Some(dnums), Some(lhs)) = (inst.dot_dimension_numbers.as_ref(), lhs) else {
        return 0.0;
    };
    let contracted: f64 = dnums
        .lhs_contracting_dimensions
        .iter()
        .map(|&d| dim(lhs, d))
        .product();
    2.0 * out_elements * contracted
}

/// 2 flops per multiply-add a convolution does, counting only the kernel
/// taps that land on input elements.
fn convolution_flops(
    inst: &HloInstructionProto,
    lhs: Option<&ShapeProto>,
    rhs: Option<&ShapeProto>,
    out: Option<&ShapeProto>,
) -> f64 {
    let (Some(dn), Some(lhs), Some(rhs), Some(out)) =
        (inst.convolution_dimension_numbers.as_ref(), lhs, rhs, out)
    else {
        return 0.0;
    };
    let feature_groups = inst.feature_group_count.max(1) as f64;
    let batch_groups = inst.batch_group_count.max(1) as f64;
    let input_features = dim(lhs, dn.input_feature_dimension) / feature_groups;
    let output_features = dim(out, dn.output_feature_dimension);
    let batch = dim(out, dn.output_batch_dimension);
    let mut fmas = input_features * output_features * batch;
    let window = inst
        .window
        .as_ref()
        .map(|w| w.dimensions.as_slice())
        .unwrap_or(&[]);
    for (k, &spatial) in dn.input_spatial_dimensions.iter().enumerate() {
        let input = dim(lhs, spatial) as i64;
        let kernel = dn
            .kernel_spatial_dimensions
            .get(k)
            .map_or(1, |&d| dim(rhs, d) as i64);
        let output = dn
            .output_spatial_dimensions
            .get(k)
            .map_or(1, |&d| dim(out, d) as i64);
        let w = window.get(k);
        let stride = w.map_or(1, |w| w.stride.max(1));
        let pad_low = w.map_or(0, |w| w.padding_low);
        let dilation = w.map_or(1, |w| w.window_dilation.max(1));
        let base = w.map_or(1, |w| w.base_dilation.max(1));
        fmas *= valid_positions(input, kernel, output, stride, pad_low, dilation, base) as f64;
    }
    2.0 * fmas / batch_groups
}

/// The (output, kernel) position pairs of one spatial dimension whose input
/// position is a real input element.
fn valid_positions(
    input: i64,
    kernel: i64,
    output: i64,
    stride: i64,
    pad_low: i64,
    dilation: i64,
    base: i64,
) -> u64 {
    let dilated_extent = (input - 1).max(0) * base + 1;
    let mut valid = 0u64;
    for k in 0..kernel {
        for o in 0..output {
            let p = o * stride + k * dilation - pad_low;
            if input > 0 && p >= 0 && p < dilated_extent && p % base == 0 {
                valid += 1;
            }
        }
    }
    valid
}

/// Size of dimension `d` of an array shape (0 when out of range).
fn dim(shape: &ShapeProto, d: i64) -> f64 {
    usize::try_from(d)
        .ok()
        .and_then(|d| shape.dimensions.get(d))
        .map_or(0.0, |&n| n as f64)
}

/// Elements of an array shape, or of a tuple's first array (a variadic
/// reduce's first result).
fn first_array_elements(shape: &ShapeProto) -> f64 {
    match shape.tuple_shapes.first() {
        Some(first) if shape.element_type == 13 => first_array_elements(first),
        _ => shape.dimensions.iter().map(|&d| d.max(0) as f64).product(),
    }
}

/// Bytes of a shape: an array's elements at their width, a tuple's leaves.
fn shape_bytes(shape: &ShapeProto) -> f64 {
    if shape.element_type == 13 {
        return shape.tuple_shapes.iter().map(shape_bytes).sum();
    }
    let elements: f64 = shape.dimensions.iter().map(|&d| d.max(0) as f64).product();
    elements * f64::from(primitive_bits(shape.element_type)) / 8.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_taps_exclude_the_padding() {
        // 5 inputs, kernel 3, stride 1, padding 1 each side: 5 outputs;
        // 3·5 pairs less the 2 that land in the padding.
        assert_eq!(valid_positions(5, 3, 5, 1, 1, 1, 1), 13);
        // valid padding: every pair lands inside.
        assert_eq!(valid_positions(5, 3, 3, 1, 0, 1, 1), 9);
        // stride 2 over 5 inputs, kernel 2, no padding: outputs 0, 1; taps at 0,1 and 2,3.
        assert_eq!(valid_positions(5, 2, 2, 2, 0, 1, 1), 4);
        // an input dilated by 2 (a transposed convolution): only even positions are real.
        assert_eq!(valid_positions(2, 2, 2, 1, 0, 1, 2), 2);
    }

    #[test]
    fn tuple_bytes_are_their_leaves() {
        let f32s = |dims: &[i64]| ShapeProto {
            element_type: 11,
            dimensions: dims.to_vec(),
            tuple_shapes: vec![],
        };
        let t = ShapeProto {
            element_type: 13,
            dimensions: vec![],
            tuple_shapes: vec![f32s(&[2, 3]), f32s(&[4])],
        };
        assert_eq!(shape_bytes(&t), 40.0);
        assert_eq!(first_array_elements(&t), 6.0);
    }
}
