//! `minimind grpo`: group relative policy optimization (GRPO, or minimind-3's default CISPO) on the
//! one training loop. A micro-batch is `B` prompts; its loss:
//!
//! 1. **Rollouts** — `G` completions per prompt sampled from the current policy by batched decoding
//!    (the serving engine's [`Batcher`]), temperature `T`, up to `max_new_tokens` each;
//! 2. **Rewards** — per completion, a weighted sum of MiniMind's rule reward (length, thinking
//!    format, repetition: [`rewards::minimind_rule_reward`]), for rows with a `gt` the answer's match
//!    with it ([`rewards::gt_match`]), a reward model's score ([`RewardModel`]) and an external
//!    scorer's ([`rewards::ExternalScorer`]);
//!    advantages normalized within each group;
//! 3. **Loss** — every completion re-scored in one forward pass by the policy (with gradient) and
//!    the frozen reference; [`policy_loss`] over the sampled tokens through the first stop token.
//!
//! The update is on-policy (one optimizer step per rollout, as minimind-3's default), so the
//! sampling policy's log-probabilities are the policy's own, detached: the ratio is 1 in value and
//! carries the gradient.

use super::policy_loss::{completion_mask, group_advantages, mean_std, policy_loss, PolicyLossConfig};
use super::reward_model::RewardModel;
use super::rewards;
use super::run::{from_model_folder, run_stage, TrainConfig, GRPO};
use super::trainer::{Stage, TrainSummary};
use crate::data::rl::{RlData, RlPrompt};
use crate::data::{DataCursor, EncodedRow, JsonlIndex, LmBatch};
use crate::infer::batch::{Batcher, Decoded};
use crate::infer::{FinishReason, Sampler, SamplingParams};
use crate::model::{checkpoint, DropoutSeed, MiniMindForCausalLM};
use crate::{ops, Tokenizer};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;

/// How completions are sampled and scored.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Completions per prompt (6).
    pub group: usize,
    pub max_new_tokens: usize,
    /// Sampling temperature (0.8); no top-k or top-p, so samples follow the policy.
    pub temperature: f64,
    /// Weight of MiniMind's rule reward (1).
    pub rule_weight: f64,
    /// Weight of the ground-truth match, for rows with a `gt` (1).
    pub gt_weight: f64,
    /// An external scorer's URL ([`rewards::ExternalScorer`]) and its weight.
    pub reward_url: Option<(String, f64)>,
    /// A reward model folder (`minimind reward-model`) and its weight.
    pub reward_model: Option<(PathBuf, f64)>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            group: 6,
            max_new_tokens: 256,
            temperature: 0.8,
            rule_weight: 1.0,
            gt_weight: 1.0,
            reward_url: None,
            reward_model: None,
        }
    }
}

/// One sampled completion.
struct Completion {
    prompt: usize,
    tokens: Vec<u32>,
    /// Whether it ended with a stop token (appended to `tokens`) rather than its budget.
    stopped: bool,
}

/// Prompts, rollouts and the policy loss against a frozen reference.
pub struct GrpoStage<'a> {
    data: RlData<'a>,
    tokenizer: &'a Tokenizer,
    reference: MiniMindForCausalLM,
    rollout: RolloutConfig,
    loss: PolicyLossConfig,
    stop_ids: Vec<u32>,
    scorer: Option<(rewards::ExternalScorer, f64)>,
    reward_model: Option<(RewardModel, f64)>,
    seed: u64,
    device: Device,
    /// Positions the last loss processed, and its logged figures.
    last_tokens: Cell<usize>,
    last: RefCell<Vec<(String, f64)>>,
}

/// A micro-batch: its prompts and the seed its rollouts sample with (drawn from the data position,
/// so a resumed run samples what the uninterrupted one would have).
pub struct GrpoBatch {
    pub prompts: Vec<RlPrompt>,
    pub seed: u64,
}

