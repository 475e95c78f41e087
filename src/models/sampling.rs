//! Choosing the next token inside the compiled program: repetition
//! penalty, then greedy (`temperature <= 0`) or sampling at a temperature
//! from the tokens that survive top-k and top-p, with a key folded with the
//! position, so a seed reproduces a run exactly.
//!
//! All settings are run-time scalars, so one compiled program serves every
//! combination.

use crate::builder::{nn, random, Value};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0` (the default) picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (`0`: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability
    /// reaches `top_p` (`1`: all).
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of tokens already in the
    /// prompt or output by this (`1`: off), as transformers does.
    pub repetition_penalty: f32,
    /// Seed of the sampling key.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Greedy decoding (the default).
    pub fn greedy() -> Sampling {
        Sampling::default()
    }

    /// Checks the settings.
    ///
    /// Errors: [`Error::InvalidSetting`] naming the setting when the temperature is
    /// negative or not finite, `top_p` is outside `(0, 1]`, or the
    /// repetition penalty is not positive.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidSetting {
                what: "sampling".into(),
                field: "temperature",
                value: self.temperature.to_string(),
                reason: "must be finite and >= 0",
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidSetting {
                what: "sampling".into(),
                field: "top_p",
                value: self.top_p.to_string(),
                reason: "must be in (0, 1]",
            });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidSetting {
                what: "sampling".into(),
                field: "repetition_penalty",
                value: self.repetition_penalty.to_string(),
                reason: "must be finite and positive",
            });
        }
        Ok(())
    }
}

/// The run-time inputs of [`next_token`], as traced values.
pub struct SamplingInputs {
    /// `u32[2]` key from the seed.
    pub key: Value,
    /// `f32[]`.
    pub temperature: Value,
    /// `i32[]` (`0`: off).
    pub top_k: Value,
    /// `f32[]`.
    pub top_p: Value,
    /// `f32[]`.
    pub penalty: Value,
}

/// The next token (`i32[]`) from `logits: f32[V]`, given `seen: f32[V]`
/// (1 for tokens already in the context) and the position `pos: i32[]`
/// (folded into the key).
pub fn next_token(logits: &Value, seen: &Value, pos: &Value, s: &SamplingInputs) -> Result<Value> {
    let b = logits.builder().clone();
    let v = logits.dims()[0];
    // Repetition penalty on tokens seen so far.
    let pen = s.penalty.broadcast_to(&[v])?;
    let penalized = logits
        .gt(&logits.scalar_like(0.0)?)?
        .select(&(logits / &pen)?, &(logits * &pen)?)?;
    let was_seen = seen.gt(&seen.scalar_like(0.0)?)?;
    let l = was_seen.select(&penalized, logits)?;
    // Greedy and sampling are two branches of a conditional, so greedy
    // decoding never pays for the sort.
    let is_greedy = s.temperature.le(&s.temperature.scalar_like(0.0)?)?;
    let out = b.cond(
        &is_greedy,
        || Ok(vec![l.argmax(0, DType::I32)?]),
        || Ok(vec![sample(&l, pos, s)?]),
    )?;
    out.into_iter().next().ok_or_else(|| Error::MissingOutput {
        what: "the sampling conditional".into(),
        expected: 1,
        found: 0,
    })
}

/// Sampling at a temperature among the tokens top-k and top-p keep.
fn sample(l: &Value, pos: &Value, s: &SamplingInputs) -> Result<Value> {
    let b = l.builder().clone();
    let v = l.dims()[0];
    // Temperature, then the top-k and top-p thresholds on the sorted logits.
    let t = s.temperature.maximum(&s.temperature.scalar_like(1e-6)?)?;
    let scaled = (l / &t)?;
    let sorted = scaled.sort(0, true)?;
    let k = s.top_k.clamp(&b.scalar(1i32)?, &b.scalar(v as i32)?)?;
    let kth = sorted.dynamic_slice(&[(k - 1.0)?], &[1])?.reshape(&[])?;
    let lowest = b.full(f64::from(f32::MIN), DType::F32, &[])?;
    let thr_k = s.top_k.gt(&b.scalar(0i32)?)?.select(&kth, &lowest)?;
    let probs = nn::softmax(&sorted, 0)?;
    let before = (probs.cumsum(0, false)? - &probs)?;
    let keep = before.lt(&s.top_p.broadcast_to(&[v])?)?;
    let big = b.full(f64::from(f32::MAX), DType::F32, &[v])?;
    let thr_p = keep.select(&sorted, &big)?.min(&[0], false)?;
    let thr = thr_k.maximum(&thr_p)?;
    let allowed = scaled.ge(&thr.broadcast_to(&[v])?)?;
    // Gumbel-max: argmax(logits + Gumbel noise) samples softmax(logits).
    let key = random::fold_in_value(&s.key, pos)?;
    let u = random::uniform(&key, &[v], DType::F32, f64::from(f32::MIN_POSITIVE), 1.0)?;
    let gumbel = u.log()?.neg()?.log()?.neg()?;
    let noisy = (&scaled + &gumbel)?;
    let floor = b.full(f64::from(f32::MIN), DType::F32, &[v])?;
    allowed.select(&noisy, &floor)?.argmax(0, DType::I32)
}
