//! Continuous batching: sequences join a running batch between decode steps and leave it as soon as
//! they finish, so concurrent requests share each step's weight reads instead of waiting in line.
//!
//! KV memory is a fixed [`KvPool`] of slots, each one sequence's cache of `slot_capacity` positions,
//! allocated once and reused (a freed slot is simply overwritten). A sequence is prefilled alone when
//! it joins (into a scratch cache, then copied to its slot); every [`Batcher::step`] then decodes one
//! token for all active sequences in one [`MiniMindForCausalLM::forward_decode`]. Each sequence
//! samples with its own sampler, so greedy outputs equal decoding it alone with [`super::generate`].

use super::generate::FinishReason;
use super::grammar::{mask_logits, Constraint};
use super::sampler::Sampler;
use crate::model::{KvCache, KvPool, MiniMindForCausalLM};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// A decode step's logits as f32 on the host, to be read in place, and their width; an error
/// unless there is one row per running sequence.
fn host_rows(logits: &Tensor, running: usize) -> Result<(Tensor, usize)> {
    let logits = logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    match logits.dims2()? {
        (rows, vocab) if rows == running && vocab > 0 => Ok((logits, vocab)),
        dims => bail!("a decode step of {running} rows gave logits {dims:?}"),
    }
}

/// A sequence's handle inside its batcher.
pub type SeqId = u64;

/// What a sequence did in a step (or when it joined).
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A new token (never a stop token).
    Token(u32),
    /// Asked for with [`Batcher::join_with_logprobs`], just before its `Token`: the token's log
    /// probability under the model (the raw softmax of its logits) and the `k` most likely tokens'.
    Logprobs(TokenLogprobs),
    /// The stop token it sampled, just before its `Finished(Stop)` (not part of the answer).
    Stopped(u32),
    /// Finished: a stop token, its token budget or its slot's capacity. It has left the batch.
    Finished(FinishReason),
}

/// A generated token's log probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// `(token, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// `log softmax` of `logits` at `token`, and the `k` largest with their ids.
fn logprobs_of(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order[..k].sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    }
    let top = order[..k].iter().map(|&t| (t, logits[t as usize] - log_sum)).collect();
    TokenLogprobs { token, logprob: logits[token as usize] - log_sum, top }
}

struct Sequence {
    id: SeqId,
    /// Its slot of the pool, while it runs.
    slot: usize,
    sampler: Sampler,
    /// Prompt and generated tokens (the repetition penalty looks at them).
    seen: Vec<u32>,
    generated: usize,
    max_new_tokens: usize,
    /// Report log probabilities with this many alternatives.
    logprobs: Option<usize>,
    /// Constrained decoding: only tokens the grammar allows.
    constraint: Option<Constraint>,
}

/// What a sequence asks of decoding beyond its sampler.
#[derive(Clone, Default)]
pub struct SeqOptions {
    /// Report each token's log probability and this many most likely alternatives
    /// ([`Decoded::Logprobs`]).
    pub logprobs: Option<usize>,
    /// Decode only what this grammar allows ([`super::grammar`]); the sequence stops when the
    /// grammar is complete.
    pub constraint: Option<Constraint>,
}

/// The running batch of one model over a pool of KV slots.
pub struct Batcher<'m> {
    model: &'m MiniMindForCausalLM,
    pool: KvPool,
    /// Where a joining sequence's prompt is prefilled before it moves to its slot.
    scratch: KvCache,
    /// Slots no sequence holds.
    free: Vec<usize>,
    active: Vec<Sequence>,
    capacity: usize,
    stop_ids: Vec<u32>,
    next_id: SeqId,
}

impl<'m> Batcher<'m> {
    /// `max_batch` slots of `slot_capacity` positions each (prompt + answer), allocated now.
    pub fn new(
        model: &'m MiniMindForCausalLM,
        max_batch: usize,
        slot_capacity: usize,
        stop_ids: &[u32],
    ) -> Result<Self> {
        if max_batch == 0 || slot_capacity < 2 {
            bail!("a batcher needs at least one slot of at least 2 positions");
        }
        let capacity = slot_capacity.min(model.config.max_position_embeddings);
        let (dtype, device) = (model.kv_dtype(), model.device());
        let pool = KvPool::new(&model.config, max_batch, capacity, dtype, device)?;
        let scratch = KvCache::new(&model.config, 1, capacity, dtype, device)?;
        let free = (0..max_batch).rev().collect();
        Ok(Self { model, pool, scratch, free, active: Vec::new(), capacity, stop_ids: stop_ids.to_vec(), next_id: 0 })
    }

    /// Positions one slot holds: the longest prompt plus answer a sequence can have.
    pub fn slot_capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences decoding now.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Whether a sequence can join now.
    pub fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    /// Prefills `prompt` into a free slot and samples its first token; returns the sequence's id
    /// and what it decoded (a token, then `Finished` when that already ends it). `Ok(None)` when
    /// every slot is taken; an error for a prompt that does not fit a slot.
    pub fn join(
        &mut self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: Sampler,
    ) -> Result<Option<(SeqId, Vec<Decoded>)>> {
        self.join_with(prompt, max_new_tokens, sampler, SeqOptions::default())
    }

