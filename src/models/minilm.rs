//! all-MiniLM-L6-v2 sentence embeddings, end to end: the pinned model
//! (provisioned by `xla-build`), the `tokenizers` WordPiece tokenizer from
//! its `tokenizer.json`, the BERT encoder of [`super::bert`], mean pooling
//! and L2 normalisation, compiled per (batch, length) bucket through the
//! persistent compilation cache.
//!
//! Inputs are tokenized as sentence-transformers does: `[CLS] … [SEP]`,
//! truncated at `max_seq_length` = 256 tokens (not the 128 of the shipped
//! `tokenizer.json`), no fixed padding. Sentences are sorted by length and
//! cut into executions of at most 32 by [`super::batching::plan`]: a
//! long input among short ones runs alone rather than padding all of them,
//! as chosen by a measured [`CostModel`]. Each execution is padded to a
//! shape of a finite grid ([`super::batching::seq_bucket`],
//! [`super::batching::batch_bucket`]), compiled once per shape; the padding
//! is masked out of attention and pooling, so every embedding equals that
//! of the sentence run alone (to rounding: see `embed_tokens`).
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

use super::batching::{self, CostModel};
use super::bert::{self, BertConfig};

/// sentence-transformers' `max_seq_length` for this model.
pub const MAX_SEQ_LEN: usize = 256;
/// Largest batch run at once (bigger inputs are split).
pub const MAX_BATCH: usize = 32;

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
    /// Wall time of reading `config.json` and `tokenizer.json` (the latter
    /// while the weights upload).
    pub tokenizer_time: Duration,
    /// With [`MiniLm::load_for`]: each program loaded (or compiled) while
    /// the weights uploaded, as `(batch, seq, wall time)`, in load order.
    pub programs: Vec<(usize, usize, Duration)>,
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
    /// Chooses the executions of a batch.
    cost: CostModel,
    info: LoadInfo,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MiniLm({})", self.info.dir.display())
    }
}

impl MiniLm {
    /// Loads the pinned model (fetching it on first use, like the plugin)
    /// with the compilation cache of the environment (`XLAYER_CACHE_DIR`).
    pub fn load(client: &Client) -> Result<MiniLm> {
        MiniLm::load_for(client, &[])
    }

    /// [`MiniLm::load`], ready to embed `texts`: as `load` then
    /// [`MiniLm::prepare`] of their token counts, but the tokenizer is read,
    /// the texts tokenized and the programs they need loaded from the
    /// compilation cache (or compiled) while the weights upload, so a warm
    /// start takes about the longer of the two rather than their sum. The
    /// time of each program is in [`LoadInfo::programs`].
    ///
    /// Errors: those of [`MiniLm::load_from_dir`] and of compiling.
    pub fn load_for(client: &Client, texts: &[&str]) -> Result<MiniLm> {
        let dir = xla_build::ensure_asset(&xla_build::MINILM)?;
        MiniLm::load_from_dir_for(client, &dir, CompileCache::from_env()?, texts)
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
        MiniLm::load_from_dir_for(client, dir, cache, &[])
    }

