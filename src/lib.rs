//! # xlayer
//!
//! Rust closures traced into XLA computations, compiled through PJRT plugins
//! (CPU, CUDA, TPU) the way JAX compiles them, and run with their data held
//! as device buffers.
//!
//! The layers, bottom up (see `docs/architecture.md`):
//! - [`pjrt`]: the FFI boundary: plugins, clients, buffers, executables.
//! - [`program`]: StableHLO programs and their entry signatures.
//! - [`export`]: serialized `jax.export` artifacts.
//! - [`io`]: safetensors files as program inputs and outputs.
//! - [`dtype`]: element types and array specs shared by every layer.
//! - [`bench`](mod@bench): timing executables against a roofline.
//! - [`cache`]: the persistent compilation cache.
//! - [`gguf`]: GGUF model files (llama.cpp's format), validated, with host dequantization.
//! - [`models`]: pretrained models (BERT / all-MiniLM-L6-v2) from safetensors.
//! - [`sharding`]: meshes, partition specs, named shardings and sharded
//!   arrays over several devices (SPMD through XLA's partitioner).
//! - [`layers`]: Keras-style layers and models; [`flax`]: Flax linen modules and `FlaxLayer`.
//!
//! ## Cargo features
//!
//! All on by default; `cargo add xlayer --no-default-features` builds the
//! library core alone (everything above but the parts listed here).
//! - `tokenizers`: the `tokenizers` crate, for `models::minilm`,
//!   `models::llm` (text generation) and `gguf::tokenizer`.
//! - `progress`: `indicatif` progress bars in `Model::predict` and
//!   `Trainer::fit` (without it they draw nothing).
//! - `cli`: the `xlayer` command line tool (clap, anyhow); implies `progress`.
//!
//! ```no_run
//! use xlayer::{Client, Program};
//! let client = Client::cpu()?; // fetches the CPU plugin on first use
//! let exe = client.compile(&Program::mlir_text(r#"
//! func.func public @main(%x: tensor<2x2xf32>) -> tensor<2x2xf32> {
//!   %0 = stablehlo.multiply %x, %x : tensor<2x2xf32>
//!   return %0 : tensor<2x2xf32>
//! }"#)?)?;
//! let x = client.buffer_from_host(&[1f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! assert_eq!(exe.execute(&[&x])?[0].to_vec::<f32>()?, vec![1.0, 4.0, 9.0, 16.0]);
//! # Ok::<(), xlayer::Error>(())
//! ```
#![warn(missing_docs)]
// Every `unsafe` of the crate lives in `pjrt` (the FFI boundary), each block
// with a `// SAFETY:` line; anywhere else it is a compile error.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bench;
pub mod builder;
pub mod cache;
pub mod dtype;
pub mod error;
pub mod export;
pub mod flax;
pub mod gguf;
pub mod host_array;
pub mod io;
pub(crate) mod jit;
pub mod layers;
pub mod mode;
pub mod models;
#[allow(unsafe_code)]
pub mod pjrt;
pub mod program;
mod progress;
pub mod sharding;
mod st_header;
pub mod train;
pub mod weights;

pub use cache::{CacheStats, CompileCache};
pub use dtype::{ArraySpec, DType, NativeType};
pub use error::{Error, ErrorCode, Result};
pub use host_array::{HostArray, NamedArray};
pub use mode::Training;
pub use pjrt::analysis::{CompiledMemoryStats, CostAnalysis, CostSource, OptimizedProgram};
pub use pjrt::buffer::Buffer;
pub use pjrt::client::{Client, ClientOptions, Device};
pub use pjrt::compile_options::{CompileOptions, XlaFlag};
pub use pjrt::executable::{compile_count, Arg, Executable};
pub use pjrt::logging::set_plugin_logging;
pub use pjrt::multi_device::DeviceOutputs;
pub use pjrt::plugin::{NamedValue, Plugin};
pub use program::{Program, ProgramFormat, Signature};

pub use half::{bf16, f16};

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
