//! Next-token stages (pretraining, SFT, LoRA, reasoning SFT): a data file encoded into rows with a
//! loss mask, and the masked mean cross-entropy. What differs between them is only the row encoder.

use crate::data::{DataCursor, LmBatch, LmData};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops;
use crate::train::Stage;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Masked mean next-token cross-entropy of a batch: `Σ mask·CE / Σ mask` (or `/ norm` when the
/// batch carries its own denominator, as reasoning SFT's up-weighted tags do).
pub fn lm_loss(model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
    let logits = model.forward_train(&batch.x, dropout)?;
    let mask = batch.mask.flatten_all()?;
    let loss = ops::cross_entropy(&logits, &batch.y.flatten_all()?, &mask)?;
    match batch.norm {
        None => Ok(loss),
        Some(norm) => {
            let weights = mask.sum_all()?.to_scalar::<f32>()? as f64;
            Ok((loss * (weights / (norm as f64).max(1e-12)))?)
        }
    }
}

pub struct LmStage<'a> {
    pub name: &'static str,
    pub data: LmData<'a>,
    pub device: Device,
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
        lm_loss(model, batch, dropout)
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
