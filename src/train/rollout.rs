//! Rollouts for reinforcement learning: sampling completions of prompts from the current policy by
//! batched decoding (the serving engine's [`Batcher`]), scoring them, and laying them out as
//! training rows. Shared by GRPO ([`super::grpo`]) and PPO ([`super::ppo`]).
//!
//! A completion's reward is a weighted sum of MiniMind's rule reward (length, thinking format,
//! repetition: [`rewards::minimind_rule_reward`]), for rows with a `gt` the answer's match with it
//! ([`rewards::gt_match`]), a reward model's score ([`RewardModel`]) and an external scorer's
//! ([`rewards::ExternalScorer`]).

use super::agent::ToolSet;
use super::policy_loss::{completion_mask, mean_std};
use super::reward_model::RewardModel;
use super::rewards;
use crate::data::rl::RlPrompt;
use crate::data::{EncodedRow, LmBatch};
use crate::infer::batch::{Batcher, Decoded};
use crate::infer::{Sampler, SamplingParams};
use crate::model::MiniMindForCausalLM;
use crate::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::path::PathBuf;

/// A reward component's name and its mean over a batch.
pub type NamedMean = (String, f64);

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
    /// Tools the policy may call between turns ([`super::agent`]); none for single-turn rollouts.
    pub tools: Option<ToolSet>,
    /// Most tool rounds per rollout (3).
    pub max_tool_turns: usize,
    /// Weight of the tool reward ([`ToolUse::score`]).
    pub tool_weight: f64,
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
            tools: None,
            max_tool_turns: 3,
            tool_weight: 0.5,
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// Its prompt's index in the batch.
    pub prompt: usize,
    pub tokens: Vec<u32>,
    /// Whether it ended with a stop token (appended to `tokens`) rather than its budget.
    pub stopped: bool,
    /// Which tokens the loss counts, when not all through the first stop: a tool-use rollout
    /// counts its sampled turns and not the tool responses between them.
    pub mask: Option<Vec<f32>>,
    /// The final answer (the last turn) of a tool-use rollout.
    pub answer: Option<String>,
    /// Its tool calls, in a tool-use rollout.
    pub tool_use: Option<ToolUse>,
}

/// How a rollout used its tools.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToolUse {
    pub calls: usize,
    /// Calls that could not be read (a `<tool_call>` block that is not a call) or that the tool refused.
    pub failed: usize,
}

impl ToolUse {
    /// The tool reward: −1 when a call failed, +1 when calls were made and all worked, else 0.
    pub fn score(&self) -> f64 {
        match (self.failed, self.calls) {
            (f, _) if f > 0 => -1.0,
            (_, c) if c > 0 => 1.0,
            _ => 0.0,
        }
    }
}

/// A micro-batch of prompts and the seed its rollouts sample with (drawn from the data position,
/// so a resumed run samples what the uninterrupted one would have).
pub struct PromptBatch {
    pub prompts: Vec<RlPrompt>,
    pub seed: u64,
    /// The first prompt's position in the global batch (data parallelism: a rank's part starts
    /// there), so every prompt samples with the seeds it has in a one-process run.
    pub first: usize,
}

impl PromptBatch {
    /// The batch at the data position `cursor` of a run seeded `seed`.
    pub fn at(prompts: Vec<RlPrompt>, seed: u64, cursor: crate::data::DataCursor) -> Self {
        let seed = seed.wrapping_mul(1_000_003).wrapping_add((cursor.epoch as u64) << 32 | cursor.row as u64);
        Self { prompts, seed, first: 0 }
    }
}

/// Samples and scores completions.
pub struct Rollouts<'a> {
    pub(super) tokenizer: &'a Tokenizer,
    pub config: RolloutConfig,
    pub(super) stop_ids: Vec<u32>,
    scorer: Option<(rewards::ExternalScorer, f64)>,
    reward_model: Option<(RewardModel, f64)>,
    device: Device,
}

impl<'a> Rollouts<'a> {
    /// Checks the settings against a policy of `vocab_size` tokens and loads the reward sources.
    pub fn new(tokenizer: &'a Tokenizer, config: RolloutConfig, vocab_size: usize, device: Device) -> Result<Self> {
        if config.group == 0
            || config.max_new_tokens == 0
            || !(config.temperature > 0.0 && config.temperature.is_finite())
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
        let rollouts = Self { tokenizer, stop_ids: tokenizer.stop_ids()?, config, scorer, reward_model, device };
        if rollouts.config.tools.is_some() {
            rollouts.check_tool_template()?;
        }
        Ok(rollouts)
    }

    /// `group` completions of every prompt, decoded together (through tool rounds when the
    /// rollouts have tools, see [`super::agent`]).
    pub fn sample(&self, model: &MiniMindForCausalLM, batch: &PromptBatch) -> Result<Vec<Completion>> {
        if let Some(tools) = &self.config.tools {
            return self.sample_with_tools(model, batch, tools);
        }
        let jobs = self.first_turn_jobs(batch);
        let decoded =
            self.decode(model, &jobs.iter().map(|(p, seed)| (&batch.prompts[*p].ids[..], *seed)).collect::<Vec<_>>())?;
        Ok(jobs
            .iter()
            .zip(decoded)
            .map(|(&(prompt, _), (tokens, stopped))| Completion { prompt, tokens, stopped, ..Completion::default() })
            .collect())
    }

