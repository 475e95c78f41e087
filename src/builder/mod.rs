//! The tracing builder: Rust closures → a graph of ops → StableHLO.
//!
//! A closure receives symbolic [`Value`]s (dtype + shape, no data), calls
//! ops on them, and returns symbolic outputs. Every op checks shapes and
//! dtypes as it is recorded and fails with [`crate::Error::Op`] (or, for
//! dimension numbers and sizes, a typed variant such as
//! [`crate::Error::DimensionOutOfRange`] or [`crate::Error::ShapeTooLarge`])
//! naming the op and the shapes. The graph is kept as data ([`Graph`], a closed [`Op`]
//! enum) so later passes (reverse-mode autodiff) can walk it; emission to
//! StableHLO text is one such pass.
//!
//! - [`Builder`], [`Value`]: recording, constants, parameters; arithmetic
//!   operators that chain over `Result<Value>`; axes negative from the end
//!   ([`Axis`], [`normalize_axis`]).
//! - [`trace`], [`jit`], [`Computation`]: closure → program → executable.
//! - [`Tree`]: JAX-style pytrees with stable flatten order and [`Path`]s.
//! - [`VarBuilder`]: weights bound by path where a model uses them.
//! - [`random`]: `jax.random` (threefry2x32; keys, bits and `uniform` bit for
//!   bit, `normal` within a few ulp); [`init`]: `jax.nn.initializers`.
//! - [`autodiff`]: reverse-mode `vjp`, `grad`, `value_and_grad` over the graph.
//!
//! ```
//! use xlayer::{builder::jit, ArraySpec, Client};
//! let client = Client::cpu()?;
//! let exe = jit(&client, &[ArraySpec::of::<f32>([2, 3]), ArraySpec::of::<f32>([3])], |_b, a| {
//!     let y = a[0].matmul(&a[1])?;          // f32[2]
//!     Ok(vec![(y + 1.0)?.tanh()?])
//! })?;
//! let x = client.buffer_from_host(&[1f32, 0.0, 0.0, 0.0, 1.0, 0.0], &[2, 3])?;
//! let v = client.buffer_from_host(&[0.5f32, -1.0, 2.0], &[3])?;
//! let out = exe.execute(&[&x, &v])?[0].to_vec::<f32>()?;
//! assert!((out[0] - 1.5f32.tanh()).abs() < 1e-6 && (out[1] - 0.0).abs() < 1e-6);
//! # Ok::<(), xlayer::Error>(())
//! ```

pub mod autodiff;
mod axis;
pub mod collectives;
mod conv_taps;
mod core;
mod emit;
pub mod graph;
pub mod init;
pub mod nn;
pub mod op;
mod ops_compare;
mod ops_control;
mod ops_convert;
mod ops_custom;
mod ops_elementwise;
mod ops_index;
mod ops_linalg;
mod ops_operators;
mod ops_pool;
mod ops_reduce;
mod ops_shape;
mod path;
mod promotion;
pub mod random;
pub mod shard_map;
mod shardings;
mod trace;
mod tree;
mod var_builder;

pub use self::core::{Builder, Value};
pub(crate) use axis::axis_of;
pub use axis::{normalize_axis, Axes, Axis};
pub use collectives::{CollectiveAxes, MeshAxes};
pub use emit::emit_module;
pub use graph::{Graph, Node, NodeId, Region, RegionId, ValueId};
pub use op::{
    BinaryOp, CompareDir, ConvAttrs, ConvDims, DotDims, GatherDims, Op, ScatterDims, UnaryOp,
    WindowAttrs,
};
pub use ops_index::ScatterMode;
pub use ops_pool::Pool;
pub use ops_reduce::Padding;
pub use path::Path;
pub use promotion::{broadcast_shapes, promote_types};
pub use shard_map::{shard_map, shard_map_over, DimAxes, ManualAttrs};
pub use shardings::{jit_sharded, IoShardings, ShardedJit};
pub use trace::{jit, trace, Computation};
pub use tree::Tree;
pub use var_builder::{ParamSource, VarBuilder};
