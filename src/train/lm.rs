//! Next-token stages (pretraining, SFT, LoRA, reasoning SFT): a data file encoded into rows with a
//! loss mask, and the masked mean cross-entropy. What differs between them is only the row encoder.

use super::stage::{DataStage, StageLoss};
use crate::data::{LmBatch, LmData};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Masked mean next-token cross-entropy of a batch: `Σ mask·CE / Σ mask` (or `/ norm` when the
/// batch carries its own denominator, as reasoning SFT's up-weighted tags do), plus a MoE model's
/// aux loss.
pub fn lm_loss(model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
    Ok(lm_loss_logged(model, batch, dropout)?.0)
}

/// [`lm_loss`] and what to log beside it (a MoE model's aux loss and expert load).
pub fn lm_loss_logged(
    model: &MiniMindForCausalLM,
    batch: &LmBatch,
    dropout: DropoutSeed,
) -> Result<(Tensor, Vec<(String, f64)>)> {
    let out = model.forward_train(&batch.x, dropout)?;
    let mask = batch.mask.flatten_all()?;
    let mut loss = ops::cross_entropy(&out.logits, &batch.y.flatten_all()?, &mask)?;
    if let Some(norm) = batch.norm {
        let weights = mask.sum_all()?.to_scalar::<f32>()? as f64;
        loss = (loss * (weights / (norm as f64).max(1e-12)))?;
    }
    Ok((out.moe.add_aux(loss)?, out.moe.metrics()?))
}

/// The next-token loss ([`lm_loss`]).
pub struct LmLoss;

impl StageLoss for LmLoss {
    fn loss(
        &self,
        model: &MiniMindForCausalLM,
        batch: &LmBatch,
        dropout: DropoutSeed,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        lm_loss_logged(model, batch, dropout)
    }
}

/// Pretraining, SFT, LoRA and reasoning SFT: LM data and the next-token loss.
pub type LmStage<'a> = DataStage<LmData<'a>, LmLoss>;

impl<'a> LmStage<'a> {
    pub fn new(name: &'static str, data: LmData<'a>, device: Device) -> Self {
        DataStage::with_loss(name, data, LmLoss, device)
    }
}
