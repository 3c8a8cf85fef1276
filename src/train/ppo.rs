//! `minimind ppo`: proximal policy optimization with a critic, as minimind-3's `train_ppo.py`, on
//! the one training loop.
//!
//! A rollout is one completion per prompt (more with `--group`), sampled from the current policy and
//! scored by the same reward sources as GRPO ([`super::rollout`]). The critic is a value head
//! `V(h) = w·h + b` (`value_head`, Linear d → 1 with bias) on the policy's own final hidden states —
//! one backbone for actor and critic, so PPO costs one model's memory, not two. The value loss trains
//! the head alone (the hidden states it reads are detached): a critic's regression gradient through a
//! shared backbone would pull the actor's features toward predicting returns (measured: a micro model
//! forgot how to answer and collapsed to one-token replies). Per rollout:
//!
//! - the reward sits on the completion's last counted token; generalized advantage estimation
//!   ([`gae`], γ = 1, λ = 0.95) over the old values gives per-token advantages (whitened over the
//!   batch) and returns;
//! - **`--ppo-epochs` updates** replay the rollout, one optimizer step each: the clipped surrogate
//!   `−min(ratio·A, clip(ratio, 1 ± ε)·A)` plus `kl_coef`·k3 KL to the frozen reference
//!   ([`policy_loss`]) plus `vf_coef`·the clipped value loss ([`value_loss`]); before each further
//!   update the approximate KL of the current policy to the sampling one (`½·mean((logπ −
//!   logπ_old)²)`) is checked, and past `--target-kl` the rollout is dropped and that step rolls out
//!   the next prompts instead.
//!
//! The rollout under replay is carried in the checkpoint ([`Stage::carried`]), so `--resume` continues
//! exactly. The model folder written is the actor alone (a plain model folder); the value head lives
//! in the run's `trainer_state.safetensors`.

use super::grpo::{token_log_probs, RolloutConfig};
use super::policy_loss::{approx_kl, gae, policy_loss, value_loss, whiten, PolicyLossConfig, PolicyLossKind};
use super::reward_model::ScoreHead;
use super::rollout::{PromptBatch, Rollouts};
use super::run::{run_stage, Start, TrainConfig, PPO};
use super::trainer::{ModelOutput, Stage, TrainSummary};
use crate::data::rl::RlData;
use crate::data::{DataCursor, JsonlIndex, LmBatch};
use crate::model::params::WeightBuilder;
use crate::model::{checkpoint, DropoutSeed, MiniMindForCausalLM};
use crate::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

/// The value head's tensor names (minimind-3's critic head).
pub const VALUE_HEAD: [&str; 2] = ["value_head.weight", "value_head.bias"];

/// PPO's coefficients (minimind-3's in [`Default`]).
#[derive(Debug, Clone, Copy)]
pub struct PpoConfig {
    /// Policy ratio clip ε (0.2).
    pub clip: f64,
    /// Value clip around the old values (0.2).
    pub value_clip: f64,
    /// Weight of the value loss (0.5).
    pub vf_coef: f64,
    /// Weight of the k3 KL to the reference (0.02).
    pub kl_coef: f64,
    /// GAE discount γ (1.0) and λ (0.95).
    pub gamma: f64,
    pub lambda: f64,
    /// Updates per rollout (2).
    pub epochs: usize,
    /// Skip the rollout's remaining updates once the approximate KL passes this (0.25).
    pub target_kl: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            clip: 0.2,
            value_clip: 0.2,
            vf_coef: 0.5,
            kl_coef: 0.02,
            gamma: 1.0,
            lambda: 0.95,
            epochs: 2,
            target_kl: 0.25,
        }
    }
}

/// A scored rollout as training rows, with everything the updates hold fixed.
struct Rollout {
    rows: LmBatch,
    old_logp: Tensor,
    ref_logp: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    /// Updates done on it.
    updates: usize,
    /// Reward mean and spread, mean length (logged on every update).
    summary: [f64; 3],
}

