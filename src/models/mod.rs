//! Pretrained models written with the builder, loaded from checkpoints.
//!
//! - [`bert`]: a BERT encoder with mean pooling and L2 normalisation.
//! - [`minilm`]: all-MiniLM-L6-v2 sentence embeddings end to end
//!   (provisioning, tokenizer, bucketing, compilation cache).
//!
//! Their weights load through [`crate::weights`] (memory-mapped safetensors,
//! checked before upload, streamed to the device).

pub mod bert;
pub mod minilm;
