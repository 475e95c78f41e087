//! all-MiniLM-L6-v2 sentence embeddings, end to end: the pinned model
//! (provisioned by `xla-build`), the `tokenizers` WordPiece tokenizer from
//! its `tokenizer.json`, the BERT encoder of [`super::bert`], mean pooling
//! and L2 normalisation, compiled per (batch, length) bucket through the
//! persistent compilation cache.
//!
//! Inputs are tokenized as sentence-transformers does: `[CLS] … [SEP]`,
//! truncated at `max_seq_length` = 256 tokens (not the 128 of the shipped
//! `tokenizer.json`), no fixed padding. Sentences are sorted by length and
//! grouped into batches of at most 32; each batch is padded to the next
//! power of two in both batch size and length (at least 8 tokens), so at
//! most 6 × 6 programs are ever compiled, and the padding is masked out of
//! attention and pooling.
//!
//! ```no_run
//! use xlayer::{models::minilm::MiniLm, Client};
//! let model = MiniLm::load(&Client::cpu()?)?;
//! let e = model.embed(&["A cat sits on the mat.", "Un chat est assis."])?;
//! let cos: f32 = e[0].iter().zip(&e[1]).map(|(a, b)| a * b).sum();
//! println!("cosine {cos:.3}");
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::Tree;
use crate::cache::CompileCache;
use crate::dtype::ArraySpec;
use crate::error::{Error, Result};
use crate::jit::{JitCache, JitKey};
use crate::mode::Training;
use crate::pjrt::buffer::Buffer;
use crate::pjrt::client::Client;
use crate::pjrt::executable::Executable;

use crate::weights::{load_tree, SafetensorsFile};

use super::bert::{self, BertConfig};

/// sentence-transformers' `max_seq_length` for this model.
pub const MAX_SEQ_LEN: usize = 256;
/// Largest batch run at once (bigger inputs are split).
pub const MAX_BATCH: usize = 32;
/// Shortest padded length.
pub const MIN_SEQ_BUCKET: usize = 8;

/// One tokenized input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, `[CLS]` and `[SEP]` included.
    pub ids: Vec<u32>,
    /// Whether the input was longer than [`MAX_SEQ_LEN`] and was cut.
    pub truncated: bool,
}

/// What loading took (for benchmarks and `--verbose` output).
#[derive(Debug, Clone)]
pub struct LoadInfo {
    /// The model folder.
    pub dir: PathBuf,
    /// Size of `model.safetensors`.
    pub file_bytes: usize,
    /// Bytes uploaded to the device.
    pub uploaded_bytes: usize,
    /// Checkpoint tensors the model does not use.
    pub unused: Vec<String>,
    /// Wall time of opening the checkpoint and uploading the weights.
    pub weights_time: Duration,
}

/// The loaded model: tokenizer, weights on the device, compiled buckets.
pub struct MiniLm {
    client: Client,
    cfg: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    weights: Vec<Buffer>,
    /// The compiled buckets, by input specs.
    jit: JitCache,
    info: LoadInfo,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MiniLm({})", self.info.dir.display())
    }
}

fn next_pow2(n: usize, min: usize) -> usize {
    n.max(min).next_power_of_two()
}

/// The padded length for `n` tokens: powers of two up to 64, then multiples
/// of 32 (130 tokens pad to 160, not 256), which bounds the number of
/// compiled buckets (at most 18 up to 512 tokens) without doubling the work
/// of long inputs.
fn seq_bucket(n: usize, min: usize) -> usize {
    if n <= 64 {
        next_pow2(n, min)
    } else {
        n.div_ceil(32) * 32
    }
}

impl MiniLm {
    /// Loads the pinned model (fetching it on first use, like the plugin)
    /// with the compilation cache of the environment (`XLAYER_CACHE_DIR`).
    pub fn load(client: &Client) -> Result<MiniLm> {
        let dir = xla_build::ensure_asset(&xla_build::MINILM)?;
        MiniLm::load_from_dir(client, &dir, CompileCache::from_env()?)
    }

