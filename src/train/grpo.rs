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

use super::policy_loss::{group_advantages, mean_std, policy_loss, PolicyLossConfig};
pub use super::rollout::RolloutConfig;
use super::rollout::{PromptBatch, Rollouts};
use super::run::{from_model_folder, run_stage, TrainConfig, GRPO};
use super::trainer::{Stage, TrainSummary};
use crate::data::rl::RlData;
use crate::data::{DataCursor, JsonlIndex, LmBatch};
use crate::model::{checkpoint, DropoutSeed, MiniMindForCausalLM};
use crate::{ops, Tokenizer};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;

/// Prompts, rollouts and the policy loss against a frozen reference.
pub struct GrpoStage<'a> {
    data: RlData<'a>,
    rollouts: Rollouts<'a>,
    reference: MiniMindForCausalLM,
    loss: PolicyLossConfig,
    seed: u64,
    device: Device,
    /// Positions the last loss processed, and its logged figures.
    last_tokens: Cell<usize>,
    last: RefCell<Vec<(String, f64)>>,
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
        let rollouts = Rollouts::new(tokenizer, rollout, reference.config.vocab_size, device.clone())?;
        Ok(Self {
            data,
            rollouts,
            reference,
            loss,
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
}

/// Each sampled token's log-probability `[N, T]` under `model` (with gradient when it is trained).
pub(crate) fn token_log_probs(
    model: &MiniMindForCausalLM,
    batch: &LmBatch,
    dropout: DropoutSeed,
) -> Result<(Tensor, Tensor)> {
    let out = model.forward_train(&batch.x, dropout)?;
    let (n, t) = batch.x.dims2()?;
    let logp = ops::target_log_probs(&out.logits, &batch.y.flatten_all()?)?.reshape((n, t))?;
    Ok((logp, out.moe.add_aux(Tensor::new(0f32, model.device())?)?))
}

impl Stage for GrpoStage<'_> {
    type Batch = PromptBatch;

    fn name(&self) -> &str {
        "grpo"
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.batches_per_epoch()
    }

    fn next_batch(&mut self) -> Result<PromptBatch> {
        let cursor = self.data.cursor();
        let prompts = self.data.next_rows()?;
        Ok(PromptBatch { first: self.data.shard_start(), ..PromptBatch::at(prompts, self.seed, cursor) })
    }

    /// The loss is a mean over completions.
    fn weight(&self, batch: &PromptBatch) -> f64 {
        (batch.prompts.len() * self.rollouts.config.group) as f64
    }

    /// Data parallelism: each rank rolls out its part of every global batch of prompts, with the
    /// seeds those prompts have in one process. Every rank must log the same figures, so the rows
    /// must all have a `gt` or none of them.
    fn shard(&mut self, rank: usize, world: usize) -> Result<()> {
        if world > 1 {
            let mut with_gt = 0;
            for i in 0..self.data.index.len() {
                let line = self.data.index.read(i)?;
                with_gt += usize::from(crate::data::rl::parse_rl_row(&line).is_ok_and(|(_, gt)| gt.is_some()));
            }
            if with_gt != 0 && with_gt != self.data.index.len() {
                bail!(
                    "data parallel GRPO needs every row of {} to have a \"gt\" or none ({with_gt} of {} have one)",
                    self.data.index.path.display(),
                    self.data.index.len()
                );
            }
        }
        self.data.set_shard(rank, world);
        Ok(())
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &PromptBatch, dropout: DropoutSeed) -> Result<Tensor> {
        let completions = self.rollouts.sample(model, batch)?;
        let (rewards, mut logged) = self.rollouts.rewards(batch, &completions)?;
        let advantages = group_advantages(&rewards, self.rollouts.config.group)?;
        let rows = self.rollouts.rows(batch, &completions)?;
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

    fn tokens(&self, _batch: &PromptBatch) -> usize {
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
    let tools = c.rollout.tools.as_ref().map(|t| t.specs());
    let batch = t.batch_size(&GRPO)?;
    let data = RlData::open_with_tools(&c.data, t.skip_bad_lines, &tokenizer, max_prompt, batch, t.seed, tools)?;
    let mut stage = GrpoStage::new(data, &tokenizer, reference, c.rollout.clone(), c.loss, t.seed, t.device.clone())?;
    let (_, start) = from_model_folder(&c.model, &t.device)?;
    run_stage(t, &GRPO, &mut stage, start)
}