    /// [`MiniLm::load_from_dir`], with the programs that embedding `texts`
    /// needs loaded while the weights upload (see [`MiniLm::load_for`]).
    ///
    /// Errors: those of [`MiniLm::load_from_dir`] and of compiling.
    pub fn load_from_dir_for(
        client: &Client,
        dir: &Path,
        cache: CompileCache,
        texts: &[&str],
    ) -> Result<MiniLm> {
        let start = Instant::now();
        let config_path = dir.join("config.json");
        let cfg = BertConfig::from_json_file(&config_path)?;
        let config_time = start.elapsed();
        let start = Instant::now();
        let file = SafetensorsFile::open(dir.join("model.safetensors"))?;
        // Before anything is built from the config's sizes.
        cfg.check_checkpoint(&config_path, &file)?;
        let open_time = start.elapsed();
        let tokenizer_path = dir.join("tokenizer.json");
        let max_length = MAX_SEQ_LEN.min(cfg.max_position_embeddings);
        let jit = JitCache::new(cache);
        let cost = CostModel::MINILM_CPU;
        // The tokenizer is read, and the programs for `texts` loaded, while
        // the weights upload.
        let (tokenizer, loaded) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let start = Instant::now();
                let tokenizer = load_tokenizer(&tokenizer_path, max_length)?;
                let tokenizer_time = start.elapsed();
                let tokens = tokenize_with(&tokenizer, &tokenizer_path, texts)?;
                let lens: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
                let plan = plan_of(&cost, cfg.max_position_embeddings, &lens);
                let programs = load_programs(&jit, client, &cfg, &bucket_shapes(&plan))?;
                Ok::<_, Error>((tokenizer, tokenizer_time, programs))
            });
            let start = Instant::now();
            let loaded = bert::param_tree(&cfg).and_then(|wanted| {
                let (tree, report) = load_tree(client, &file, &wanted, &bert::checkpoint_names())?;
                Ok((wanted, tree, report, start.elapsed()))
            });
            let tok = tok
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (tok, loaded)
        });
        let (tokenizer, tokenizer_time, programs) = tokenizer?;
        let tokenizer_time = config_time + tokenizer_time;
        let (wanted, tree, report, upload_time) = loaded?;
        // The program takes the weights in the tree's flatten order.
        let weights = tree.into_leaves();
        let weights_time = open_time + upload_time;
        Ok(MiniLm {
            client: client.clone(),
            cfg,
            tokenizer,
            tokenizer_path,
            weights,
            jit,
            cost,
            info: LoadInfo {
                dir: dir.to_path_buf(),
                file_bytes: file.file_size(),
                uploaded_bytes: wanted.leaves().iter().map(|s| s.size_in_bytes()).sum(),
                unused: report.unused,
                weights_time,
                tokenizer_time,
                programs,
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
        tokenize_with(&self.tokenizer, &self.tokenizer_path, texts)
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
    /// position count, `[CLS] … [SEP]` included), in the caller's order.
    ///
    /// The inputs run in the executions of [`MiniLm::plan`]. Padding is
    /// masked, so an embedding does not depend on its batch mates, only its
    /// rounding may (another padded shape sums in another order): each
    /// equals the sentence embedded alone to a cosine of at least 0.99999
    /// (tests/minilm.rs).
    ///
    /// Errors: [`Error::OutOfRange`] for an empty or too long input or a
    /// token id outside the vocabulary; those of compiling and running.
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
        let lens: Vec<usize> = order.iter().map(|&i| inputs[i].len()).collect();
        let mut out = vec![Vec::new(); inputs.len()];
        let h = self.cfg.hidden_size;
        for g in batching::plan(&lens, &self.cost, MAX_BATCH, limit) {
            let (batch, seq) = (g.batch, g.seq);
            let rows = &order[g.rows];
            let mut ids = vec![0i32; batch * seq];
            let mut mask = vec![0f32; batch * seq];
            for (row, &i) in rows.iter().enumerate() {
                for (col, &t) in inputs[i].iter().enumerate() {
                    ids[row * seq + col] = t as i32;
                    mask[row * seq + col] = 1.0;
                }
            }
            let emb = self.run_bucket(batch, seq, &ids, &mask)?;
            for (row, &i) in rows.iter().enumerate() {
                out[i] = emb[row * h..(row + 1) * h].to_vec();
            }
        }
        Ok(out)
    }

    /// The executions [`MiniLm::embed_tokens`] makes for inputs of these
    /// token counts: groups of positions into `lens` and their padded
    /// `batch × seq` shapes, cheapest first by the cost model.
    pub fn plan(&self, lens: &[usize]) -> Vec<(Vec<usize>, usize, usize)> {
        plan_of(&self.cost, self.cfg.max_position_embeddings, lens)
    }

    /// Replaces the cost model that chooses the executions (default
    /// [`CostModel::MINILM_CPU`]); e.g. one fitted on another machine.
    pub fn set_cost_model(&mut self, cost: CostModel) {
        self.cost = cost;
    }

    /// Compiles (or loads from the compilation cache) every program that
    /// embedding inputs of these token counts needs, side by side on as
    /// many threads as there are cores, so that the first
    /// [`MiniLm::embed_tokens`] only runs them. Returns how many executions
    /// the inputs take.
    ///
    /// Errors: those of compiling.
    pub fn prepare(&self, lens: &[usize]) -> Result<usize> {
        let plan = self.plan(lens);
        let shapes = bucket_shapes(&plan);
        load_programs(&self.jit, &self.client, &self.cfg, &shapes)?;
        Ok(plan.len())
    }

    /// The executable of one (batch, length) bucket, compiled (or loaded
    /// from the cache) on first use.
    pub fn program(&self, batch: usize, seq: usize) -> Result<Arc<Executable>> {
        bucket_program(&self.jit, &self.client, &self.cfg, batch, seq)
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

/// The executable of one (batch, length) bucket from `jit`, compiled (or
/// loaded from the compilation cache) on first use.
fn bucket_program(
    jit: &JitCache,
    client: &Client,
    cfg: &BertConfig,
    batch: usize,
    seq: usize,
) -> Result<Arc<Executable>> {
    let inputs = Tree::tuple([
        Tree::Leaf(ArraySpec::of::<i32>([batch, seq])),
        Tree::Leaf(ArraySpec::of::<f32>([batch, seq])),
    ]);
    let key = JitKey::new("sentence_embedding", client, inputs, Training::No);
    let jitted = jit.get_or_compile(client, key, || {
        Ok((bert::trace_sentence_embedding(cfg, batch, seq)?, Vec::new()))
    })?;
    Ok(jitted.exe.clone())
}

/// Loads (or compiles) the programs of `shapes` side by side, a thread per
/// core; returns each one's `(batch, seq, wall time)`, in `shapes` order.
fn load_programs(
    jit: &JitCache,
    client: &Client,
    cfg: &BertConfig,
    shapes: &[(usize, usize)],
) -> Result<Vec<(usize, usize, Duration)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut times = Vec::with_capacity(shapes.len());
    for chunk in shapes.chunks(threads.max(1)) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(b, q)| {
                    s.spawn(move || {
                        let start = Instant::now();
                        bucket_program(jit, client, cfg, b, q).map(|_| (b, q, start.elapsed()))
                    })
                })
                .collect();
            for h in handles {
                times.push(
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
                );
            }
            Ok::<_, Error>(())
        })?;
    }
    Ok(times)
}

