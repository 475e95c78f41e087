//! Pretrained models written with the builder, loaded from checkpoints.
//!
//! - [`batching`]: length-aware batching of inputs of different lengths
//!   into padded executions, chosen by a measured cost model.
//! - [`bert`]: a BERT encoder with mean pooling and L2 normalisation.
//! - [`minilm`]: all-MiniLM-L6-v2 sentence embeddings end to end
//!   (provisioning, tokenizer, bucketing, compilation cache).
//! - [`llama`]: the llama decoder over GGUF weights bound by name;
//!   [`qweight`]: those weights on the device, still quantized;
//!   [`qmatvec`]: their matrix-vector product as a call of xlayer's CPU
//!   kernel;
//!   [`sampling`]: choosing the next token inside the program;
//!   [`llm`]: text generation with SmolLM2-135M-Instruct end to end.
//!
//! [`minilm`] and [`llm`] need the `tokenizers` feature (on by default).
//!
//! Their weights load through [`crate::weights`] (memory-mapped safetensors,
//! checked before upload, streamed to the device).

pub mod batching;
pub mod bert;
pub mod bert_tp;
pub mod llama;
#[cfg(feature = "tokenizers")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokenizers")))]
pub mod llm;
#[cfg(feature = "tokenizers")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokenizers")))]
pub mod minilm;
pub mod qmatvec;
pub mod qweight;
pub mod sampling;