const ROLLOUT_TENSORS: [&str; 8] = ["x", "y", "mask", "old_logp", "ref_logp", "old_values", "advantages", "returns"];

/// The policy's pass over a rollout's rows: each sampled token's log-probability and each
/// position's value `[N, T]`, and the MoE aux loss.
struct PolicyPass {
    logp: Tensor,
    values: Tensor,
    aux: Tensor,
}

/// A step's work: new prompts to roll out, or another update on the carried rollout — unless the
/// policy has already moved past `--target-kl` from the one that sampled it; then the next prompts
/// are rolled out instead.
pub enum PpoBatch {
    Fresh(PromptBatch),
    Replay,
}

pub struct PpoStage<'a> {
    data: RlData<'a>,
    rollouts: Rollouts<'a>,
    reference: MiniMindForCausalLM,
    head: Rc<RefCell<Option<ScoreHead>>>,
    ppo: PpoConfig,
    seed: u64,
    device: Device,
    carried: RefCell<Option<Rollout>>,
    /// The data position after the next prompts, once a refused replay has used them.
    fallback_taken: Cell<Option<DataCursor>>,
    last_tokens: Cell<usize>,
    last: RefCell<Vec<(String, f64)>>,
}

impl<'a> PpoStage<'a> {
    /// `head` is filled in when the trainer builds the model (with the value head beside it).
    #[allow(clippy::too_many_arguments)] // a stage's parts, each named at the one call site
    pub fn new(
        data: RlData<'a>,
        tokenizer: &'a Tokenizer,
        reference: MiniMindForCausalLM,
        rollout: RolloutConfig,
        ppo: PpoConfig,
        head: Rc<RefCell<Option<ScoreHead>>>,
        seed: u64,
        device: Device,
    ) -> Result<Self> {
        if ppo.epochs == 0 || !(ppo.clip > 0.0 && ppo.value_clip > 0.0 && ppo.kl_coef >= 0.0 && ppo.vf_coef >= 0.0) {
            bail!("--ppo-epochs must be ≥ 1, the clip ranges positive and the coefficients ≥ 0");
        }
        let rollouts = Rollouts::new(tokenizer, rollout, reference.config.vocab_size, device.clone())?;
        Ok(Self {
            data,
            rollouts,
            reference,
            head,
            ppo,
            seed,
            device,
            carried: RefCell::new(None),
            fallback_taken: Cell::new(None),
            last_tokens: Cell::new(0),
            last: RefCell::new(Vec::new()),
        })
    }

    /// Samples and scores new completions and turns them into a rollout, with the policy's pass
    /// over it: that pass's log-probabilities and values, detached, are the rollout's old ones (the
    /// policy before any update on it), beside the reference's, GAE advantages and returns.
    fn roll_out(
        &self,
        model: &MiniMindForCausalLM,
        batch: &PromptBatch,
        dropout: DropoutSeed,
    ) -> Result<(Rollout, PolicyPass)> {
        let completions = self.rollouts.sample(model, batch)?;
        let (rewards, _) = self.rollouts.rewards(batch, &completions)?;
        let rows = self.rollouts.rows(batch, &completions)?;
        let pass = self.pass(model, &rows, dropout)?;
        let (old_logp, old_values) = (pass.logp.detach(), pass.values.detach());
        let (ref_logp, _) = token_log_probs(&self.reference, &rows, None)?;
        let (advantages, returns) = self.advantages(&rewards, &old_values, &rows.mask)?;
        let (mean, std) = super::policy_loss::mean_std(&rewards);
        let length = completions.iter().map(|c| c.tokens.len()).sum::<usize>() as f64 / completions.len() as f64;
        let rollout = Rollout {
            rows,
            old_logp,
            ref_logp: ref_logp.detach(),
            old_values,
            advantages,
            returns,
            updates: 0,
            summary: [mean, std, length],
        };
        Ok((rollout, pass))
    }

