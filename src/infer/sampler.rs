//! Choosing the next token from logits, HF-style.
//!
//! Per step, on the last position's logits: temperature → repetition penalty (sign-aware: positive
//! logits of seen tokens ÷ p, negative × p) → top-k → top-p (keep the smallest prefix of the sorted
//! distribution whose mass reaches p, including the token that crosses it) → draw. A temperature of
//! 0 (or below [`GREEDY_BELOW`]) means greedy (argmax).

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// New tokens per answer when a request names no limit (always bounded by the context), for the
/// CLI and the API alike.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// Temperatures below this sample greedily: the distribution is already a point mass on the argmax,
/// and dividing logits by a smaller temperature would overflow f32 (a temperature of 1e-40 would turn
/// every logit into ±∞).
pub const GREEDY_BELOW: f64 = 1e-6;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f64,
    /// 1.0 disables the penalty.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    /// MiniMind's chat defaults (temperature 0.85, top-p 0.85) with HF's top-k 50 — the defaults of
    /// `generate`, `chat` and `serve` alike.
    fn default() -> Self {
        Self { temperature: 0.85, top_k: 50, top_p: 0.85, repetition_penalty: 1.0, seed: 42 }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        let p = &params;
        let finite = p.temperature.is_finite() && p.repetition_penalty.is_finite();
        if !finite || p.temperature < 0.0 || !(p.top_p > 0.0 && p.top_p <= 1.0) || p.repetition_penalty <= 0.0 {
            bail!("invalid sampling settings: temperature ≥ 0, 0 < top-p ≤ 1 and repetition-penalty > 0 are required");
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks the next token from `logits` (one row, length V) given the ids seen so far. NaN or +∞
    /// logits (a model with corrupt weights) are an error, never a panic.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> Result<u32> {
        // One pass finds the argmax and checks every logit.
        let (first_max, corrupt) = crate::ops::simd::argmax_checked(logits);
        if logits.is_empty() || corrupt {
            bail!("the model produced NaN or infinite logits; its weights may be corrupt");
        }
        let p = &self.params;
        let greedy = p.temperature < GREEDY_BELOW;
        if greedy && p.repetition_penalty == 1.0 {
            return Ok(first_max as u32); // nothing to rescale: no copy
        }
        let mut logits = logits.to_vec();
        if !greedy {
            let t = p.temperature as f32;
            logits.iter_mut().for_each(|l| *l /= t);
        }
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(&mut logits, seen, p.repetition_penalty as f32);
        }
        if greedy || logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Ok(argmax(&logits));
        }
        // Candidates sorted by logit, descending; top-k and top-p cut this list.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        if p.top_k > 0 && p.top_k < order.len() {
            let kth = logits[order[p.top_k - 1] as usize];
            order.retain(|&i| logits[i as usize] >= kth);
        }
        let max = logits[order[0] as usize];
        let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i as usize] - max) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|q| {
                    mass += q;
                    mass > p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut draw = self.rng.gen::<f64>() * total;
        for (i, q) in probs.iter().enumerate() {
            draw -= q;
            if draw <= 0.0 {
                return Ok(order[i]);
            }
        }
        Ok(order[probs.len() - 1])
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: for every distinct seen token, a positive logit is
/// divided by `penalty`, a negative one multiplied, so the token always becomes less likely.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    let mut done = std::collections::HashSet::new();
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            if done.insert(id) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// The position of the largest value, the first of equals (NaNs are ignored; 0 for an empty slice
/// or one of NaNs), in one vectorized pass.
pub fn argmax(values: &[f32]) -> u32 {
    crate::ops::simd::argmax_checked(values).0 as u32
}
