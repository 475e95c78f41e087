//! Pretrained models written with the builder, loaded from checkpoints.
//!
//! - [`bert`]: a BERT encoder with mean pooling and L2 normalisation.
//! - [`minilm`]: all-MiniLM-L6-v2 sentence embeddings end to end
//!   (provisioning, tokenizer, bucketing, compilation cache).
//! - [`checkpoint`]: the memory-mapped safetensors loader they use.

pub mod bert;
pub mod checkpoint;
pub mod minilm;