    /// The policy over a rollout's rows, with gradient.
    fn pass(&self, model: &MiniMindForCausalLM, rows: &LmBatch, dropout: DropoutSeed) -> Result<PolicyPass> {
        let out = model.forward_train(&rows.x, dropout)?;
        let (n, t) = rows.x.dims2()?;
        let logp = crate::ops::target_log_probs(&out.logits, &rows.y.flatten_all()?)?.reshape((n, t))?;
        // The critic reads the actor's features without moving them (see the module docs).
        let values = self.head()?.all_positions(&out.hidden.detach())?;
        let aux = out.moe.add_aux(Tensor::new(0f32, model.device())?)?;
        Ok(PolicyPass { logp, values, aux })
    }

    /// Per-token advantages (whitened over all counted tokens) and returns, `[N, T]` each: every
    /// completion's reward on its last counted token, GAE over its counted tokens' values.
    fn advantages(&self, rewards: &[f64], values: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let (values, mask): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (values.to_vec2()?, mask.to_vec2()?);
        let (n, t) = (mask.len(), mask.first().map_or(0, Vec::len));
        let (mut adv, mut ret) = (vec![vec![0f64; t]; n], vec![vec![0f64; t]; n]);
        let mut counted_adv = Vec::new();
        for i in 0..n {
            let positions: Vec<usize> = (0..t).filter(|&j| mask[i][j] > 0.0).collect();
            let Some(&last) = positions.last() else { continue };
            let r: Vec<f64> = positions.iter().map(|&j| if j == last { rewards[i] } else { 0.0 }).collect();
            let v: Vec<f64> = positions.iter().map(|&j| values[i][j] as f64).collect();
            let (a, g) = gae(&r, &v, self.ppo.gamma, self.ppo.lambda)?;
            for (k, &j) in positions.iter().enumerate() {
                (adv[i][j], ret[i][j]) = (a[k], g[k]);
            }
            counted_adv.extend(a);
        }
        let white = whiten(&counted_adv);
        let mut white = white.into_iter();
        for i in 0..n {
            for j in (0..t).filter(|&j| mask[i][j] > 0.0) {
                adv[i][j] = white.next().unwrap_or(0.0);
            }
        }
        let tensor = |m: Vec<Vec<f64>>| {
            Tensor::from_vec(m.into_iter().flatten().map(|v| v as f32).collect::<Vec<_>>(), (n, t), &self.device)
        };
        Ok((tensor(adv)?, tensor(ret)?))
    }

    fn head(&self) -> Result<ScoreHead> {
        self.head.borrow().clone().context("the value head was not built")
    }

    /// One update on `r` from the policy's pass over it: the clipped policy loss with the KL
    /// penalty, plus the clipped value loss.
    fn update(&self, r: &mut Rollout, pass: PolicyPass) -> Result<Tensor> {
        let PolicyPass { logp, values, aux } = pass;
        let pl = PolicyLossConfig {
            kind: PolicyLossKind::Grpo,
            beta: self.ppo.kl_coef,
            epsilon: self.ppo.clip,
            epsilon_high: 0.0,
        };
        let (policy, stats) = policy_loss(&logp, &r.old_logp, &r.ref_logp, &r.advantages, &r.rows.mask, &pl)?;
        let vf = value_loss(&values, &r.old_values, &r.returns, &r.rows.mask, self.ppo.value_clip)?;
        let kl_old = approx_kl(&logp, &r.old_logp, &r.rows.mask)?;
        r.updates += 1;
        let [reward, reward_std, length] = r.summary;
        *self.last.borrow_mut() = vec![
            ("reward".into(), reward),
            ("reward_std".into(), reward_std),
            ("policy_loss".into(), policy.to_scalar::<f32>()? as f64),
            ("value_loss".into(), vf.to_scalar::<f32>()? as f64),
            ("kl".into(), stats.kl),
            ("approx_kl".into(), kl_old),
            ("clip_fraction".into(), stats.clip_fraction),
            ("update".into(), r.updates as f64),
            ("length".into(), length),
        ];
        self.last_tokens.set(r.rows.tokens());
        Ok(((policy + (vf * self.ppo.vf_coef)?)? + aux)?)
    }

