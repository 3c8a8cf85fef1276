//! Rollouts for reinforcement learning: sampling completions of prompts from the current policy by
//! batched decoding (the serving engine's [`Batcher`]), scoring them, and laying them out as
//! training rows. Shared by GRPO ([`super::grpo`]) and PPO ([`super::ppo`]).
//!
//! A completion's reward is a weighted sum of MiniMind's rule reward (length, thinking format,
//! repetition: [`rewards::minimind_rule_reward`]), for rows with a `gt` the answer's match with it
//! ([`rewards::gt_match`]), a reward model's score ([`RewardModel`]) and an external scorer's
//! ([`rewards::ExternalScorer`]).

use super::policy_loss::{completion_mask, mean_std};
use super::reward_model::RewardModel;
use super::rewards;
use crate::data::rl::RlPrompt;
use crate::data::{EncodedRow, LmBatch};
use crate::infer::batch::{Batcher, Decoded};
use crate::infer::{FinishReason, Sampler, SamplingParams};
use crate::model::MiniMindForCausalLM;
use crate::Tokenizer;
use anyhow::{bail, Result};
use candle_core::Device;
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
pub struct Completion {
    /// Its prompt's index in the batch.
    pub prompt: usize,
    pub tokens: Vec<u32>,
    /// Whether it ended with a stop token (appended to `tokens`) rather than its budget.
    pub stopped: bool,
}

/// A micro-batch of prompts and the seed its rollouts sample with (drawn from the data position,
/// so a resumed run samples what the uninterrupted one would have).
pub struct PromptBatch {
    pub prompts: Vec<RlPrompt>,
    pub seed: u64,
}

impl PromptBatch {
    /// The batch at the data position `cursor` of a run seeded `seed`.
    pub fn at(prompts: Vec<RlPrompt>, seed: u64, cursor: crate::data::DataCursor) -> Self {
        let seed = seed.wrapping_mul(1_000_003).wrapping_add((cursor.epoch as u64) << 32 | cursor.row as u64);
        Self { prompts, seed }
    }
}

/// Samples and scores completions.
pub struct Rollouts<'a> {
    tokenizer: &'a Tokenizer,
    pub config: RolloutConfig,
    stop_ids: Vec<u32>,
    scorer: Option<(rewards::ExternalScorer, f64)>,
    reward_model: Option<(RewardModel, f64)>,
    device: Device,
}

impl<'a> Rollouts<'a> {
    /// Checks the settings against a policy of `vocab_size` tokens and loads the reward sources.
    pub fn new(tokenizer: &'a Tokenizer, config: RolloutConfig, vocab_size: usize, device: Device) -> Result<Self> {
        if config.group == 0 || config.max_new_tokens == 0 || !(config.temperature > 0.0 && config.temperature.is_finite())
        {
            bail!("--group and --max-new-tokens must be at least 1 and --temperature positive");
        }
        if tokenizer.vocab_size() > vocab_size {
            bail!(
                "the tokenizer has {} tokens but the model only {vocab_size}: use the model folder's own tokenizer",
                tokenizer.vocab_size()
            );
        }
        let scorer = match &config.reward_url {
            Some((url, weight)) => Some((rewards::ExternalScorer::new(url)?, *weight)),
            None => None,
        };
        let reward_model = match &config.reward_model {
            Some((dir, weight)) => {
                let rm = RewardModel::load(dir, &device)?;
                if rm.lm.config.vocab_size != vocab_size {
                    bail!("the reward model {} has another vocabulary than the policy", dir.display());
                }
                Some((rm, *weight))
            }
            None => None,
        };
        Ok(Self { tokenizer, stop_ids: tokenizer.stop_ids()?, config, scorer, reward_model, device })
    }

    /// `group` completions of every prompt, decoded together.
    pub fn sample(&self, model: &MiniMindForCausalLM, batch: &PromptBatch) -> Result<Vec<Completion>> {
        let g = self.config.group;
        let longest = batch.prompts.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let slots = batch.prompts.len() * g;
        let mut batcher = Batcher::new(model, slots, longest + self.config.max_new_tokens + 1, &self.stop_ids)?;
        let mut running: HashMap<u64, Completion> = HashMap::new();
        let mut done = Vec::with_capacity(slots);
        for (p, prompt) in batch.prompts.iter().enumerate() {
            for j in 0..g {
                let params = SamplingParams {
                    temperature: self.config.temperature,
                    top_k: 0,
                    top_p: 1.0,
                    repetition_penalty: 1.0,
                    seed: batch.seed.wrapping_add((p * g + j) as u64),
                };
                let Some((id, events)) =
                    batcher.join(&prompt.ids, self.config.max_new_tokens, Sampler::new(params)?)?
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
    pub fn rewards(&self, batch: &PromptBatch, completions: &[Completion]) -> Result<(Vec<f64>, Vec<(String, f64)>)> {
        let texts: Vec<String> = completions
            .iter()
            .map(|c| self.tokenizer.decode(if c.stopped { &c.tokens[..c.tokens.len() - 1] } else { &c.tokens }, true))
            .collect::<Result<_>>()?;
        let (mut total, mut rule_sum, mut gt_sum, mut gt_rows) = (Vec::new(), 0.0, 0.0, 0usize);
        for (c, text) in completions.iter().zip(&texts) {
            let rule = rewards::minimind_rule_reward(text);
            let mut reward = self.config.rule_weight * rule;
            rule_sum += rule;
            if let Some(gt) = &batch.prompts[c.prompt].gt {
                let matched = rewards::gt_match(text, gt);
                reward += self.config.gt_weight * matched;
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
    pub fn rows(&self, batch: &PromptBatch, completions: &[Completion]) -> Result<LmBatch> {
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