/// [`MiniLm::plan`] with the cost model and position limit given.
fn plan_of(cost: &CostModel, limit: usize, lens: &[usize]) -> Vec<(Vec<usize>, usize, usize)> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let sorted: Vec<usize> = order.iter().map(|&i| lens[i]).collect();
    batching::plan(&sorted, cost, MAX_BATCH, limit)
        .into_iter()
        .map(|g| (order[g.rows].to_vec(), g.batch, g.seq))
        .collect()
}

/// The distinct `(batch, seq)` shapes of a plan, sorted.
fn bucket_shapes(plan: &[(Vec<usize>, usize, usize)]) -> Vec<(usize, usize)> {
    let mut shapes: Vec<(usize, usize)> = plan.iter().map(|(_, b, s)| (*b, *s)).collect();
    shapes.sort_unstable();
    shapes.dedup();
    shapes
}

/// [`MiniLm::tokenize`] with `tokenizer` (read from `path`, named in errors).
fn tokenize_with(
    tokenizer: &tokenizers::Tokenizer,
    path: &Path,
    texts: &[&str],
) -> Result<Vec<Tokens>> {
    texts
        .iter()
        .map(|t| {
            let enc = tokenizer.encode(*t, true).map_err(|e| Error::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            Ok(Tokens {
                ids: enc.get_ids().to_vec(),
                truncated: !enc.get_overflowing().is_empty(),
            })
        })
        .collect()
}

/// The WordPiece tokenizer of `path`, without padding, truncating at
/// `max_length` tokens.
fn load_tokenizer(path: &Path, max_length: usize) -> Result<tokenizers::Tokenizer> {
    let err = |e: tokenizers::Error| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut tokenizer = tokenizers::Tokenizer::from_file(path).map_err(err)?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(err)?;
    Ok(tokenizer)
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
