//! Supervised fine-tuning: conversations through the chat template, loss on the assistant's answers
//! only (see [`crate::data::sft`]), starting from a pretrained model folder.

use super::lm::LmStage;
use super::run::{from_model_folder, run_stage, TrainConfig, SFT};
use super::trainer::TrainSummary;
use crate::data::sft::{sft_data, SftEncoding};
use crate::Tokenizer;
use anyhow::Result;
use std::path::PathBuf;

/// `minimind sft`: what to train on and how.
#[derive(Debug, Clone)]
pub struct SftConfig {
    /// The model folder to start from; its tokenizer and chat template are used.
    pub model: PathBuf,
    /// `{"conversations": [{"role", "content"}, …]}` JSON Lines.
    pub data: PathBuf,
    pub train: TrainConfig,
}

pub fn sft(c: &SftConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    let tokenizer = Tokenizer::load(&c.model)?;
    let (config, start) = from_model_folder(&c.model, &t.device)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&SFT, &config)?)?;
    let data = sft_data(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&SFT)?, t.seed)?;
    let mut stage = LmStage::new("sft", data, t.device.clone());
    run_stage(t, &SFT, &mut stage, start)
}