impl<'a> GrpoStage<'a> {
    pub fn new(
        data: RlData<'a>,
        tokenizer: &'a Tokenizer,
        reference: MiniMindForCausalLM,
        rollout: RolloutConfig,
        loss: PolicyLossConfig,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        if rollout.group < 2 {
            bail!("--group must be at least 2 (advantages compare completions of one prompt)");
        }
        if rollout.max_new_tokens == 0 || !(rollout.temperature > 0.0 && rollout.temperature.is_finite()) {
            bail!("--max-new-tokens must be at least 1 and --temperature positive");
        }
        if tokenizer.vocab_size() > reference.config.vocab_size {
            bail!(
                "the tokenizer has {} tokens but the model only {}: use the model folder's own tokenizer",
                tokenizer.vocab_size(),
                reference.config.vocab_size
            );
        }
        let stop_ids = tokenizer.stop_ids()?;
        let scorer = match &rollout.reward_url {
            Some((url, weight)) => Some((rewards::ExternalScorer::new(url)?, *weight)),
            None => None,
        };
        let reward_model = match &rollout.reward_model {
            Some((dir, weight)) => {
                let rm = RewardModel::load(dir, &device)?;
                if rm.lm.config.vocab_size != reference.config.vocab_size {
                    bail!("the reward model {} has another vocabulary than the policy", dir.display());
                }
                Some((rm, *weight))
            }
            None => None,
        };
        Ok(Self {
            data,
            tokenizer,
            reference,
            rollout,
            loss,
            stop_ids,
            scorer,
            reward_model,
            seed,
            device,
            last_tokens: Cell::new(0),
            last: RefCell::new(Vec::new()),
        })
    }

    /// The frozen reference the KL is measured against.
    pub fn reference(&self) -> &MiniMindForCausalLM {
        &self.reference
    }

    /// `G` completions of every prompt, decoded together.
    fn sample(&self, model: &MiniMindForCausalLM, batch: &GrpoBatch) -> Result<Vec<Completion>> {
        let g = self.rollout.group;
        let longest = batch.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let slots = batch.prompts.len() * g;
        let mut batcher = Batcher::new(model, slots, longest + self.rollout.max_new_tokens + 1, &self.stop_ids)?;
        let mut running: HashMap<u64, Completion> = HashMap::new();
        let mut done = Vec::with_capacity(slots);
        for (p, prompt) in batch.prompts.iter().enumerate() {
            for j in 0..g {
                let params = SamplingParams {
                    temperature: self.rollout.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    repetition_penalty: 1.0,
                    seed: batch.seed.wrapping_add((p * g + j) as u64),
                };
                let Some((id, events)) =
                    batcher.join(&prompt.ids, self.rollout.max_new_tokens, Sampler::new(params)?)?
                else {
                    bail!("no free rollout slot");
                };
                running.insert(id, Completion { prompt: p, tokens: Vec::new(), stopped: false });
                self.take(id, events, &mut running, &mut done);
            }
        }
        while batcher.active() > 0 {
            for (id, events) in batcher.step()? {
                self.take(id, events, &mut running, &mut done);
            }
        }
        done.sort_by_key(|c: &Completion| c.prompt);
        Ok(done)
    }

    /// Adds a sequence's decoded tokens to its completion; a finished one moves to `done`.
    fn take(&self, id: u64, events: Vec<Decoded>, running: &mut HashMap<u64, Completion>, done: &mut Vec<Completion>) {
        for event in events {
            match event {
                Decoded::Token(t) => running.get_mut(&id).into_iter().for_each(|c| c.tokens.push(t)),
                Decoded::Finished(reason) => {
                    if let Some(mut c) = running.remove(&id) {
                        // The batcher does not hand out the stop token it sampled; the chat template's
                        // end of turn (the first stop id) is what a finished answer ends with.
                        if reason == FinishReason::Stop {
                            c.tokens.push(self.stop_ids[0]);
                            c.stopped = true;
                        }
                        done.push(c);
                    }
                }
                Decoded::Logprobs(_) => {}
            }
        }
    }

