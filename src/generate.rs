//! Autoregressive decoding with the KV cache and HF-style sampling.
//!
//! Per step, on the last position's logits: temperature → repetition penalty (sign-aware: positive
//! logits of seen tokens ÷ p, negative × p) → top-k → top-p (keep the smallest prefix of the sorted
//! distribution whose mass reaches p, including the token that crosses it) → draw. Temperature 0
//! means greedy (argmax).

use crate::model::{KvCache, MiniMindForCausalLM};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    /// MiniMind's chat defaults (temperature 0.85, top-p 0.85) with HF's top-k 50.
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
        if p.temperature < 0.0 || !(p.top_p > 0.0 && p.top_p <= 1.0) || p.repetition_penalty <= 0.0 {
            bail!("invalid sampling settings: temperature ≥ 0, 0 < top-p ≤ 1 and repetition-penalty > 0 are required");
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    /// Picks the next token from `logits` (one row, length V) given the ids seen so far.
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = logits.to_vec();
        if p.temperature > 0.0 {
            let t = p.temperature as f32;
            logits.iter_mut().for_each(|l| *l /= t);
        }
        if p.repetition_penalty != 1.0 {
            apply_repetition_penalty(&mut logits, seen, p.repetition_penalty as f32);
        }
        if p.temperature == 0.0 {
            return argmax(&logits);
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
                return order[i];
            }
        }
        order[probs.len() - 1]
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

pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens (the stop token excluded).
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token(id)` for each new token
/// (return `false` to stop). Prefills the prompt once, then feeds one token per step.
pub fn generate(
    model: &MiniMindForCausalLM,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let max_len = model.config.max_position_embeddings;
    if prompt.len() >= max_len {
        bail!("prompt of {} tokens does not fit the context of {max_len}", prompt.len());
    }
    let capacity = (prompt.len() + max_new_tokens).min(max_len);
    let mut cache = KvCache::new(&model.config, 1, capacity, model.dtype(), model.device())?;
    let mut seen = prompt.to_vec();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() >= max_new_tokens || cache.len() + input.dim(1)? > capacity {
            break FinishReason::Length;
        }
        let logits = model.forward_last(&input, Some(&mut cache))?;
        let logits: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let next = sampler.sample(&logits, &seen);
        if stop_ids.contains(&next) {
            break FinishReason::Stop;
        }
        tokens.push(next);
        seen.push(next);
        if !on_token(next)? {
            break FinishReason::Cancelled;
        }
        input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
    };
    Ok(Generation { tokens, finish_reason })
}

/// Several prompts decoded together: left-padded to the longest, one batched forward per step with
/// per-row positions and a padding mask, each row with its own sampler and stop. Greedy outputs
/// equal one-at-a-time [`generate`]. Rows that finish keep a slot until the batch is done.
pub fn generate_batch(
    model: &MiniMindForCausalLM,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
    samplers: &mut [Sampler],
) -> Result<Vec<Generation>> {
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) || samplers.len() != prompts.len() {
        bail!("generate_batch needs one sampler per prompt and no empty prompt");
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = model.config.max_position_embeddings;
    if longest >= max_len {
        bail!("prompt of {longest} tokens does not fit the context of {max_len}");
    }
    let capacity = (longest + max_new_tokens).min(max_len);
    let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    for (p, &pad) in prompts.iter().zip(&padding) {
        ids.extend(std::iter::repeat_n(p[0], pad)); // any id: padding slots are masked
        ids.extend_from_slice(p);
    }
    let mut input = Tensor::from_vec(ids, (prompts.len(), longest), model.device())?;
    let mut cache = KvCache::new(&model.config, prompts.len(), capacity, model.dtype(), model.device())?;
    let mut seen: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<Generation> =
        prompts.iter().map(|_| Generation { tokens: Vec::new(), finish_reason: FinishReason::Length }).collect();
    let mut done = vec![false; prompts.len()];
    while !done.iter().all(|&d| d) && cache.len() + input.dim(1)? <= capacity {
        let logits = model.forward_last_padded(&input, Some(&mut cache), &padding)?;
        let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let mut next = Vec::with_capacity(prompts.len());
        for (b, row) in logits.iter().enumerate() {
            if done[b] {
                next.push(*seen[b].last().unwrap_or(&0)); // keeps the slot busy; output ignored
                continue;
            }
            let token = samplers[b].sample(row, &seen[b]);
            if stop_ids.contains(&token) {
                done[b] = true;
                out[b].finish_reason = FinishReason::Stop;
            } else {
                out[b].tokens.push(token);
                seen[b].push(token);
                done[b] = out[b].tokens.len() >= max_new_tokens;
            }
            next.push(token);
        }
        input = Tensor::from_vec(next, (prompts.len(), 1), model.device())?;
    }
    Ok(out)
}
