//! The closed set of ops a graph can hold.
//!
//! Every pass over the graph (shape inference happens at construction,
//! emission in `emit.rs`, reverse-mode differentiation later) matches on
//! [`Op`] exhaustively, so adding an op is one variant, one shape rule, one
//! emit arm and one test.

use super::collectives::{CollectiveAxes, MeshAxes};
use super::graph::RegionId;
use super::shard_map::{DimAxes, ManualAttrs};

/// Elementwise functions of one operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|`
    Abs,
    /// sign of x (-1, 0, 1; NaN for NaN)
    Sign,
    /// e^x
    Exp,
    /// e^x - 1
    Expm1,
    /// natural log
    Log,
    /// log(1 + x)
    Log1p,
    /// square root
    Sqrt,
    /// 1 / sqrt(x)
    Rsqrt,
    /// cube root
    Cbrt,
    /// hyperbolic tangent
    Tanh,
    /// 1 / (1 + e^-x)
    Logistic,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// tangent
    Tan,
    /// round toward -inf
    Floor,
    /// round toward +inf
    Ceil,
    /// round half away from zero (`jnp.round` is half to even: [`UnaryOp::RoundNearestEven`])
    RoundNearestAfz,
    /// round half to even
    RoundNearestEven,
    /// finite (not inf, not NaN) → bool
    IsFinite,
    /// logical or bitwise not
    Not,
    /// error function (CHLO)
    Erf,
    /// inverse error function (CHLO)
    ErfInv,
    /// complementary error function 1 - erf(x) (CHLO)
    Erfc,
    /// count of set bits
    PopCount,
}

impl UnaryOp {
    /// The op name as emitted (`stablehlo.exponential`, `chlo.erf`).
    pub fn mlir_name(self) -> &'static str {
        use UnaryOp::*;
        match self {
            Neg => "stablehlo.negate",
            Abs => "stablehlo.abs",
            Sign => "stablehlo.sign",
            Exp => "stablehlo.exponential",
            Expm1 => "stablehlo.exponential_minus_one",
            Log => "stablehlo.log",
            Log1p => "stablehlo.log_plus_one",
            Sqrt => "stablehlo.sqrt",
            Rsqrt => "stablehlo.rsqrt",
            Cbrt => "stablehlo.cbrt",
            Tanh => "stablehlo.tanh",
            Logistic => "stablehlo.logistic",
            Sin => "stablehlo.sine",
            Cos => "stablehlo.cosine",
            Tan => "stablehlo.tan",
            Floor => "stablehlo.floor",
            Ceil => "stablehlo.ceil",
            RoundNearestAfz => "stablehlo.round_nearest_afz",
            RoundNearestEven => "stablehlo.round_nearest_even",
            IsFinite => "stablehlo.is_finite",
            Not => "stablehlo.not",
            Erf => "chlo.erf",
            ErfInv => "chlo.erf_inv",
            Erfc => "chlo.erfc",
            PopCount => "stablehlo.popcnt",
        }
    }

    /// The name used in error messages (`exp`, `erf_inv`).
    pub fn name(self) -> &'static str {
        use UnaryOp::*;
        match self {
            Neg => "neg",
            Abs => "abs",
            Sign => "sign",
            Exp => "exp",
            Expm1 => "expm1",
            Log => "log",
            Log1p => "log1p",
            Sqrt => "sqrt",
            Rsqrt => "rsqrt",
            Cbrt => "cbrt",
            Tanh => "tanh",
            Logistic => "logistic",
            Sin => "sin",
            Cos => "cos",
            Tan => "tan",
            Floor => "floor",
            Ceil => "ceil",
            RoundNearestAfz => "round",
            RoundNearestEven => "round_nearest_even",
            IsFinite => "is_finite",
            Not => "not",
            Erf => "erf",
            ErfInv => "erf_inv",
            Erfc => "erfc",
            PopCount => "population_count",
        }
    }
}