    /// Each completion's reward and its components' means (logged).
    fn rewards(&self, batch: &GrpoBatch, completions: &[Completion]) -> Result<(Vec<f64>, Vec<(String, f64)>)> {
        let texts: Vec<String> = completions
            .iter()
            .map(|c| self.tokenizer.decode(if c.stopped { &c.tokens[..c.tokens.len() - 1] } else { &c.tokens }, true))
            .collect::<Result<_>>()?;
        let (mut total, mut rule_sum, mut gt_sum, mut gt_rows) = (Vec::new(), 0.0, 0.0, 0usize);
        for (c, text) in completions.iter().zip(&texts) {
            let rule = rewards::minimind_rule_reward(text);
            let mut reward = self.rollout.rule_weight * rule;
            rule_sum += rule;
            if let Some(gt) = &batch.prompts[c.prompt].gt {
                let matched = rewards::gt_match(text, gt);
                reward += self.rollout.gt_weight * matched;
                gt_sum += matched;
                gt_rows += 1;
            }
            total.push(reward);
        }
        let n = completions.len() as f64;
        let mut logged = vec![("reward_rules".into(), rule_sum / n)];
        if gt_rows > 0 {
            logged.push(("gt_accuracy".into(), gt_sum / gt_rows as f64));
        }
        if let Some((scorer, weight)) = &self.scorer {
            let items: Vec<rewards::ScoreItem> = completions
                .iter()
                .zip(&texts)
                .map(|(c, text)| {
                    let prompt = &batch.prompts[c.prompt];
                    rewards::ScoreItem { prompt: &prompt.text, completion: text, gt: prompt.gt.as_deref() }
                })
                .collect();
            add_scores(&mut total, &scorer.score(&items)?, *weight, "reward_external", &mut logged);
        }
        if let Some((rm, weight)) = &self.reward_model {
            let sequences: Vec<Vec<u32>> =
                completions.iter().map(|c| [&batch.prompts[c.prompt].ids[..], &c.tokens[..]].concat()).collect();
            add_scores(&mut total, &rm.score(&sequences)?, *weight, "reward_model", &mut logged);
        }
        Ok((total, logged))
    }

    /// The completions as training rows: prompt then completion, padded to one length; only the
    /// completion's tokens through its first stop are supervised.
    fn rows(&self, batch: &GrpoBatch, completions: &[Completion]) -> Result<LmBatch> {
        let t = completions.iter().map(|c| batch.prompts[c.prompt].ids.len() + c.tokens.len()).max().unwrap_or(0);
        let rows: Vec<EncodedRow> = completions
            .iter()
            .map(|c| {
                let prompt = &batch.prompts[c.prompt].ids;
                let mut ids: Vec<u32> = prompt.iter().chain(&c.tokens).copied().collect();
                let mut mask: Vec<f32> =
                    std::iter::repeat_n(0.0, prompt.len()).chain(completion_mask(&c.tokens, &self.stop_ids)).collect();
                ids.resize(t, 0);
                mask.resize(t, 0.0);
                EncodedRow { ids, mask, norm: None }
            })
            .collect();
        LmBatch::from_encoded(&rows, &self.device)
    }
}

/// Adds `weight × score` to each completion's reward and logs the scores' mean as `name`.
fn add_scores(total: &mut [f64], scores: &[f64], weight: f64, name: &str, logged: &mut Vec<(String, f64)>) {
    for (reward, score) in total.iter_mut().zip(scores) {
        *reward += weight * score;
    }
    logged.push((name.into(), mean_std(scores).0));
}

