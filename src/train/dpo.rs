//! Direct preference optimization: `{"chosen": [...], "rejected": [...]}` conversation pairs, a
//! trainable policy and a frozen reference (both start from the same model folder).
//!
//! Sequence score `π(y|x)`: the mean (MiniMind2) or sum (minimind-3) of the supervised tokens'
//! log-probabilities, supervised as in SFT. With `z = (π_c − π_r) − (ref_c − ref_r)`:
//! `loss = mean(−log σ(β·z))`; logged: reward margin `mean(β·z)` and preference accuracy
//! `mean(β·z > 0)`. At the start policy = reference, so z = 0 and the loss is ln 2.

use super::run::{from_model_folder, run_stage, TrainConfig, DPO};
use super::stage::{DataStage, StageLoss};
use super::trainer::TrainSummary;
use crate::data::dpo::DpoData;
use crate::data::sft::SftEncoding;
use crate::data::LmBatch;
use crate::model::checkpoint;
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::{ops, Tokenizer};
use anyhow::Result;
use candle_core::{Device, Tensor, D};
use std::path::PathBuf;

/// How a side's per-token log-probabilities become its sequence score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqLogProb {
    /// Length-normalized mean over supervised tokens (MiniMind2).
    Mean,
    /// Sum over supervised tokens (minimind-3).
    Sum,
}

named_enum!(SeqLogProb { Mean => "mean", Sum => "sum" });

/// Sequence scores `[2B]` of a batch under a frozen `model` (the reference; see [`SeqLogProb`]).
pub fn sequence_log_probs(model: &MiniMindForCausalLM, batch: &LmBatch, mode: SeqLogProb) -> Result<Tensor> {
    scores(&model.forward_flat(&batch.x)?, batch, mode)
}

/// Sequence scores `[2B]` from a batch's logits `[2B·T, V]`.
fn scores(logits: &Tensor, batch: &LmBatch, mode: SeqLogProb) -> Result<Tensor> {
    let (rows, t) = batch.x.dims2()?;
    let token = ops::target_log_probs(logits, &batch.y.flatten_all()?)?.reshape((rows, t))?;
    let total = (token * &batch.mask)?.sum(D::Minus1)?;
    Ok(match mode {
        SeqLogProb::Sum => total,
        SeqLogProb::Mean => total.broadcast_div(&batch.mask.sum(D::Minus1)?)?,
    })
}

/// `mean(−log σ(β·z))` with `−log σ(x) = max(−x, 0) + log(1 + e^(−|x|))` (stable for any x).
pub fn dpo_loss(policy: &Tensor, reference: &Tensor, beta: f64) -> Result<(Tensor, Tensor)> {
    let b = policy.dim(0)? / 2;
    let margin = |s: &Tensor| -> Result<Tensor> { Ok((s.narrow(0, 0, b)? - s.narrow(0, b, b)?)?) };
    let z = ((margin(policy)? - margin(reference)?)? * beta)?;
    let loss = (z.neg()?.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?))?.mean_all()?;
    Ok((loss, z))
}

/// DPO's loss against a frozen reference (built from plain tensors: no graph, no gradient); logs the
/// reward margin and the preference accuracy.
pub struct DpoLoss {
    pub reference: MiniMindForCausalLM,
    pub beta: f64,
    pub seq_logp: SeqLogProb,
}

impl StageLoss for DpoLoss {
    fn loss(
        &self,
        model: &MiniMindForCausalLM,
        batch: &LmBatch,
        dropout: DropoutSeed,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let out = model.forward_train(&batch.x, dropout)?;
        let (policy, moe) = (scores(&out.logits, batch, self.seq_logp)?, out.moe);
        let reference = sequence_log_probs(&self.reference, batch, self.seq_logp)?.detach();
        let (loss, z) = dpo_loss(&policy, &reference, self.beta)?;
        let z: Vec<f32> = z.to_vec1()?;
        let margin = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
        let accuracy = z.iter().filter(|&&v| v > 0.0).count() as f64 / z.len() as f64;
        let mut logged = vec![("reward_margin".into(), margin), ("accuracy".into(), accuracy)];
        logged.extend(moe.metrics()?);
        // A MoE policy's aux loss joins the DPO loss (as minimind-3 does).
        Ok((moe.add_aux(loss)?, logged))
    }

    /// The DPO loss is a mean over pairs (the batch holds each pair's chosen and rejected rows).
    fn weight(&self, batch: &LmBatch) -> f64 {
        (batch.x.dims()[0] / 2) as f64
    }
}

/// Preference pairs and the DPO loss.
pub type DpoStage<'a> = DataStage<DpoData<'a>, DpoLoss>;

impl<'a> DpoStage<'a> {
    pub fn new(
        data: DpoData<'a>,
        reference: MiniMindForCausalLM,
        beta: f64,
        seq_logp: SeqLogProb,
        device: Device,
    ) -> Self {
        DataStage::with_loss("dpo", data, DpoLoss { reference, beta, seq_logp }, device)
    }
}

/// `minimind dpo`: what to train on and how.
#[derive(Debug, Clone)]
pub struct DpoConfig {
    /// The model folder to start from (an SFT model); also the frozen reference.
    pub model: PathBuf,
    /// `{"chosen": […], "rejected": […]}` JSON Lines.
    pub data: PathBuf,
    /// β of the DPO loss (0.1).
    pub beta: f64,
    pub seq_logp: SeqLogProb,
    pub train: TrainConfig,
}

/// Direct preference optimization: policy and frozen reference both start from `model`.
pub fn dpo(c: &DpoConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    if !(c.beta.is_finite() && c.beta > 0.0) {
        anyhow::bail!("--beta must be a positive number, got {}", c.beta);
    }
    let tokenizer = Tokenizer::load(&c.model)?;
    let (reference, _) = checkpoint::load_model(&c.model, &t.device, t.precision.dtype(), false)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&DPO, &reference.config)?)?;
    let data = DpoData::open(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&DPO)?, t.seed)?;
    let mut stage = DpoStage::new(data, reference, c.beta, c.seq_logp, t.device.clone());
    let (_, start) = from_model_folder(&c.model, &t.device)?;
    run_stage(t, &DPO, &mut stage, start)
}
