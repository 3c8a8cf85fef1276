//! Reasoning distillation (MiniMind2's `train_distill_reason`): SFT on
//! `<think>…</think><answer>…</answer>` answers with the format tags up-weighted
//! (see [`crate::data::reason`]).

use super::lm::LmStage;
use super::run::{from_model_folder, run_stage, TrainConfig, REASON};
use super::trainer::TrainSummary;
use crate::data::reason::{reason_data, ReasonEncoding};
use crate::data::sft::SftEncoding;
use crate::Tokenizer;
use anyhow::Result;
use std::path::PathBuf;

/// `minimind reason`: what to train on and how.
#[derive(Debug, Clone)]
pub struct ReasonConfig {
    /// The model folder to start from.
    pub model: PathBuf,
    /// SFT-format data whose answers read `<think>…</think><answer>…</answer>`.
    pub data: PathBuf,
    /// Loss weight of the tokens spelling the tags (10).
    pub tag_weight: f32,
    pub train: TrainConfig,
}

pub fn reason(c: &ReasonConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    if !(c.tag_weight.is_finite() && c.tag_weight >= 0.0) {
        anyhow::bail!("--tag-weight must be a number ≥ 0, got {}", c.tag_weight);
    }
    let tokenizer = Tokenizer::load(&c.model)?;
    let (config, start) = from_model_folder(&c.model, &t.device)?;
    let sft = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&REASON, &config)?)?;
    let encoding = ReasonEncoding::new(&tokenizer, sft, c.tag_weight)?;
    let data = reason_data(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&REASON)?, t.seed)?;
    let mut stage = LmStage::new("reason", data, t.device.clone());
    run_stage(t, &REASON, &mut stage, start)
}