/// Elementwise functions of two operands of the same shape and dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b (integer division truncates toward zero)
    Div,
    /// remainder with the sign of a (C fmod)
    Rem,
    /// a ^ b
    Pow,
    /// elementwise maximum (NaN-propagating for floats)
    Max,
    /// elementwise minimum (NaN-propagating for floats)
    Min,
    /// atan2(a, b)
    Atan2,
    /// logical/bitwise and
    And,
    /// logical/bitwise or
    Or,
    /// logical/bitwise xor
    Xor,
    /// a << b
    ShiftLeft,
    /// a >> b, arithmetic (sign-extending)
    ShiftRightArithmetic,
    /// a >> b, logical (zero-filling)
    ShiftRightLogical,
}

impl BinaryOp {
    /// The op name as emitted.
    pub fn mlir_name(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "stablehlo.add",
            Sub => "stablehlo.subtract",
            Mul => "stablehlo.multiply",
            Div => "stablehlo.divide",
            Rem => "stablehlo.remainder",
            Pow => "stablehlo.power",
            Max => "stablehlo.maximum",
            Min => "stablehlo.minimum",
            Atan2 => "stablehlo.atan2",
            And => "stablehlo.and",
            Or => "stablehlo.or",
            Xor => "stablehlo.xor",
            ShiftLeft => "stablehlo.shift_left",
            ShiftRightArithmetic => "stablehlo.shift_right_arithmetic",
            ShiftRightLogical => "stablehlo.shift_right_logical",
        }
    }

    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "add",
            Sub => "sub",
            Mul => "mul",
            Div => "div",
            Rem => "rem",
            Pow => "pow",
            Max => "max",
            Min => "min",
            Atan2 => "atan2",
            And => "and",
            Or => "or",
            Xor => "xor",
            ShiftLeft => "shift_left",
            ShiftRightArithmetic => "shift_right_arithmetic",
            ShiftRightLogical => "shift_right_logical",
        }
    }
}

/// Comparison directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareDir {
    /// ==
    Eq,
    /// !=
    Ne,
    /// <
    Lt,
    /// <=
    Le,
    /// >
    Gt,
    /// >=
    Ge,
}

impl CompareDir {
    /// `EQ`, `NE`, ... as StableHLO spells them.
    pub fn mlir_name(self) -> &'static str {
        match self {
            CompareDir::Eq => "EQ",
            CompareDir::Ne => "NE",
            CompareDir::Lt => "LT",
            CompareDir::Le => "LE",
            CompareDir::Gt => "GT",
            CompareDir::Ge => "GE",
        }
    }
}

/// Dimension numbers of a `dot_general`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DotDims {
    /// Batch dimensions of the left operand.
    pub lhs_batch: Vec<usize>,
    /// Batch dimensions of the right operand.
    pub rhs_batch: Vec<usize>,
    /// Contracting dimensions of the left operand.
    pub lhs_contract: Vec<usize>,
    /// Contracting dimensions of the right operand.
    pub rhs_contract: Vec<usize>,
}

/// Layout of a convolution's operands: which dimension is batch, feature,
/// and which are spatial, for input, kernel and output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvDims {
    /// Input batch dimension.
    pub input_batch: usize,
    /// Input feature dimension.
    pub input_feature: usize,
    /// Input spatial dimensions, in order.
    pub input_spatial: Vec<usize>,
    /// Kernel input-feature dimension.
    pub kernel_input_feature: usize,
    /// Kernel output-feature dimension.
    pub kernel_output_feature: usize,
    /// Kernel spatial dimensions.
    pub kernel_spatial: Vec<usize>,
    /// Output batch dimension.
    pub output_batch: usize,
    /// Output feature dimension.
    pub output_feature: usize,
    /// Output spatial dimensions.
    pub output_spatial: Vec<usize>,
}

