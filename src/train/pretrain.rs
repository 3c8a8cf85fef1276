//! Pretraining: next-token prediction on `{"text": …}` lines, from a random initialization.

use super::lm::LmStage;
use super::run::{run_stage, Start, TrainConfig, PRETRAIN};
use super::trainer::{ModelOutput, TrainSummary};
use crate::data::pretrain::{pretrain_data, PretrainEncoding};
use crate::model::params::{InitScheme, WeightBuilder};
use crate::model::{MiniMindForCausalLM, ModelConfig};
use crate::Tokenizer;
use anyhow::{bail, Result};
use candle_core::DType;
use std::path::PathBuf;

/// `minimind pretrain`: what to train on and how.
#[derive(Debug, Clone)]
pub struct PretrainConfig {
    /// `{"text": …}` JSON Lines.
    pub data: PathBuf,
    /// Folder with tokenizer.json (+ tokenizer_config.json), copied into the output.
    pub tokenizer: PathBuf,
    /// The model's shape (a preset or a config.json).
    pub model: ModelConfig,
    pub init: InitScheme,
    /// Wrap every text as `[bos] + text + [eos]` (off for data that carries its own markers).
    pub wrap: bool,
    pub train: TrainConfig,
}

/// Pretrains a new model of shape `c.model` (or, with `c.train.resume`, continues the run in
/// `c.train.out`, whose config.json then gives the shape).
pub fn pretrain(c: &PretrainConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    let tokenizer = Tokenizer::load(&c.tokenizer)?;
    let config = match t.resume {
        true => ModelConfig::load(&t.out.join(crate::model::checkpoint::CONFIG_FILE))?,
        false => c.model.clone(),
    };
    let tokens = tokenizer.vocab_size();
    if tokens > config.vocab_size {
        bail!("the tokenizer has {tokens} tokens but the model's vocab_size is {}", config.vocab_size);
    }
    if tokens < config.vocab_size {
        let unused = config.vocab_size - tokens;
        eprintln!("warning: the model's vocab_size {} exceeds the tokenizer's {tokens} tokens: {unused} embedding rows will never be used", config.vocab_size);
    }
    let encoding = PretrainEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&PRETRAIN, &config)?, c.wrap)?;
    let data = pretrain_data(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&PRETRAIN)?, t.seed)?;
    let mut stage = LmStage::new("pretrain", data, t.device.clone());
    let start = Start {
        fresh: WeightBuilder::random(t.seed, DType::F32, &t.device, true),
        build: |wb: &WeightBuilder| MiniMindForCausalLM::new(&config, wb, c.init),
        output: ModelOutput::Full,
        tokenizer_dir: Some(c.tokenizer.clone()),
    };
    run_stage(t, &PRETRAIN, &mut stage, start)
}