    /// Loads a model folder holding `config.json`, `tokenizer.json` and
    /// `model.safetensors`, compiling through `cache`.
    ///
    /// The config is bounded and checked against the checkpoint's tensor
    /// names and shapes before anything is allocated from it.
    ///
    /// Errors: [`Error::Io`]/[`Error::Safetensors`] for unreadable or
    /// malformed files, [`Error::ModelConfig`] naming a `config.json` field
    /// that is out of bounds or that the checkpoint contradicts,
    /// [`Error::Weights`] listing every tensor of a
    /// checkpoint that does not fit (nothing is uploaded then),
    /// [`Error::Tokenizer`].
    pub fn load_from_dir(client: &Client, dir: &Path, cache: CompileCache) -> Result<MiniLm> {
        let config_path = dir.join("config.json");
        let cfg = BertConfig::from_json_file(&config_path)?;
        let start = Instant::now();
        let file = SafetensorsFile::open(dir.join("model.safetensors"))?;
        // Before anything is built from the config's sizes.
        cfg.check_checkpoint(&config_path, &file)?;
        let open_time = start.elapsed();
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: MAX_SEQ_LEN.min(cfg.max_position_embeddings),
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        let start = Instant::now();
        let wanted = bert::param_tree(&cfg)?;
        let (tree, report) = load_tree(client, &file, &wanted, &bert::checkpoint_names())?;
        // The program takes the weights in the tree's flatten order.
        let weights = tree.into_leaves();
        let weights_time = open_time + start.elapsed();
        Ok(MiniLm {
            client: client.clone(),
            cfg,
            tokenizer,
            tokenizer_path,
            weights,
            jit: JitCache::new(cache),
            info: LoadInfo {
                dir: dir.to_path_buf(),
                file_bytes: file.file_size(),
                uploaded_bytes: wanted.leaves().iter().map(|s| s.size_in_bytes()).sum(),
                unused: report.unused,
                weights_time,
            },
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// Embedding width (384).
    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }

    /// What loading did.
    pub fn load_info(&self) -> &LoadInfo {
        &self.info
    }

    /// The compilation cache in use.
    pub fn cache(&self) -> &CompileCache {
        self.jit.disk()
    }

    /// Tokenizes as sentence-transformers does (special tokens, truncation
    /// at 256, no padding).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Tokens>> {
        texts
            .iter()
            .map(|t| {
                let enc = self
                    .tokenizer
                    .encode(*t, true)
                    .map_err(|e| Error::Tokenizer {
                        path: self.tokenizer_path.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Tokens {
                    ids: enc.get_ids().to_vec(),
                    truncated: !enc.get_overflowing().is_empty(),
                })
            })
            .collect()
    }

    /// Unit-length sentence embeddings, one per text, in order. Inputs cut
    /// at 256 tokens are reported on stderr.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenize(texts)?;
        for (i, t) in tokens.iter().enumerate() {
            if t.truncated {
                eprintln!(
                    "minilm: input {} is longer than {MAX_SEQ_LEN} tokens and was truncated (as sentence-transformers does)",
                    i + 1
                );
            }
        }
        let ids: Vec<Vec<u32>> = tokens.into_iter().map(|t| t.ids).collect();
        self.embed_tokens(&ids)
    }

    /// Embeddings of already tokenized inputs (each at most the model's
    /// position count, `[CLS] … [SEP]` included).
    pub fn embed_tokens(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let limit = self.cfg.max_position_embeddings;
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > limit {
                return Err(Error::OutOfRange {
                    function: "MiniLm::embed_tokens",
                    what: format!("token count of input {i}"),
                    value: ids.len().to_string(),
                    expected: format!("1 to {limit}"),
                });
            }
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                return Err(Error::OutOfRange {
                    function: "MiniLm::embed_tokens",
                    what: format!("a token id of input {i}"),
                    value: bad.to_string(),
                    expected: format!("below the vocabulary size {}", self.cfg.vocab_size),
                });
            }
        }
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        for group in order.chunks(MAX_BATCH) {
            let longest = group.iter().map(|&i| inputs[i].len()).max().unwrap_or(1);
            let seq = seq_bucket(longest, MIN_SEQ_BUCKET).min(limit);
            let batch = next_pow2(group.len(), 1);
            let mut ids = vec![0i32; batch * seq];
            let mut mask = vec![0f32; batch * seq];
            for (row, &i) in group.iter().enumerate() {
                for (col, &t) in inputs[i].iter().enumerate() {
                    ids[row * seq + col] = t as i32;
                    mask[row * seq + col] = 1.0;
                }
            }
            let emb = self.run_bucket(batch, seq, &ids, &mask)?;
            let h = self.cfg.hidden_size;
            for (row, &i) in group.iter().enumerate() {
                out[i] = emb[row * h..(row + 1) * h].to_vec();
            }
        }
        Ok(out)
    }

    /// The executable of one (batch, length) bucket, compiled (or loaded
    /// from the cache) on first use.
    pub fn program(&self, batch: usize, seq: usize) -> Result<Arc<Executable>> {
        let inputs = Tree::tuple([
            Tree::Leaf(ArraySpec::of::<i32>([batch, seq])),
            Tree::Leaf(ArraySpec::of::<f32>([batch, seq])),
        ]);
        let key = JitKey::new("sentence_embedding", &self.client, inputs, Training::No);
        let jitted = self.jit.get_or_compile(&self.client, key, || {
            Ok((
                bert::trace_sentence_embedding(&self.cfg, batch, seq)?,
                Vec::new(),
            ))
        })?;
        Ok(jitted.exe.clone())
    }

    /// Runs one padded bucket: `ids`/`mask` are `batch × seq`, row-major.
    pub fn run_bucket(
        &self,
        batch: usize,
        seq: usize,
        ids: &[i32],
        mask: &[f32],
    ) -> Result<Vec<f32>> {
        let exe = self.program(batch, seq)?;
        let ids = self.client.buffer_from_host(ids, &[batch, seq])?;
        let mask = self.client.buffer_from_host(mask, &[batch, seq])?;
        let mut args: Vec<&Buffer> = self.weights.iter().collect();
        args.push(&ids);
        args.push(&mask);
        let out = exe.execute(&args)?;
        out.first()
            .ok_or_else(|| Error::MissingOutput {
                what: "MiniLM embedding".into(),
                expected: 1,
                found: 0,
            })?
            .to_vec::<f32>()
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::seq_bucket;

    #[test]
    fn sequence_buckets() {
        assert_eq!(seq_bucket(3, 8), 8);
        assert_eq!(seq_bucket(15, 8), 16);
        assert_eq!(seq_bucket(64, 8), 64);
        assert_eq!(seq_bucket(65, 8), 96);
        assert_eq!(seq_bucket(130, 8), 160);
        assert_eq!(seq_bucket(512, 8), 512);
        let distinct: std::collections::BTreeSet<usize> =
            (1..=512).map(|n| seq_bucket(n, 8)).collect();
        assert_eq!(distinct.len(), 18);
    }
}