impl ConvDims {
    /// Flax's layout for `n` spatial dimensions: input/output `NHWC`, kernel `HWIO`.
    pub fn nhwc(n: usize) -> ConvDims {
        let spatial: Vec<usize> = (1..=n).collect();
        ConvDims {
            input_batch: 0,
            input_feature: n + 1,
            input_spatial: spatial.clone(),
            kernel_input_feature: n,
            kernel_output_feature: n + 1,
            kernel_spatial: (0..n).collect(),
            output_batch: 0,
            output_feature: n + 1,
            output_spatial: spatial,
        }
    }

    /// PyTorch's layout for `n` spatial dimensions: input/output `NCHW`, kernel `OIHW`.
    pub fn nchw(n: usize) -> ConvDims {
        let spatial: Vec<usize> = (2..n + 2).collect();
        ConvDims {
            input_batch: 0,
            input_feature: 1,
            input_spatial: spatial.clone(),
            kernel_input_feature: 1,
            kernel_output_feature: 0,
            kernel_spatial: spatial.clone(),
            output_batch: 0,
            output_feature: 1,
            output_spatial: spatial,
        }
    }
}

/// Attributes of a convolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvAttrs {
    /// Operand layouts.
    pub dims: ConvDims,
    /// Stride per spatial dimension.
    pub strides: Vec<usize>,
    /// (low, high) padding per spatial dimension (may be negative).
    pub padding: Vec<(i64, i64)>,
    /// Input (lhs) dilation per spatial dimension.
    pub lhs_dilation: Vec<usize>,
    /// Kernel (rhs) dilation per spatial dimension.
    pub rhs_dilation: Vec<usize>,
    /// Feature groups (depthwise convolution when equal to input features).
    pub feature_group_count: usize,
    /// Batch groups.
    pub batch_group_count: usize,
}

impl ConvAttrs {
    /// Defaults for the layout `dims`: stride 1, no padding, no dilation, one
    /// feature group and one batch group (`lax.conv` with `'VALID'`). Chain
    /// the setters to change any of them.
    ///
    /// ```
    /// use xlayer::builder::{ConvAttrs, ConvDims};
    /// let same_3x3 = ConvAttrs::new(ConvDims::nhwc(2)).padding(&[(1, 1), (1, 1)]);
    /// assert_eq!(same_3x3.strides, vec![1, 1]);
    /// assert_eq!(same_3x3.feature_group_count, 1);
    /// ```
    pub fn new(dims: ConvDims) -> ConvAttrs {
        let n = dims.input_spatial.len();
        ConvAttrs {
            dims,
            strides: vec![1; n],
            padding: vec![(0, 0); n],
            lhs_dilation: vec![1; n],
            rhs_dilation: vec![1; n],
            feature_group_count: 1,
            batch_group_count: 1,
        }
    }

    /// Stride per spatial dimension.
    pub fn strides(mut self, strides: &[usize]) -> Self {
        self.strides = strides.to_vec();
        self
    }

    /// `(low, high)` padding per spatial dimension.
    pub fn padding(mut self, padding: &[(i64, i64)]) -> Self {
        self.padding = padding.to_vec();
        self
    }

    /// Input (lhs) dilation per spatial dimension.
    pub fn lhs_dilation(mut self, d: &[usize]) -> Self {
        self.lhs_dilation = d.to_vec();
        self
    }

    /// Kernel (rhs) dilation per spatial dimension.
    pub fn rhs_dilation(mut self, d: &[usize]) -> Self {
        self.rhs_dilation = d.to_vec();
        self
    }

    /// Feature groups (depthwise when equal to the input features).
    pub fn feature_group_count(mut self, n: usize) -> Self {
        self.feature_group_count = n;
        self
    }

    /// Batch groups.
    pub fn batch_group_count(mut self, n: usize) -> Self {
        self.batch_group_count = n;
        self
    }
}

/// Attributes of a windowed reduction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowAttrs {
    /// Window size per dimension.
    pub dims: Vec<usize>,
    /// Stride per dimension.
    pub strides: Vec<usize>,
    /// Base (input) dilation per dimension.
    pub base_dilation: Vec<usize>,
    /// Window dilation per dimension.
    pub window_dilation: Vec<usize>,
    /// (low, high) padding per dimension.
    pub padding: Vec<(i64, i64)>,
}

