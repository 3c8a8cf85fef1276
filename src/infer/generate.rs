//! Autoregressive decoding with the KV cache: one prompt ([`generate`], streamed token by token)
//! or several at once ([`generate_batch`]); prompts encoded as the model was trained.

use super::batch::{Batcher, Decoded};
use super::sampler::{Sampler, SamplingParams};
use crate::data::tokenizer::{ChatMessage, TextStream, Tokenizer};
use crate::model::{KvCache, MiniMindForCausalLM};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::io::Write;
use std::path::Path;

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
    let mut cache = KvCache::new(&model.config, 1, capacity, model.kv_dtype(), model.device())?;
    let mut seen = prompt.to_vec();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() >= max_new_tokens || cache.len() + input.dim(1)? > capacity {
            break FinishReason::Length;
        }
        let logits = model.forward_last(&input, Some(&mut cache))?;
        let logits: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        let next = sampler.sample(&logits, &seen)?;
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

/// Several prompts decoded through continuous batching ([`super::batch::Batcher`]): up to
/// `max_batch` at a time, each with its own sampler and stop, the next prompt joining as soon as
/// one finishes. Greedy outputs equal one-at-a-time [`generate`]. Results in the prompts' order.
pub fn generate_batch(
    model: &MiniMindForCausalLM,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
    samplers: Vec<Sampler>,
    max_batch: usize,
) -> Result<Vec<Generation>> {
    if samplers.len() != prompts.len() {
        bail!("generate_batch needs one sampler per prompt");
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = (longest + max_new_tokens).min(model.config.max_position_embeddings);
    let mut batch = Batcher::new(model, max_batch.clamp(1, prompts.len()), capacity.max(2), stop_ids)?;
    let mut out: Vec<Generation> =
        prompts.iter().map(|_| Generation { tokens: Vec::new(), finish_reason: FinishReason::Length }).collect();
    let mut row_of = std::collections::HashMap::new();
    let mut record = |row: usize, events: Vec<Decoded>| {
        for event in events {
            match event {
                Decoded::Token(t) => out[row].tokens.push(t),
                Decoded::Finished(reason) => out[row].finish_reason = reason,
                Decoded::Logprobs(_) | Decoded::Stopped(_) => {}
            }
        }
    };
    let mut waiting = prompts.iter().zip(samplers).enumerate().peekable();
    while waiting.peek().is_some() || batch.active() > 0 {
        while batch.has_free_slot() {
            let Some((row, (prompt, sampler))) = waiting.next() else { break };
            let (id, events) = batch.join(prompt, max_new_tokens, sampler)?.context("a free slot")?;
            row_of.insert(id, row);
            record(row, events);
        }
        for (id, events) in batch.step()? {
            record(row_of[&id], events);
        }
    }
    Ok(out)
}

/// The greedy answer to each of `prompts` (token ids), decoded to text (special tokens dropped),
/// `max_batch` decoded together through [`generate_batch`].
pub fn greedy_answers(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    max_batch: usize,
) -> Result<Vec<String>> {
    let greedy = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
    let samplers = prompts.iter().map(|_| Sampler::new(greedy.clone())).collect::<Result<Vec<_>>>()?;
    let outputs = generate_batch(model, prompts, max_new_tokens, &tokenizer.stop_ids()?, samplers, max_batch)?;
    outputs.iter().map(|g| tokenizer.decode(&g.tokens, true)).collect()
}

/// Encodes a prompt the way the model was trained: chat template, or a plain text with a leading bos.
/// `think` is the thinking switch of a chat prompt (see [`crate::data::tokenizer::thinking_kwargs`]).
pub fn encode_prompt(tokenizer: &Tokenizer, prompt: &str, chat: bool, think: Option<bool>) -> Result<Vec<u32>> {
    if chat {
        let text = tokenizer.render_chat_with(&[ChatMessage::new("user", prompt)], true, think)?;
        tokenizer.encode(&text)
    } else {
        let mut ids = vec![tokenizer.bos_id()?];
        ids.extend(tokenizer.encode(prompt)?);
        Ok(ids)
    }
}

/// Streams a completion of `prompt_ids` into `out`; returns the full generated text.
pub fn stream_completion(
    model_dir: &Path,
    model: &crate::model::MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    max_new_tokens: usize,
    sampling: SamplingParams,
    out: &mut dyn Write,
) -> Result<String> {
    let mut sampler = Sampler::new(sampling)?;
    let mut stream = TextStream::new(tokenizer);
    // Shows a reasoning model's <think> part as a [think] … [/think] block (already open when the
    // prompt ends with `<think>`); the returned text is raw.
    let tail = tokenizer.decode(&prompt_ids[prompt_ids.len().saturating_sub(3)..], false)?;
    let mut display = super::reasoning::ThinkDisplay::new(super::reasoning::opens_thinking(&tail));
    let mut text = String::new();
    let stops = tokenizer.stop_ids()?;
    generate(model, prompt_ids, max_new_tokens, &stops, &mut sampler, |id| {
        if let Some(piece) = stream.push(id)? {
            out.write_all(display.push(&piece).as_bytes())?;
            out.flush()?;
            text.push_str(&piece);
        }
        Ok(true)
    })
    .with_context(|| format!("generating with {}", model_dir.display()))?;
    let rest = stream.finish()?.unwrap_or_default();
    text.push_str(&rest);
    let shown = display.push(&rest) + &display.finish();
    out.write_all(shown.as_bytes())?;
    Ok(text)
}