    /// Whether the carried rollout gets another update.
    fn replaying(&self) -> bool {
        self.carried.borrow().as_ref().is_some_and(|r| r.updates < self.ppo.epochs)
    }
}

impl Stage for PpoStage<'_> {
    type Batch = PpoBatch;

    fn name(&self) -> &str {
        "ppo"
    }

    /// Each batch of prompts is up to `epochs` steps (fewer when the KL ends its updates early, so a
    /// data epoch may take fewer steps than this counts; the data wraps around).
    fn batches_per_epoch(&self) -> usize {
        self.data.batches_per_epoch() * self.ppo.epochs
    }

    fn next_batch(&mut self) -> Result<PpoBatch> {
        if self.fallback_taken.take().is_some() {
            self.data.skip_rows();
        }
        if self.replaying() {
            return Ok(PpoBatch::Replay);
        }
        self.carried.replace(None);
        let cursor = self.data.cursor();
        Ok(PpoBatch::Fresh(PromptBatch::at(self.data.next_rows()?, self.seed, cursor)))
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &PpoBatch, dropout: DropoutSeed) -> Result<Tensor> {
        let (mut rollout, pass) = match batch {
            PpoBatch::Fresh(prompts) => self.roll_out(model, prompts, dropout)?,
            PpoBatch::Replay => {
                let carried = self.carried.borrow_mut().take().context("no rollout to replay")?;
                let pass = self.pass(model, &carried.rows, dropout)?;
                if approx_kl(&pass.logp, &carried.old_logp, &carried.rows.mask)? <= self.ppo.target_kl {
                    (carried, pass)
                } else {
                    // The policy already left the sampler's neighbourhood: no further update on it;
                    // the next prompts instead (the data moves past them at the next batch).
                    let (prompts, after) = self.data.peek_rows()?;
                    self.fallback_taken.set(Some(after));
                    self.roll_out(model, &PromptBatch::at(prompts, self.seed, self.data.cursor()), dropout)?
                }
            }
        };
        let loss = self.update(&mut rollout, pass)?;
        self.carried.replace(Some(rollout));
        Ok(loss)
    }

    fn tokens(&self, _batch: &PpoBatch) -> usize {
        self.last_tokens.get()
    }

    fn cursor(&self) -> DataCursor {
        self.fallback_taken.get().unwrap_or_else(|| self.data.cursor())
    }

    fn seek(&mut self, cursor: DataCursor) {
        self.fallback_taken.set(None);
        self.data.seek(cursor)
    }

    fn batch_metrics(&self) -> Vec<(String, f64)> {
        self.last.borrow().clone()
    }

    fn index(&self) -> Option<&JsonlIndex> {
        Some(&self.data.index)
    }

    fn carried(&self) -> Result<Vec<(String, Tensor)>> {
        let carried = self.carried.borrow();
        let Some(r) = carried.as_ref().filter(|_| self.replaying()) else { return Ok(Vec::new()) };
        let tensors =
            [&r.rows.x, &r.rows.y, &r.rows.mask, &r.old_logp, &r.ref_logp, &r.old_values, &r.advantages, &r.returns];
        let mut out: Vec<(String, Tensor)> =
            ROLLOUT_TENSORS.iter().zip(tensors).map(|(n, t)| (n.to_string(), t.clone())).collect();
        let [a, b, c] = r.summary;
        out.push(("summary".into(), Tensor::new(&[a, b, c, r.updates as f64], &self.device)?));
        Ok(out)
    }

    fn restore_carried(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let get =
            |name: &str| tensors.get(name).cloned().with_context(|| format!("the checkpoint's rollout has no {name}"));
        let summary: Vec<f64> = get("summary")?.to_dtype(DType::F64)?.to_vec1()?;
        let mask = get("mask")?;
        let weight = mask.sum_all()?.to_scalar::<f32>()?;
        let rows = LmBatch { x: get("x")?, y: get("y")?, mask, norm: None, weight };
        self.carried.replace(Some(Rollout {
            rows,
            old_logp: get("old_logp")?,
            ref_logp: get("ref_logp")?,
            old_values: get("old_values")?,
            advantages: get("advantages")?,
            returns: get("returns")?,
            updates: summary[3] as usize,
            summary: [summary[0], summary[1], summary[2]],
        }));
        Ok(())
    }
}

