//! The fields of XLA's HLO protos (`xla.HloModuleProto` and what it holds)
//! that xlayer reads from an executable's optimized program: the entry
//! computation's parameter types, and each instruction's opcode, shape,
//! operands, called computations and the attributes that fix its cost
//! (dot and convolution dimension numbers, windows).
//!
//! Only these fields are declared; prost skips the others. The field
//! numbers are those of XLA's `hlo.proto` and `xla_data.proto`.

use prost::Message;

/// `xla.HloModuleProtoWithConfig`: the module and its compile config.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HloModuleProtoWithConfig {
    #[prost(message, optional, tag = "1")]
    pub hlo_module: Option<HloModuleProto>,
}

/// `xla.HloModuleProto`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HloModuleProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub computations: Vec<HloComputationProto>,
    #[prost(message, optional, tag = "4")]
    pub host_program_shape: Option<ProgramShapeProto>,
    #[prost(int64, tag = "6")]
    pub entry_computation_id: i64,
}

/// `xla.HloComputationProto`: instructions in dependency order.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HloComputationProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub instructions: Vec<HloInstructionProto>,
    #[prost(int64, tag = "5")]
    pub id: i64,
}

/// `xla.HloInstructionProto`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct HloInstructionProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub opcode: String,
    #[prost(message, optional, tag = "3")]
    pub shape: Option<ShapeProto>,
    #[prost(message, optional, tag = "15")]
    pub window: Option<WindowProto>,
    #[prost(message, optional, tag = "16")]
    pub convolution_dimension_numbers: Option<ConvolutionDimensionNumbersProto>,
    #[prost(string, tag = "28")]
    pub custom_call_target: String,
    #[prost(message, optional, tag = "30")]
    pub dot_dimension_numbers: Option<DotDimensionNumbersProto>,
    #[prost(int64, tag = "35")]
    pub id: i64,
    #[prost(int64, repeated, tag = "36")]
    pub operand_ids: Vec<i64>,
    #[prost(int64, repeated, tag = "38")]
    pub called_computation_ids: Vec<i64>,
    #[prost(int64, tag = "50")]
    pub feature_group_count: i64,
    #[prost(int64, tag = "58")]
    pub batch_group_count: i64,
}

/// `xla.ProgramShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ProgramShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub parameters: Vec<ShapeProto>,
    #[prost(message, optional, tag = "2")]
    pub result: Option<ShapeProto>,
}

/// `xla.ShapeProto`: an array (element type and dimensions) or a tuple.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ShapeProto {
    #[prost(int32, tag = "2")]
    pub element_type: i32,
    #[prost(int64, repeated, tag = "3")]
    pub dimensions: Vec<i64>,
    #[prost(message, repeated, tag = "4")]
    pub tuple_shapes: Vec<ShapeProto>,
}

/// `xla.Window`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct WindowProto {
    #[prost(message, repeated, tag = "1")]
    pub dimensions: Vec<WindowDimensionProto>,
}

/// `xla.WindowDimension`: a dilation of 0 means 1 (proto3 default).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct WindowDimensionProto {
    #[prost(int64, tag = "1")]
    pub size: i64,
    #[prost(int64, tag = "2")]
    pub stride: i64,
    #[prost(int64, tag = "3")]
    pub padding_low: i64,
    #[prost(int64, tag = "4")]
    pub padding_high: i64,
    #[prost(int64, tag = "5")]
    pub window_dilation: i64,
    #[prost(int64, tag = "6")]
    pub base_dilation: i64,
}

/// `xla.ConvolutionDimensionNumbers`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ConvolutionDimensionNumbersProto {
    #[prost(int64, tag = "3")]
    pub kernel_input_feature_dimension: i64,
    #[prost(int64, tag = "4")]
    pub kernel_output_feature_dimension: i64,
    #[prost(int64, repeated, tag = "6")]
    pub kernel_spatial_dimensions: Vec<i64>,
    #[prost(int64, tag = "7")]
    pub input_batch_dimension: i64,
    #[prost(int64, tag = "8")]
    pub input_feature_dimension: i64,
    #[prost(int64, tag = "9")]
    pub output_batch_dimension: i64,
    #[prost(int64, tag = "10")]
    pub output_feature_dimension: i64,
    #[prost(int64, repeated, tag = "11")]
    pub input_spatial_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "12")]
    pub output_spatial_dimensions: Vec<i64>,
}

/// `xla.DotDimensionNumbers`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DotDimensionNumbersProto {
    #[prost(int64, repeated, tag = "1")]
    pub lhs_contracting_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "2")]
    pub rhs_contracting_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "3")]
    pub lhs_batch_dimensions: Vec<i64>,
    #[prost(int64, repeated, tag = "4")]
    pub rhs_batch_dimensions: Vec<i64>,
}

/// The module of an optimized program in format `format` (`hlo_with_config`
/// or `hlo`), or `None` for another format or bytes that do not decode.
pub(crate) fn decode_module(format: &str, bytes: &[u8]) -> Option<HloModuleProto> {
    match format {
        "hlo_with_config" => HloModuleProtoWithConfig::decode(bytes).ok()?.hlo_module,
        "hlo" => HloModuleProto::decode(bytes).ok(),
        _ => None,
    }
}

/// XLA's `PrimitiveType` numbering (`xla_data.proto`), for the dtypes xlayer holds.
pub(crate) fn dtype_from_primitive(t: i32) -> Option<crate::DType> {
    use crate::DType::*;
    Some(match t {
        1 => Bool,
        2 => I8,
        3 => I16,
        4 => I32,
        5 => I64,
        6 => U8,
        7 => U16,
        8 => U32,
        9 => U64,
        10 => F16,
        11 => F32,
        12 => F64,
        16 => BF16,
        _ => return None,
    })
}

/// Bits per element of an XLA `PrimitiveType`; 0 for tuples, tokens,
/// opaque and unknown types.
pub(crate) fn primitive_bits(t: i32) -> u32 {
    match t {
        1 | 2 | 6 => 8,                             // PRED, S8, U8
        3 | 7 | 10 | 16 => 16,                      // S16, U16, F16, BF16
        4 | 8 | 11 => 32,                           // S32, U32, F32
        5 | 9 | 12 | 15 => 64,                      // S64, U64, F64, C64
        18 => 128,                                  // C128
        19 | 20 | 23 | 24 | 25 | 28 | 29 | 33 => 8, // the f8 types
        21 | 22 | 32 => 4,                          // S4, U4, F4E2M1FN
        26 | 27 => 2,                               // S2, U2
        30 | 31 => 1,                               // S1, U1
        _ => 0,
    }
}
