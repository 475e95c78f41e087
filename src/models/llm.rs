//! Text generation with a llama GGUF model (SmolLM2-135M-Instruct by
//! default): the tokenizer and chat template from the file's metadata,
//! weights on the device still quantized, one program per prefill length
//! bucket and one decode step, both compiled once (through the persistent
//! compilation cache) and reused; a KV cache held as two device buffers
//! that each step donates and gets back updated in place; the next token
//! chosen inside the program ([`super::sampling`]); tokens and text
//! streamed to a callback as they come.
//!
//! ```no_run
//! use xlayer::models::llm::{GenerateOptions, Llm};
//! use xlayer::Client;
//! let llm = Llm::load(&Client::cpu()?)?;
//! let ids = llm.encode("The capital of France is")?;
//! let out = llm.generate(&ids, &GenerateOptions::new(16), |_, text| print!("{text}"))?;
//! println!("\n{} tokens", out.ids.len());
//! # Ok::<(), xlayer::Error>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::builder::{Builder, Computation, Value, VarBuilder};
use crate::cache::CompileCache;
use crate::dtype::{ArraySpec, DType};
use crate::error::{Error, Result};
use crate::gguf::tokenizer::{self, ChatTemplate};
use crate::gguf::GgufFile;
use crate::pjrt::client::Client;
use crate::pjrt::executable::{Arg, Executable};

use super::llama::{self, Attention, LlamaConfig};
use super::qweight::DeviceWeights;
use super::sampling::{self, Sampling, SamplingInputs};

/// The KV-cache capacity (tokens of context) unless asked otherwise.
pub const DEFAULT_CAPACITY: usize = 1024;
/// The shortest prefill bucket; longer prompts use the next power of two.
pub const MIN_BUCKET: usize = 16;
/// The longest prefill bucket; longer prompts are prefilled in chunks.
pub const MAX_BUCKET: usize = 256;
/// The smallest KV cache a request gets (see [`Llm::generate`]): requests
/// of up to this many tokens (prompt and new ones) share one set of
/// programs.
pub const MIN_CACHE: usize = 256;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was produced (it is not part of the output).
    Stop,
    /// `max_tokens` were produced.
    Length,
    /// The KV cache is full (the context limit).
    Context,
    /// The callback asked to stop.
    Cancelled,
}