/// Adds a new value head to a model's tensors: `w ~ N(0, 1/(d+1))` seeded, `b = 0`.
pub fn add_value_head(tensors: &mut HashMap<String, Tensor>, d: usize, seed: u64, device: &Device) -> Result<()> {
    let head = ScoreHead::named(&WeightBuilder::random(seed, DType::F32, device, false), d, VALUE_HEAD)?;
    tensors.insert(VALUE_HEAD[0].into(), head.weight);
    tensors.insert(VALUE_HEAD[1].into(), head.bias);
    Ok(())
}

/// The actor (the language model) and the critic's value head from one set of weights.
pub fn actor_critic(config: &crate::ModelConfig, wb: &WeightBuilder) -> Result<(MiniMindForCausalLM, ScoreHead)> {
    let lm = MiniMindForCausalLM::new(config, wb, crate::model::params::InitScheme::Minimind2)?;
    Ok((lm, ScoreHead::named(wb, config.hidden_size, VALUE_HEAD)?))
}

/// `minimind ppo`: what to train on and how.
#[derive(Debug, Clone)]
pub struct PpoTrainConfig {
    /// The model folder to start from (an SFT model); also the frozen reference.
    pub model: PathBuf,
    /// RLAIF prompts ([`crate::data::rl`]).
    pub data: PathBuf,
    pub rollout: RolloutConfig,
    pub ppo: PpoConfig,
    pub train: TrainConfig,
}

/// PPO from `model` with a new value head, its frozen copy as the reference.
pub fn ppo(c: &PpoTrainConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    if t.accumulation_steps.unwrap_or(1) != 1 {
        bail!("ppo takes one optimizer step per update: --accumulation-steps must be 1");
    }
    let tokenizer = Tokenizer::load(&c.model)?;
    let (reference, _) = checkpoint::load_model(&c.model, &t.device, t.precision.dtype(), false)?;
    let (config, mut tensors) = checkpoint::model_tensors(&c.model, &t.device)?;
    add_value_head(&mut tensors, config.hidden_size, t.seed, &t.device)?;
    let fresh = WeightBuilder::loaded(tensors, DType::F32, &t.device, true);
    let max_prompt = t.max_seq_len(&PPO, &config)?;
    let tools = c.rollout.tools.as_ref().map(|t| t.specs());
    let batch = t.batch_size(&PPO)?;
    let data = RlData::open_with_tools(&c.data, t.skip_bad_lines, &tokenizer, max_prompt, batch, t.seed, tools)?;
    let head = Rc::new(RefCell::new(None));
    let mut stage =
        PpoStage::new(data, &tokenizer, reference, c.rollout.clone(), c.ppo, head.clone(), t.seed, t.device.clone())?;
    let shape = config.clone();
    let build = move |wb: &WeightBuilder| {
        let (lm, value_head) = actor_critic(&shape, wb)?;
        *head.borrow_mut() = Some(value_head);
        Ok(lm)
    };
    run_stage(
        t,
        &PPO,
        &mut stage,
        Start { fresh, build, output: ModelOutput::Full, tokenizer_dir: Some(c.model.clone()) },
    )
}