    /// Every prompt `group` times, each with its own sampling seed.
    pub(super) fn first_turn_jobs(&self, batch: &PromptBatch) -> Vec<(usize, u64)> {
        let g = self.config.group;
        (0..batch.prompts.len() * g).map(|i| (i / g, batch.seed.wrapping_add((batch.first * g + i) as u64))).collect()
    }

    /// Samples a continuation of each sequence (ids so far, seed), all decoded together: the new
    /// tokens — ending with the end of turn when a stop token was sampled — and whether it stopped.
    pub(super) fn decode(&self, model: &MiniMindForCausalLM, jobs: &[(&[u32], u64)]) -> Result<Vec<(Vec<u32>, bool)>> {
        let mut out = vec![(Vec::new(), false); jobs.len()];
        if jobs.is_empty() {
            return Ok(out);
        }
        let longest = jobs.iter().map(|j| j.0.len()).max().unwrap_or(0);
        let mut batcher = Batcher::new(model, jobs.len(), longest + self.config.max_new_tokens + 1, &self.stop_ids)?;
        let mut row_of = HashMap::new();
        for (i, &(ids, seed)) in jobs.iter().enumerate() {
            let params = SamplingParams {
                temperature: self.config.temperature,
                top_k: 0,
                top_p: 1.0,
                repetition_penalty: 1.0,
                seed,
            };
            let (id, events) = batcher
                .join(ids, self.config.max_new_tokens, Sampler::new(params)?)?
                .context("no free rollout slot")?;
            row_of.insert(id, i);
            self.record(&mut out[i], events);
        }
        while batcher.active() > 0 {
            for (id, events) in batcher.step()? {
                self.record(&mut out[row_of[&id]], events);
            }
        }
        Ok(out)
    }

    fn record(&self, (tokens, stopped): &mut (Vec<u32>, bool), events: Vec<Decoded>) {
        for event in events {
            match event {
                Decoded::Token(t) => tokens.push(t),
                // The stop token the policy sampled ends the answer (and is trained on).
                Decoded::Stopped(t) => {
                    tokens.push(t);
                    *stopped = true;
                }
                Decoded::Finished(_) | Decoded::Logprobs(_) => {}
            }
        }
    }

    /// The completion's answer text: its last turn without the end-of-turn token.
    pub(super) fn answer_text(&self, c: &Completion) -> Result<String> {
        match &c.answer {
            Some(text) => Ok(text.clone()),
            None => self.tokenizer.decode(if c.stopped { &c.tokens[..c.tokens.len() - 1] } else { &c.tokens }, true),
        }
    }

    /// Each completion's reward and its components' means (logged).
    pub fn rewards(&self, batch: &PromptBatch, completions: &[Completion]) -> Result<(Vec<f64>, Vec<NamedMean>)> {
        let texts: Vec<String> = completions.iter().map(|c| self.answer_text(c)).collect::<Result<_>>()?;
        let mut total = vec![0.0; completions.len()];
        let mut logged = Vec::new();
        let rules: Vec<f64> = texts.iter().map(|t| rewards::minimind_rule_reward(t)).collect();
        add_scores(&mut total, &rules, self.config.rule_weight, "reward_rules", &mut logged);
        // The ground-truth match, over the rows that have a gt (logged as an accuracy).
        let matches: Vec<Option<f64>> = completions
            .iter()
            .zip(&texts)
            .map(|(c, text)| batch.prompts[c.prompt].gt.as_ref().map(|gt| rewards::gt_match(text, gt)))
            .collect();
        let matched: Vec<f64> = matches.iter().flatten().copied().collect();
        if !matched.is_empty() {
            for (reward, m) in total.iter_mut().zip(&matches) {
                *reward += self.config.gt_weight * m.unwrap_or(0.0);
            }
            logged.push(("gt_accuracy".into(), mean_std(&matched).0));
        }
        if self.config.tools.is_some() {
            let scores: Vec<f64> = completions.iter().map(|c| c.tool_use.map_or(0.0, |u| u.score())).collect();
            add_scores(&mut total, &scores, self.config.tool_weight, "reward_tools", &mut logged);
            let calls = completions.iter().map(|c| c.tool_use.map_or(0, |u| u.calls)).sum::<usize>();
            logged.push(("tool_calls".into(), calls as f64 / completions.len().max(1) as f64));
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
                let sampled = c.mask.clone().unwrap_or_else(|| completion_mask(&c.tokens, &self.stop_ids));
                let mut mask: Vec<f32> = std::iter::repeat_n(0.0, prompt.len()).chain(sampled).collect();
                ids.resize(t, 0);
                mask.resize(t, 0.0);
                EncodedRow { ids, mask, norm: None }
            })
            .collect();
        LmBatch::from_encoded(&rows, &self.device)
    }
}

/// Adds `weight × score` to each completion's reward and logs the scores' mean as `name` and their
/// spread as `name_std`.
fn add_scores(total: &mut [f64], scores: &[f64], weight: f64, name: &str, logged: &mut Vec<(String, f64)>) {
    for (reward, score) in total.iter_mut().zip(scores) {
        *reward += weight * score;
    }
    let (mean, std) = mean_std(scores);
    logged.extend([(name.into(), mean), (format!("{name}_std"), std)]);
}