    /// [`join`](Self::join) with log probabilities or a grammar ([`SeqOptions`]).
    pub fn join_with(
        &mut self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: Sampler,
        options: SeqOptions,
    ) -> Result<Option<(SeqId, Vec<Decoded>)>> {
        if prompt.is_empty() {
            bail!("the prompt is empty");
        }
        if prompt.len() >= self.capacity {
            bail!("prompt of {} tokens does not fit a slot of {} positions", prompt.len(), self.capacity);
        }
        let Some(slot) = self.free.pop() else { return Ok(None) };
        let id = self.next_id;
        self.next_id += 1;
        let SeqOptions { logprobs, constraint } = options;
        let mut seq =
            Sequence { id, slot, sampler, seen: prompt.to_vec(), generated: 0, max_new_tokens, logprobs, constraint };
        if max_new_tokens == 0 {
            self.free.push(slot);
            return Ok(Some((id, vec![Decoded::Finished(FinishReason::Length)])));
        }
        match self.prefill(&mut seq, prompt) {
            Ok(events) => {
                self.settle(seq, &events);
                Ok(Some((id, events)))
            }
            Err(e) => {
                self.free.push(slot);
                Err(e)
            }
        }
    }

    /// One token for every active sequence, in one batched forward. Sequences that finish leave the
    /// batch and free their slots. On an error every active sequence is dropped (their slots freed).
    pub fn step(&mut self) -> Result<Vec<(SeqId, Vec<Decoded>)>> {
        if self.active.is_empty() {
            return Ok(Vec::new());
        }
        let running = std::mem::take(&mut self.active);
        let tokens: Vec<u32> = running.iter().map(|s| *s.seen.last().unwrap_or(&0)).collect();
        let slots: Vec<usize> = running.iter().map(|s| s.slot).collect();
        let decoded = self.model.forward_decode(&tokens, &mut self.pool, &slots);
        let (logits, vocab) = match decoded.and_then(|logits| host_rows(&logits, running.len())) {
            Ok(logits) => logits,
            Err(e) => {
                self.free.extend(slots);
                return Err(e);
            }
        };
        // `sample_rows` frees the slots itself when sampling fails.
        match crate::ops::cpu::with_f32(&logits, |all| self.sample_rows(running, all, vocab)) {
            Ok(sampled) => sampled,
            Err(e) => {
                self.free.extend(slots);
                Err(e.into())
            }
        }
    }

    /// Samples each running sequence's next token from its row of `logits` `[running, vocab]`.
    fn sample_rows(
        &mut self,
        running: Vec<Sequence>,
        logits: &[f32],
        vocab: usize,
    ) -> Result<Vec<(SeqId, Vec<Decoded>)>> {
        let mut out = Vec::with_capacity(running.len());
        let mut pending = running.into_iter().zip(logits.chunks_exact(vocab));
        while let Some((mut seq, row)) = pending.next() {
            match self.advance(&mut seq, row) {
                Ok(events) => {
                    out.push((seq.id, events.clone()));
                    self.settle(seq, &events);
                }
                Err(e) => {
                    // Every sequence of the batch is dropped: this one, those already kept for the
                    // next step and those not yet sampled.
                    self.free.push(seq.slot);
                    let kept = std::mem::take(&mut self.active).into_iter().map(|s| s.slot);
                    let unsampled: Vec<usize> = pending.map(|(s, _)| s.slot).collect();
                    self.free.extend(kept.chain(unsampled));
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Removes a sequence (its client went away), freeing its slot at once.
    pub fn cancel(&mut self, id: SeqId) {
        if let Some(i) = self.active.iter().position(|s| s.id == id) {
            let seq = self.active.remove(i);
            self.free.push(seq.slot);
        }
    }

    /// Runs `prompt` through the model into the scratch cache, moves it to the sequence's slot and
    /// samples the first token.
    fn prefill(&mut self, seq: &mut Sequence, prompt: &[u32]) -> Result<Vec<Decoded>> {
        self.scratch.clear();
        let input = Tensor::new(prompt, self.model.device())?.unsqueeze(0)?;
        let logits = self.model.forward_last(&input, Some(&mut self.scratch))?.squeeze(0)?;
        self.pool.load(seq.slot, &self.scratch)?;
        self.advance(seq, &logits.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Samples `seq`'s next token from its logits (`V` values) as [`super::generate`] does: a stop token
    /// finishes it; a token is kept, and finishes it when its budget or its slot is used up.
    fn advance(&self, seq: &mut Sequence, raw: &[f32]) -> Result<Vec<Decoded>> {
        // A grammar masks a copy; the raw logits give the log-probabilities.
        let masked = match seq.constraint.as_mut() {
            Some(grammar) => {
                let mut logits = raw.to_vec();
                mask_logits(grammar, &mut logits)?;
                Some(logits)
            }
            None => None,
        };
        let next = seq.sampler.sample(masked.as_deref().unwrap_or(raw), &seq.seen)?;
        if self.stop_ids.contains(&next) {
            return Ok(vec![Decoded::Stopped(next), Decoded::Finished(FinishReason::Stop)]);
        }
        let mut complete = false;
        if let Some(grammar) = seq.constraint.as_mut() {
            grammar.consume_token(next)?;
            complete = grammar.is_stopped();
        }
        seq.seen.push(next);
        seq.generated += 1;
        let mut events = Vec::with_capacity(3);
        if let Some(k) = seq.logprobs {
            events.push(Decoded::Logprobs(logprobs_of(raw, next, k)));
        }
        events.push(Decoded::Token(next));
        if complete {
            events.push(Decoded::Finished(FinishReason::Stop));
        } else if seq.generated >= seq.max_new_tokens || self.pool.len(seq.slot) + 1 > self.capacity {
            events.push(Decoded::Finished(FinishReason::Length));
        }
        Ok(events)
    }

    /// Keeps a sequence running, or returns its slot when its events end it.
    fn settle(&mut self, seq: Sequence, events: &[Decoded]) {
        if events.iter().any(|e| matches!(e, Decoded::Finished(_))) {
            self.free.push(seq.slot);
        } else {
            self.active.push(seq);
        }
    }
}
