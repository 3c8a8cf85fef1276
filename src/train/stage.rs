//! The stages' common shape: a data source of micro-batches ([`Batches`]) and a loss ([`StageLoss`]),
//! joined into the trainer's [`Stage`] once by [`DataStage`]. Next-token stages, DPO and
//! distillation differ only in those two parts.

use super::trainer::Stage;
use crate::data::dpo::DpoData;
use crate::data::{DataCursor, JsonlIndex, LmBatch, LmData};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::cell::RefCell;

/// Shuffled, resumable micro-batches of a data file.
pub trait Batches {
    fn batches_per_epoch(&self) -> usize;
    fn next_batch(&mut self, device: &Device) -> Result<LmBatch>;
    fn cursor(&self) -> DataCursor;
    fn seek(&mut self, cursor: DataCursor);
    fn index(&self) -> &JsonlIndex;
    /// Reads only rank `rank`'s part of every global batch ([`crate::data::Rows::set_shard`]).
    fn set_shard(&mut self, rank: usize, world: usize);
}

macro_rules! batches_for {
    ($ty:ty) => {
        impl Batches for $ty {
            fn batches_per_epoch(&self) -> usize {
                Self::batches_per_epoch(self)
            }
            fn next_batch(&mut self, device: &Device) -> Result<LmBatch> {
                Self::next_batch(self, device)
            }
            fn cursor(&self) -> DataCursor {
                Self::cursor(self)
            }
            fn seek(&mut self, cursor: DataCursor) {
                Self::seek(self, cursor)
            }
            fn index(&self) -> &JsonlIndex {
                &self.index
            }
            fn set_shard(&mut self, rank: usize, world: usize) {
                Self::set_shard(self, rank, world)
            }
        }
    };
}

batches_for!(LmData<'_>);
batches_for!(DpoData<'_>);

/// A stage's loss on one micro-batch, and the figures to log beside it.
pub trait StageLoss {
    fn loss(
        &self,
        model: &MiniMindForCausalLM,
        batch: &LmBatch,
        dropout: DropoutSeed,
    ) -> Result<(Tensor, Vec<(String, f64)>)>;

    /// What the loss is a mean over (its supervised tokens, by default).
    fn weight(&self, batch: &LmBatch) -> f64 {
        batch.weight as f64
    }
}

/// A [`Stage`] made of a data source and a loss.
pub struct DataStage<D, L> {
    pub name: &'static str,
    pub data: D,
    pub loss: L,
    pub device: Device,
    /// What the last `loss` call logged.
    last: RefCell<Vec<(String, f64)>>,
}

impl<D: Batches, L: StageLoss> DataStage<D, L> {
    pub fn with_loss(name: &'static str, data: D, loss: L, device: Device) -> Self {
        Self { name, data, loss, device, last: RefCell::new(Vec::new()) }
    }
}

impl<D: Batches, L: StageLoss> Stage for DataStage<D, L> {
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
        let (loss, logged) = self.loss.loss(model, batch, dropout)?;
        *self.last.borrow_mut() = logged;
        Ok(loss)
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.tokens()
    }

    fn weight(&self, batch: &LmBatch) -> f64 {
        self.loss.weight(batch)
    }

    fn shard(&mut self, rank: usize, world: usize) -> Result<()> {
        self.data.set_shard(rank, world);
        Ok(())
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
        Some(self.data.index())
    }
}