/// Dimension numbers of a gather (as in `stablehlo.gather`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatherDims {
    /// Output dimensions that are slice (offset) dimensions.
    pub offset_dims: Vec<usize>,
    /// Operand dimensions of size 1 removed from the slices.
    pub collapsed_slice_dims: Vec<usize>,
    /// Operand dimension each index component addresses.
    pub start_index_map: Vec<usize>,
    /// Dimension of the indices holding the index vector.
    pub index_vector_dim: usize,
}

/// Dimension numbers of a scatter (as in `stablehlo.scatter`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScatterDims {
    /// Update dimensions that are window dimensions.
    pub update_window_dims: Vec<usize>,
    /// Operand dimensions of size 1 not present in the window.
    pub inserted_window_dims: Vec<usize>,
    /// Operand dimension each index component addresses.
    pub scatter_dims_to_operand_dims: Vec<usize>,
    /// Dimension of the indices holding the index vector.
    pub index_vector_dim: usize,
}

/// An operation of the graph. Operands are stored on the node; attributes
/// here. Output types are computed when the node is built.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A parameter of the entry function.
    Parameter {
        /// Position among the parameters.
        index: usize,
        /// Its tree path (e.g. `params/Dense_0/kernel`), for messages.
        name: String,
    },
    /// The block arguments of a region (one output per argument).
    RegionArgs,
    /// A constant from little-endian host bytes (the output type says how to read them).
    Constant {
        /// Raw element bytes; one element means a splat.
        bytes: Vec<u8>,
    },
    /// Indices along one dimension.
    Iota {
        /// The dimension that counts.
        dim: usize,
    },
    /// An elementwise function of one operand.
    Unary(UnaryOp),
    /// An elementwise function of two operands.
    Binary(BinaryOp),
    /// Elementwise comparison → bool.
    Compare(CompareDir),
    /// `pred ? on_true : on_false`.
    Select,
    /// `min(max(x, lo), hi)`; operands (lo, x, hi).
    Clamp,
    /// Value conversion to the output dtype.
    Convert,
    /// Bit reinterpretation to the output dtype.
    BitcastConvert,
    /// The operands unchanged, opaque to the compiler's simplifications
    /// (`stablehlo.optimization_barrier`).
    OptimizationBarrier,
    /// Broadcast: operand dimension i goes to output dimension `dims[i]`.
    BroadcastInDim {
        /// Output dimension of each operand dimension.
        dims: Vec<usize>,
    },
    /// Same elements, new dimensions.
    Reshape,
    /// Permute dimensions.
    Transpose {
        /// Output dimension i is operand dimension `perm[i]`.
        perm: Vec<usize>,
    },
    /// Static strided slice.
    Slice {
        /// First index per dimension.
        start: Vec<usize>,
        /// One past the last index per dimension.
        limit: Vec<usize>,
        /// Step per dimension.
        strides: Vec<usize>,
    },
    /// Slice at run-time start indices (operands: array, then one scalar per dimension).
    DynamicSlice {
        /// Slice size per dimension.
        sizes: Vec<usize>,
    },
    /// Overwrite a block at run-time start indices (operands: array, update, indices...).
    DynamicUpdateSlice,
    /// Join along a dimension.
    Concatenate {
        /// The dimension.
        dim: usize,
    },
    /// Pad with a scalar (operands: array, padding value).
    Pad {
        /// Low padding per dimension (may be negative).
        low: Vec<i64>,
        /// High padding per dimension (may be negative).
        high: Vec<i64>,
        /// Interior padding per dimension.
        interior: Vec<usize>,
    },
    /// Reverse along dimensions.
    Reverse {
        /// The dimensions.
        dims: Vec<usize>,
    },
    /// Generalised matrix product.
    DotGeneral(DotDims),
    /// Convolution (operands: input, kernel).
    Convolution(ConvAttrs),
    /// Reduction over dimensions with a body region (operands: inputs..., inits...).
    Reduce {
        /// Reduced dimensions.
        dims: Vec<usize>,
        /// The combining function.
        body: RegionId,
    },
    /// Windowed reduction (operands: inputs..., inits...).
    ReduceWindow {
        /// The window.
        window: WindowAttrs,
        /// The combining function.
        body: RegionId,
    },
    /// Gather slices (operands: array, indices).
    Gather {
        /// Dimension numbers.
        dims: GatherDims,
        /// Size of the slice per operand dimension.
        slice_sizes: Vec<usize>,
    },
    /// Scatter updates (operands: array, indices, updates).
    Scatter {
        /// Dimension numbers.
        dims: ScatterDims,
        /// Combines the old and the new value (`set` returns the new one).
        body: RegionId,
    },
    /// Sort operands along a dimension with a comparator region.
    Sort {
        /// The dimension.
        dim: usize,
        /// Stable sort.
        stable: bool,
        /// Comparator over (a_0, b_0, a_1, b_1, ...) → bool.
        comparator: RegionId,
    },
    /// Largest `k` entries along the last dimension (values, indices).
    TopK {
        /// How many.
        k: usize,
    },
    /// Loop: operands are the initial carried values.
    While {
        /// Carried values → bool.
        cond: RegionId,
        /// Carried values → next carried values.
        body: RegionId,
    },
    /// Identity whose cotangent is zero (`lax.stop_gradient`); emits nothing.
    StopGradient,
    /// Operand 0's value with operand 1's gradient (a custom derivative,
    /// as `jax.custom_jvp` gives `jax.nn.relu`): emits nothing (the program
    /// uses operand 0, and operand 1's ops are dead code the compiler
    /// drops); reverse mode sends the cotangent to operand 1 only.
    GradientOf,
    /// Run one of several branches by an i32 index (operand), clamped as StableHLO does.
    Case {
        /// The branches; each returns the same types.
        branches: Vec<RegionId>,
    },
    /// A manual region over a device mesh (`shard_map`; Shardy's
    /// `sdy.manual_computation`): operands and outputs are global, the
    /// body sees per-device shards.
    ManualComputation {
        /// The mesh and the input and output specs.
        attrs: ManualAttrs,
        /// The per-device body.
        body: RegionId,
    },
    /// `jax.lax.with_sharding_constraint`: the value unchanged, laid out
    /// over the mesh as `spec` says (Shardy's `sdy.sharding_constraint`).
    ShardingConstraint {
        /// The mesh.
        mesh: MeshAxes,
        /// Per dimension, the mesh axes (positions) that split it.
        spec: DimAxes,
    },
    /// Combine across devices (`psum`, `pmax`, `pmin`): `stablehlo.all_reduce`.
    AllReduce {
        /// The mesh axes.
        over: CollectiveAxes,
        /// The combining function.
        body: RegionId,
    },
    /// Concatenate every device's operand along `dim` (`all_gather`, tiled).
    AllGather {
        /// The mesh axes.
        over: CollectiveAxes,
        /// The dimension that grows.
        dim: usize,
    },
    /// Sum across devices and keep this device's block along `dim`
    /// (`psum_scatter`, tiled).
    ReduceScatter {
        /// The mesh axes.
        over: CollectiveAxes,
        /// The dimension that shrinks.
        dim: usize,
        /// The combining function.
        body: RegionId,
    },
    /// Exchange blocks (`all_to_all`, tiled): `split_dim` shrinks,
    /// `concat_dim` grows by the axis size.
    AllToAll {
        /// The mesh axes.
        over: CollectiveAxes,
        /// The dimension cut into blocks.
        split_dim: usize,
        /// The dimension the received blocks are joined along.
        concat_dim: usize,
    },
    /// Send to another device along one axis (`ppermute`).
    CollectivePermute {
        /// The mesh axis.
        over: CollectiveAxes,
        /// `(source, target)` positions along the axis.
        perm: Vec<(usize, usize)>,
    },
    /// This device's logical id (`ui32` scalar), inside a manual region.
    PartitionId,
    /// A call of a kernel registered with the runtime under `target`
    /// (`stablehlo.custom_call`, typed FFI: `api_version = 4`), its result
    /// types given by the caller; see [`crate::builder::Builder::custom_call`].
    CustomCall {
        /// The registered name.
        target: String,
        /// Integer attributes passed to the kernel (`backend_config`).
        attrs: Vec<(String, i64)>,
    },
}

