//! Next-token stages (pretraining, SFT, LoRA, reasoning SFT): a data file encoded into rows with a
//! loss mask, and the masked mean cross-entropy. What differs between them is only the row encoder.

use crate::data::{DataCursor, LmBatch, LmData};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops;
use crate::train::Stage;
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::cell::RefCell;

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

pub struct LmStage<'a> {
    pub name: &'static str,
    pub data: LmData<'a>,
    pub device: Device,
    /// What the last `loss` call logged (MoE aux loss and expert load).
    pub last: RefCell<Vec<(String, f64)>>,
}

impl<'a> LmStage<'a> {
    pub fn new(name: &'static str, data: LmData<'a>, device: Device) -> Self {
        Self { name, data, device, last: RefCell::new(Vec::new()) }
    }
}

impl Stage for LmStage<'_> {
    type Batch = LmBatch;

    fn name(&self) -> &str {
        self.name
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.batches_per_epoch()
    }

    fn next_batch(&mut self) -> Result<LmBatch> {
        self.data.next_batch(&self.device)
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
        let (loss, logged) = lm_loss_logged(model, batch, dropout)?;
        *self.last.borrow_mut() = logged;
        Ok(loss)
    }

    fn batch_metrics(&self) -> Vec<(String, f64)> {
        self.last.borrow().clone()
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.tokens()
    }

    fn cursor(&self) -> DataCursor {
        self.data.cursor()
    }

    fn seek(&mut self, cursor: DataCursor) {
        self.data.seek(cursor)
    }

    fn index(&self) -> Option<&crate::data::JsonlIndex> {
        Some(&self.data.index)
    }
}
