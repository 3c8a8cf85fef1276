//! LoRA fine-tuning: SFT data, a frozen base model, and trainable adapters `W + (α/r)·B·A` on chosen
//! projections (the adapter mechanics are in [`crate::model::lora`]). Only the adapter is written.

use super::lm::LmStage;
use super::run::{run_stage, Start, TrainConfig, LORA};
use super::trainer::{ModelOutput, TrainSummary};
use crate::data::sft::{sft_data, SftEncoding};
use crate::model::checkpoint;
use crate::model::lora::{attach, LoraConfig};
use crate::model::params::WeightBuilder;
use crate::Tokenizer;
use anyhow::Result;
use candle_core::DType;
use std::path::PathBuf;

/// `minimind lora`: what to train on and how.
#[derive(Debug, Clone)]
pub struct LoraTrainConfig {
    /// The frozen base model folder.
    pub model: PathBuf,
    /// SFT-format data.
    pub data: PathBuf,
    pub adapter: LoraConfig,
    pub train: TrainConfig,
}

pub fn lora(c: &LoraTrainConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    c.adapter.validate()?;
    let tokenizer = Tokenizer::load(&c.model)?;
    let (base, _) = checkpoint::load_model(&c.model, &t.device, DType::F32, false)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&LORA, &base.config)?)?;
    let data = sft_data(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&LORA)?, t.seed)?;
    let mut stage = LmStage::new("lora", data, t.device.clone());
    eprintln!("LoRA on a frozen base of {} parameters", base.config.num_parameters());
    let start = Start {
        fresh: WeightBuilder::random(t.seed, DType::F32, &t.device, true),
        build: |wb: &WeightBuilder| {
            let mut model = base.clone();
            attach(&mut model, &c.adapter, wb)?;
            Ok(model)
        },
        output: ModelOutput::Adapter(c.adapter.clone()),
        tokenizer_dir: None,
    };
    run_stage(t, &LORA, &mut stage, start)
}