/// What [`Llm::generate`] does.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// The most new tokens.
    pub max_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Tokens that end generation (default: the file's end-of-sequence
    /// token and `<|im_end|>`/`<|endoftext|>` when present).
    pub stop: Option<Vec<u32>>,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens` tokens with the default stops.
    pub fn new(max_tokens: usize) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            sampling: Sampling::default(),
            stop: None,
        }
    }
}

/// One finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new token ids (without a final stop token).
    pub ids: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why it stopped.
    pub finish: Finish,
    /// Time to the first new token (prefill included).
    pub first_token: Duration,
    /// Total time.
    pub total: Duration,
    /// The logits of every step (prefill first), when asked for by
    /// [`Llm::generate_with_logits`].
    pub logits: Vec<Vec<f32>>,
}

/// A loaded model.
pub struct Llm {
    client: Client,
    cfg: LlamaConfig,
    path: PathBuf,
    file_size: usize,
    tokenizer: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    weights: DeviceWeights,
    capacity: usize,
    default_stops: Vec<u32>,
    cache: CompileCache,
    programs: Mutex<HashMap<(usize, usize, Attention), Arc<Executable>>>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Llm({})", self.path.display())
    }
}

impl Llm {
    /// Loads the pinned SmolLM2-135M-Instruct model (fetched on first use,
    /// like the plugin) with the default KV capacity and the environment's
    /// compilation cache.
    ///
    /// Errors: provisioning errors, then as [`Llm::load_file`].
    pub fn load(client: &Client) -> Result<Llm> {
        let dir = xla_build::ensure_asset(&xla_build::SMOLLM2)?;
        Llm::load_file(
            client,
            &dir.join(xla_build::SMOLLM2_GGUF),
            DEFAULT_CAPACITY,
            CompileCache::from_env()?,
        )
    }

    /// Loads a llama GGUF file whose generations may use a KV cache of up
    /// to `capacity` tokens (at most the model's context length; each
    /// request gets the next power of two of its prompt + `max_tokens`,
    /// from [`MIN_CACHE`], up to that).
    ///
    /// Errors: [`Error::Io`]/[`Error::Gguf`] for an unreadable, corrupt or
    /// non-llama file; [`Error::Weights`] listing missing or misshaped
    /// tensors (nothing is uploaded then); [`Error::Tokenizer`];
    /// [`Error::OutOfRange`] for a capacity of 0 or past the context length.
    pub fn load_file(
        client: &Client,
        path: &Path,
        capacity: usize,
        cache: CompileCache,
    ) -> Result<Llm> {
        let file = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&file)?;
        if capacity == 0 || capacity > cfg.context {
            return Err(Error::OutOfRange {
                function: "Llm::load",
                what: "KV-cache capacity".into(),
                value: capacity.to_string(),
                expected: format!("between 1 and the model's context length {}", cfg.context),
            });
        }
        let tokenizer = tokenizer::from_gguf(&file)?;
        let template = ChatTemplate::from_gguf(&file).ok();
        let mut default_stops = vec![];
        if let Ok(eos) = file.get_usize("tokenizer.ggml.eos_token_id") {
            default_stops.push(eos as u32);
        }
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(t) {
                if !default_stops.contains(&id) {
                    default_stops.push(id);
                }
            }
        }
        let weights = DeviceWeights::upload(client, &file)?;
        Ok(Llm {
            client: client.clone(),
            cfg,
            path: path.to_path_buf(),
            file_size: file.file_size(),
            tokenizer,
            template,
            weights,
            capacity,
            default_stops,
            cache,
            programs: Mutex::new(HashMap::new()),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The GGUF file's size in bytes.
    pub fn file_size(&self) -> usize {
        self.file_size
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weights.device_bytes()
    }

    /// The largest KV cache a generation gets, in tokens (the context limit
    /// of a generation).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The default stop tokens.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.default_stops
    }

    /// The tokenizer built from the file's metadata.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Token ids of `text` (no special tokens added, as transformers does
    /// for this model).
    ///
    /// Errors: [`Error::Tokenizer`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, true)
            .map_err(|e| self.tok_err(e))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids` (special tokens kept).
    ///
    /// Errors: [`Error::Tokenizer`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| self.tok_err(e))
    }

    /// `user_message` in the file's chat template, ready for the reply.
    ///
    /// Errors: [`Error::Tokenizer`] when the file has no ChatML template.
    pub fn chat_prompt(&self, user_message: &str) -> Result<String> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| self.tok_err("the file has no ChatML chat template"))?;
        Ok(t.apply(&[("user", user_message)]))
    }

    /// The prefill bucket for `n` tokens.
    fn bucket(&self, n: usize) -> usize {
        n.max(MIN_BUCKET)
            .next_power_of_two()
            .min(MAX_BUCKET)
            .min(self.capacity)
    }

    /// The KV-cache size of a request of `n` tokens (prompt and new ones):
    /// the next power of two from [`MIN_CACHE`], at most the capacity.
    /// Attention reads the whole cache at every step, so a short request
    /// reads (and holds) less.
    fn cache_for(&self, n: usize) -> usize {
        n.max(MIN_CACHE)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .min(self.capacity)
    }

    fn trace(&self, s: usize, c: usize, attend: Attention) -> Result<Computation> {
        let b = Builder::new();
        b.set_cpu_kernels(self.client.cpu_kernels());
        let params = self.weights.declare(&b)?;
        let vb = VarBuilder::new(&params);
        let l = self.cfg.layers;
        let scalar = |dt| ArraySpec::new(dt, Vec::<usize>::new());
        let ids = b.parameter(ArraySpec::new(DType::I32, vec![s]), "ids")?;
        let start = b.parameter(scalar(DType::I32), "start")?;
        let n = b.parameter(scalar(DType::I32), "n")?;
        let (k_spec, v_spec) = llama::cache_specs(&self.cfg, c);
        let cache = (0..l)
            .map(|i| {
                Ok((
                    b.parameter(k_spec.clone(), &format!("k_cache_{i}"))?,
                    b.parameter(v_spec.clone(), &format!("v_cache_{i}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let seen = b.parameter(
            ArraySpec::new(DType::F32, vec![self.cfg.vocab_size]),
            "seen",
        )?;
        let inputs = SamplingInputs {
            key: b.parameter(ArraySpec::new(DType::U32, vec![2]), "key")?,
            temperature: b.parameter(scalar(DType::F32), "temperature")?,
            top_k: b.parameter(scalar(DType::I32), "top_k")?,
            top_p: b.parameter(scalar(DType::F32), "top_p")?,
            penalty: b.parameter(scalar(DType::F32), "repetition_penalty")?,
        };
        let (logits, cache) = llama::forward(&self.cfg, &vb, &ids, &start, &n, &cache, attend)?;
        // Mark the real prompt tokens as seen, then choose.
        let valid = b
            .iota(DType::I32, &[s], 0)?
            .lt(&n.broadcast_to(&[s])?)?
            .convert(DType::F32)?;
        let seen = seen.at_add(&ids, &valid)?;
        let seen = seen.minimum(&seen.scalar_like(1.0)?)?;
        let pos = ((&start + &n)? - 1.0)?;
        let next = sampling::next_token(&logits, &seen, &pos, &inputs)?;
        let one = b.ones(DType::F32, &[1])?;
        let seen = seen.at_add(&next.reshape(&[1])?, &one)?;
        let seen = seen.minimum(&seen.scalar_like(1.0)?)?;
        // Donated: every layer's key and value cache, and `seen`.
        let n_weights = self.weights.buffers().len();
        let mut donors = vec![false; n_weights + 3 + 2 * l + 6];
        for d in &mut donors[n_weights + 3..n_weights + 4 + 2 * l] {
            *d = true;
        }
        // The donated arrays come back first, in parameter order: XLA pairs
        // each donor with an output of the same byte size, first come first
        // served, so with the logits first (f32[vocab], the size of a
        // 256-token key cache of SmolLM2) every cache was paired one layer
        // off and copied at every step.
        let mut outs: Vec<Value> = cache.into_iter().flat_map(|(k, v)| [k, v]).collect();
        outs.extend([seen, next, logits]);
        let chunk = match attend {
            Attention::Cache => "",
            Attention::Chunk => "_first",
        };
        b.build(&outs)?
            .with_name(&format!("llama_step_s{s}_c{c}{chunk}"))
            .with_donors(&donors)
    }

    /// The step program for `s` tokens at a time over a KV cache of `c`
    /// tokens, attending over the whole cache or, for the first chunk of a
    /// prompt, over its own tokens only ([`Attention`]); compiled, or loaded
    /// from the compilation cache, on first use.
    ///
    /// Errors: tracing or compilation errors.
    pub fn program(&self, s: usize, c: usize, attend: Attention) -> Result<Arc<Executable>> {
        let mut p = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = p.get(&(s, c, attend)) {
            return Ok(e.clone());
        }
        let exe = Arc::new(
            self.trace(s, c, attend)?
                .compile_cached(&self.client, &self.cache)?,
        );
        p.insert((s, c, attend), exe.clone());
        Ok(exe)
    }

    /// The step programs compiled so far, as (tokens per step, KV-cache
    /// tokens, what they attend over, program): prefill buckets (a prompt's
    /// first chunk with [`Attention::Chunk`]), and 1 for the decode step;
    /// smallest first.
    pub fn programs(&self) -> Vec<(usize, usize, Attention, Arc<Executable>)> {
        let p = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = p
            .iter()
            .map(|(&(s, c, a), e)| (s, c, a, e.clone()))
            .collect();
        v.sort_by_key(|(s, c, a, _)| (*s, *c, *a == Attention::Chunk));
        v
    }

    /// Generates from `prompt` (token ids), calling `on_token(id, text)` for
    /// every new token with the text it completes (empty while a multi-byte
    /// character is incomplete); return value ignored.
    ///
    /// Errors: [`Error::Empty`] / [`Error::OutOfRange`] for an empty prompt, a token id outside the
    /// vocabulary, invalid sampling settings, or a prompt that does not fit
    /// the KV cache (the context limit: `capacity - 1` prompt tokens);
    /// runtime errors.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32, &str),
    ) -> Result<Generation> {
        self.run(prompt, opts, false, &mut |id, t| {
            on_token(id, t);
            true
        })
    }

    /// As [`Llm::generate`], also keeping the logits of every step, and
    /// letting the callback stop generation by returning `false`.
    ///
    /// Errors: as [`Llm::generate`].
    pub fn generate_with_logits(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        self.run(prompt, opts, true, on_token)
    }

    fn run(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        keep_logits: bool,
        on_token: &mut dyn FnMut(u32, &str) -> bool,
    ) -> Result<Generation> {
        opts.sampling.validate()?;
        if prompt.is_empty() {
            return Err(Error::Empty {
                what: "the prompt".into(),
                reason: "it has no tokens",
            });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(Error::OutOfRange {
                function: "generate",
                what: "token id".into(),
                value: bad.to_string(),
                expected: format!("below the vocabulary size {}", self.cfg.vocab_size),
            });
        }
        if prompt.len() >= self.capacity {
            return Err(Error::OutOfRange {
                function: "generate",
                what: "prompt tokens".into(),
                value: prompt.len().to_string(),
                expected: format!(
                    "at most {}: the context limit (KV-cache capacity) is {} tokens",
                    self.capacity - 1,
                    self.capacity
                ),
            });
        }
        let t0 = Instant::now();
        let c = &self.client;
        let dev = c.default_device();
        // One key and one value cache per layer, sized for this request,
        // zeros, then handed from step to step (donated, updated in place).
        let cap = self.cache_for(prompt.len().saturating_add(opts.max_tokens));
        let (k_spec, v_spec) = llama::cache_specs(&self.cfg, cap);
        let zeros = vec![0u8; k_spec.size_in_bytes()];
        let mut caches = Vec::with_capacity(2 * self.cfg.layers);
        for _ in 0..self.cfg.layers {
            caches.push(c.buffer_from_bytes(&zeros, &k_spec, dev)?);
            caches.push(c.buffer_from_bytes(&zeros, &v_spec, dev)?);
        }
        drop(zeros);
        let n_caches = caches.len();
        let mut state = Some((
            caches,
            c.buffer_from_host(&vec![0f32; self.cfg.vocab_size], &[self.cfg.vocab_size])?,
        ));
        let sp = &opts.sampling;
        let key = c.buffer_from_host(&crate::builder::random::key_data(sp.seed), &[2])?;
        let temp = c.buffer_from_host(&[sp.temperature], &[])?;
        let top_k = c.buffer_from_host(&[sp.top_k.min(i32::MAX as usize) as i32], &[])?;
        let top_p = c.buffer_from_host(&[sp.top_p], &[])?;
        let pen = c.buffer_from_host(&[sp.repetition_penalty], &[])?;
        let stops = opts.stop.as_deref().unwrap_or(&self.default_stops);

        let mut step = |ids: &[u32], start: usize, s: usize| -> Result<(u32, Option<Vec<f32>>)> {
            // The first chunk (start 0) attends over its own tokens only.
            let attend = if start == 0 {
                Attention::Chunk
            } else {
                Attention::Cache
            };
            let exe = self.program(s, cap, attend)?;
            let mut padded: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
            padded.resize(s, 0);
            let ids_b = c.buffer_from_host(&padded, &[s])?;
            let start_b = c.buffer_from_host(&[start as i32], &[])?;
            let n_b = c.buffer_from_host(&[ids.len() as i32], &[])?;
            let mut args: Vec<Arg> = self.weights.buffers().iter().map(Arg::Borrowed).collect();
            // The cache and the seen-token mask are donated: the program
            // updates them in place and hands them back.
            let (caches, s_in) = state.take().ok_or_else(|| Error::Misuse {
                what: "generate".into(),
                reason: "an earlier step failed",
            })?;
            args.extend([
                Arg::Borrowed(&ids_b),
                Arg::Borrowed(&start_b),
                Arg::Borrowed(&n_b),
            ]);
            args.extend(caches.into_iter().map(Arg::Donated));
            args.extend([
                Arg::Donated(s_in),
                Arg::Borrowed(&key),
                Arg::Borrowed(&temp),
                Arg::Borrowed(&top_k),
                Arg::Borrowed(&top_p),
                Arg::Borrowed(&pen),
            ]);
            let mut out = exe.execute_args(args)?;
            if out.len() != n_caches + 3 {
                return Err(Error::MissingOutput {
                    what: "the step program".into(),
                    expected: n_caches + 3,
                    found: out.len(),
                });
            }
            let (logits, tok, seen) = match (out.pop(), out.pop(), out.pop()) {
                (Some(l), Some(t), Some(seen)) => (l, t.to_scalar::<i32>()?, seen),
                _ => {
                    return Err(Error::Misuse {
                        what: "generate".into(),
                        reason: "the step program returned no results",
                    })
                }
            };
            state = Some((out, seen));
            let logits = if keep_logits {
                Some(logits.to_vec::<f32>()?)
            } else {
                None
            };
            Ok((tok as u32, logits))
        };

        // Prefill in chunks of at most MAX_BUCKET tokens.
        let mut start = 0;
        let mut result = (0, None);
        while start < prompt.len() {
            let end = (start + MAX_BUCKET).min(prompt.len());
            let s = self.bucket(end - start).min(cap - start);
            let end = end.min(start + s);
            result = step(&prompt[start..end], start, s)?;
            start = end;
        }
        let first_token = t0.elapsed();
        let mut ids = Vec::new();
        let mut all_logits = Vec::new();
        let mut text = String::new();
        let mut pos = prompt.len();
        let finish = loop {
            let (tok, logits) = result;
            all_logits.extend(logits);
            if stops.contains(&tok) {
                break Finish::Stop;
            }
            if ids.len() >= opts.max_tokens {
                break Finish::Length;
            }
            ids.push(tok);
            let full = self.decode(&ids)?;
            let piece = if full.ends_with('\u{FFFD}') || !full.starts_with(&text) {
                String::new()
            } else {
                full[text.len()..].to_string()
            };
            if !piece.is_empty() {
                text = full;
            }
            if !on_token(tok, &piece) {
                break Finish::Cancelled;
            }
            if ids.len() >= opts.max_tokens {
                break Finish::Length;
            }
            if pos >= cap {
                break Finish::Context;
            }
            result = step(&[tok], pos, 1)?;
            pos += 1;
        };
        Ok(Generation {
            text: self.decode(&ids)?,
            ids,
            finish,
            first_token,
            total: t0.elapsed(),
            logits: all_logits,
        })
    }
}
