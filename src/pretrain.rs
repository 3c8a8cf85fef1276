//! The pretraining stage: next-token prediction on plain text, masked mean cross-entropy.

use crate::data::{LmBatch, PretrainData};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops;
use crate::tokenizer::Tokenizer;
use crate::train::Stage;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// Masked mean next-token cross-entropy of a batch: `Σ mask·CE / Σ mask`.
pub fn lm_loss(model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
    let logits = model.forward_train(&batch.x, dropout)?;
    Ok(ops::cross_entropy(&logits, &batch.y.flatten_all()?, &batch.mask.flatten_all()?)?)
}

pub struct PretrainStage<'a> {
    pub data: PretrainData,
    pub tokenizer: &'a Tokenizer,
    pub device: Device,
}

impl Stage for PretrainStage<'_> {
    type Batch = LmBatch;

    fn name(&self) -> &str {
        "pretrain"
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.batches_per_epoch()
    }

    fn next_batch(&mut self) -> Result<LmBatch> {
        self.data.next_batch(self.tokenizer, &self.device)
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
        lm_loss(model, batch, dropout)
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.tokens()
    }

    fn epoch(&self) -> usize {
        self.data.cursor().epoch
    }
}