impl Op {
    /// The regions (nested blocks) the op owns, in the order StableHLO
    /// prints them: a reduction's or scatter's body, a sort's comparator, a
    /// loop's condition then body, a case's branches.
    pub fn regions(&self) -> Vec<RegionId> {
        match self {
            Op::Reduce { body, .. } | Op::ReduceWindow { body, .. } | Op::Scatter { body, .. } => {
                vec![*body]
            }
            Op::Sort { comparator, .. } => vec![*comparator],
            Op::While { cond, body } => vec![*cond, *body],
            Op::Case { branches } => branches.clone(),
            Op::ManualComputation { body, .. }
            | Op::AllReduce { body, .. }
            | Op::ReduceScatter { body, .. } => vec![*body],
            Op::AllGather { .. }
            | Op::AllToAll { .. }
            | Op::CollectivePermute { .. }
            | Op::PartitionId
            | Op::CustomCall { .. }
            | Op::Parameter { .. }
            | Op::RegionArgs
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
            | Op::Gather { .. }
            | Op::TopK { .. }
            | Op::StopGradient
            | Op::GradientOf => Vec::new(),
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Parameter { .. } => "parameter",
            Op::RegionArgs => "region_args",
            Op::Constant { .. } => "constant",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(_) => "compare",
            Op::Select => "select",
            Op::Clamp => "clamp",
            Op::Convert => "convert",
            Op::BitcastConvert => "bitcast_convert",
            Op::OptimizationBarrier => "optimization_barrier",
            Op::ShardingConstraint { .. } => "with_sharding_constraint",
            Op::BroadcastInDim { .. } => "broadcast_in_dim",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::DynamicSlice { .. } => "dynamic_slice",
            Op::DynamicUpdateSlice => "dynamic_update_slice",
            Op::Concatenate { .. } => "concatenate",
            Op::Pad { .. } => "pad",
            Op::Reverse { .. } => "reverse",
            Op::DotGeneral(_) => "dot_general",
            Op::Convolution(_) => "convolution",
            Op::Reduce { .. } => "reduce",
            Op::ReduceWindow { .. } => "reduce_window",
            Op::Gather { .. } => "gather",
            Op::Scatter { .. } => "scatter",
            Op::Sort { .. } => "sort",
            Op::TopK { .. } => "top_k",
            Op::While { .. } => "while",
            Op::Case { .. } => "case",
            Op::StopGradient => "stop_gradient",
            Op::ManualComputation { .. } => "shard_map",
            Op::AllReduce { .. } => "all_reduce",
            Op::AllGather { .. } => "all_gather",
            Op::ReduceScatter { .. } => "psum_scatter",
            Op::AllToAll { .. } => "all_to_all",
            Op::CollectivePermute { .. } => "ppermute",
            Op::PartitionId => "partition_id",
            Op::CustomCall { .. } => "custom_call",
            Op::GradientOf => "gradient_of",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_in_printed_order() {
        let r = RegionId;
        let w = Op::While {
            cond: r(3),
            body: r(4),
        };
        assert_eq!(w.regions(), vec![r(3), r(4)]);
        let case = Op::Case {
            branches: vec![r(1), r(0), r(2)],
        };
        assert_eq!(case.regions(), vec![r(1), r(0), r(2)]);
        let sort = Op::Sort {
            dim: 0,
            stable: true,
            comparator: r(7),
        };
        assert_eq!(sort.regions(), vec![r(7)]);
        assert!(Op::Reshape.regions().is_empty());
        assert!(Op::StopGradient.regions().is_empty());
    }
}