/// Each sampled token's log-probability `[N, T]` under `model` (with gradient when it is trained).
fn token_log_probs(model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<(Tensor, Tensor)> {
    let out = model.forward_train(&batch.x, dropout)?;
    let (n, t) = batch.x.dims2()?;
    let logp = ops::target_log_probs(&out.logits, &batch.y.flatten_all()?)?.reshape((n, t))?;
    Ok((logp, out.moe.add_aux(Tensor::new(0f32, model.device())?)?))
}

impl Stage for GrpoStage<'_> {
    type Batch = GrpoBatch;

    fn name(&self) -> &str {
        "grpo"
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.batches_per_epoch()
    }

    fn next_batch(&mut self) -> Result<GrpoBatch> {
        let DataCursor { epoch, row } = self.data.cursor();
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add((epoch as u64) << 32 | row as u64);
        Ok(GrpoBatch { prompts: self.data.next_rows()?, seed })
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &GrpoBatch, dropout: DropoutSeed) -> Result<Tensor> {
        let completions = self.sample(model, batch)?;
        let (rewards, mut logged) = self.rewards(batch, &completions)?;
        let advantages = group_advantages(&rewards, self.rollout.group)?;
        let rows = self.rows(batch, &completions)?;
        let (logp, aux) = token_log_probs(model, &rows, dropout)?;
        let (reference, _) = token_log_probs(&self.reference, &rows, DropoutSeed::default())?;
        let advantages =
            Tensor::from_vec(advantages.iter().map(|&a| a as f32).collect(), advantages.len(), &self.device)?;
        let (loss, stats) =
            policy_loss(&logp, &logp.detach(), &reference.detach(), &advantages, &rows.mask, &self.loss)?;
        let (mean, std) = mean_std(&rewards);
        let length = completions.iter().map(|c| c.tokens.len()).sum::<usize>() as f64 / rewards.len() as f64;
        logged.splice(0..0, [("reward".into(), mean), ("reward_std".into(), std)]);
        logged.extend([
            ("kl".into(), stats.kl),
            ("clip_fraction".into(), stats.clip_fraction),
            ("length".into(), length),
        ]);
        *self.last.borrow_mut() = logged;
        self.last_tokens.set(rows.tokens());
        Ok((loss + aux)?)
    }

    fn tokens(&self, _batch: &GrpoBatch) -> usize {
        self.last_tokens.get()
    }

    fn cursor(&self) -> DataCursor {
        self.data.cursor()
    }

    fn seek(&mut self, cursor: DataCursor) {
        self.data.seek(cursor)
    }

    fn batch_metrics(&self) -> Vec<(String, f64)> {
        self.last.borrow().clone()
    }

    fn index(&self) -> Option<&JsonlIndex> {
        Some(&self.data.index)
    }
}

/// `minimind grpo`: what to train on and how.
#[derive(Debug, Clone)]
pub struct GrpoConfig {
    /// The model folder to start from (an SFT model); also the frozen reference.
    pub model: PathBuf,
    /// RLAIF prompts ([`crate::data::rl`]).
    pub data: PathBuf,
    pub rollout: RolloutConfig,
    pub loss: PolicyLossConfig,
    pub train: TrainConfig,
}

/// GRPO / CISPO from `model`, its frozen copy as the reference.
pub fn grpo(c: &GrpoConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    if !(c.loss.beta >= 0.0 && c.loss.beta.is_finite()) {
        bail!("--beta must be a number ≥ 0, got {}", c.loss.beta);
    }
    let tokenizer = Tokenizer::load(&c.model)?;
    let (reference, _) = checkpoint::load_model(&c.model, &t.device, t.precision.dtype(), false)?;
    let max_prompt = t.max_seq_len(&GRPO, &reference.config)?;
    let data = RlData::open(&c.data, t.skip_bad_lines, &tokenizer, max_prompt, t.batch_size(&GRPO)?, t.seed)?;
    let mut stage = GrpoStage::new(data, &tokenizer, reference, c.rollout.clone(), c.loss, t.seed, t.device.clone())?;
    let (_, start) = from_model_folder(&c.model, &t.device)?;
    run_stage(t, &GRPO, &mut stage, start)
}
