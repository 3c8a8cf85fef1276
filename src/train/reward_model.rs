//! `minimind reward-model`: a small reward model trained from preference pairs, to score answers in
//! reinforcement learning instead of a 1.8B model a learner's machine cannot run beside training.
//!
//! The model is MiniMind's backbone with a scalar head `score` (`Linear(d → 1)` with bias, as
//! minimind-3's PPO critic `value_head`) read at each sequence's last token. Trained on DPO-format
//! pairs (`{"chosen", "rejected"}`) with the Bradley–Terry loss `mean(−log σ(s_c − s_r))`; logged:
//! the preference accuracy `mean(s_c > s_r)` and the margin `mean(s_c − s_r)`. The folder it writes is
//! a model folder (`config.json`, tokenizer) whose `model.safetensors` also holds `score.weight` and
//! `score.bias`.

use super::dpo::dpo_loss;
use super::run::{run_stage, Start, TrainConfig, REWARD_MODEL};
use super::stage::{DataStage, StageLoss};
use super::trainer::{ModelOutput, TrainSummary};
use crate::data::dpo::DpoData;
use crate::data::sft::SftEncoding;
use crate::data::LmBatch;
use crate::model::checkpoint;
use crate::model::params::{Init, InitScheme, WeightBuilder};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::Tokenizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The head's tensor names, beside the backbone's in `model.safetensors`.
pub const HEAD: [&str; 2] = ["score.weight", "score.bias"];

/// The scalar head `s = w·h + b` of the final hidden state `h`.
#[derive(Clone)]
pub struct ScoreHead {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ScoreHead {
    /// The head's tensors from `wb`: loaded, or new (`w ~ N(0, 1/(d+1))`, as MiniMind's reward head
    /// init; `b = 0`).
    pub fn new(wb: &WeightBuilder, d: usize) -> Result<Self> {
        Self::named(wb, d, HEAD)
    }

    /// The head under other tensor names (PPO's critic: `value_head.weight`, `value_head.bias`).
    pub fn named(wb: &WeightBuilder, d: usize, names: [&str; 2]) -> Result<Self> {
        let weight = wb.get(names[0], (1, d), Init::Normal(1.0 / ((d + 1) as f64).sqrt()))?;
        Ok(Self { weight, bias: wb.get(names[1], 1, Init::Zeros)? })
    }

    /// The head at every position: `[B, T]` from hidden states `[B, T, d]`.
    pub fn all_positions(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        Ok(hidden.broadcast_mul(&self.weight)?.sum(D::Minus1)?.broadcast_add(&self.bias)?)
    }

    /// Scores `[B]` of `ids` `[B, T]` read at positions `last` (each row's last real token).
    pub fn scores(&self, lm: &MiniMindForCausalLM, ids: &Tensor, last: &[u32], dropout: DropoutSeed) -> Result<Tensor> {
        let hidden = lm.forward_hidden(ids, None, dropout)?.to_dtype(DType::F32)?; // [B, T, d]
        let (b, t, d) = hidden.dims3()?;
        let rows: Vec<u32> = last.iter().enumerate().map(|(i, &p)| i as u32 * t as u32 + p).collect();
        let picked = hidden.reshape((b * t, d))?.index_select(&Tensor::new(rows, ids.device())?, 0)?;
        Ok(picked.broadcast_mul(&self.weight)?.sum(D::Minus1)?.broadcast_add(&self.bias)?)
    }
}

/// A trained reward model, frozen, for scoring.
pub struct RewardModel {
    pub lm: MiniMindForCausalLM,
    pub head: ScoreHead,
}

impl RewardModel {
    /// Loads a folder written by `minimind reward-model`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (config, wb) = checkpoint::model_weights(dir, device, DType::F32, false)?;
        let lm = MiniMindForCausalLM::new(&config, &wb, InitScheme::Minimind2)?;
        let head = ScoreHead::new(&wb, config.hidden_size)?;
        wb.finish().with_context(|| format!("{} is not a reward model folder", dir.display()))?;
        Ok(Self { lm, head })
    }

    /// Scores of token sequences (each read at its own last token).
    pub fn score(&self, sequences: &[Vec<u32>]) -> Result<Vec<f64>> {
        let t = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * t);
        for s in sequences {
            ids.extend(s.iter().copied().chain(std::iter::repeat(0)).take(t));
        }
        let ids = Tensor::from_vec(ids, (sequences.len(), t), self.lm.device())?;
        let last: Vec<u32> = sequences.iter().map(|s| s.len().saturating_sub(1) as u32).collect();
        let scores: Vec<f32> = self.head.scores(&self.lm, &ids, &last, None)?.to_vec1()?;
        Ok(scores.into_iter().map(f64::from).collect())
    }
}

/// A reward model's preference accuracy on pairs it was not trained on.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PairAccuracy {
    pub pairs: usize,
    /// Pairs whose chosen side scores above the rejected one.
    pub correct: usize,
}

impl PairAccuracy {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.pairs.max(1) as f64
    }
}

/// Scores both sides of every pair of `path` (DPO format) with the reward model in `dir`, each read
/// at its answer's last token as in training.
pub fn held_out_accuracy(dir: &Path, path: &Path, max_seq_len: usize) -> Result<PairAccuracy> {
    let rm = RewardModel::load(dir, &Device::Cpu)?;
    let tokenizer = Tokenizer::load(dir)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, max_seq_len)?;
    let index = crate::data::JsonlIndex::build(path, false, |line| crate::data::dpo::parse_pair(line).map(|_| ()))?;
    let through_answer = |row: &crate::data::EncodedRow| -> Vec<u32> {
        let last = row.mask.iter().rposition(|&m| m > 0.0).unwrap_or(row.ids.len() - 1);
        row.ids[..=last].to_vec()
    };
    let mut correct = 0;
    for i in 0..index.len() {
        let (chosen, rejected) = crate::data::dpo::encode_pair(&index.read(i)?, &encoding, &tokenizer)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), index.line_number(i)))?;
        let scores = rm.score(&[through_answer(&chosen), through_answer(&rejected)])?;
        correct += usize::from(scores[0] > scores[1]);
    }
    Ok(PairAccuracy { pairs: index.len(), correct })
}

/// Each row's last real position in a batch's full ids `[x | last target]`: the last supervised
/// target (the answer's end), or the last position.
fn last_positions(batch: &LmBatch) -> Result<Vec<u32>> {
    let mask: Vec<Vec<f32>> = batch.mask.to_vec2()?;
    Ok(mask.iter().map(|m| m.iter().rposition(|&v| v > 0.0).map_or(m.len(), |i| i + 1) as u32).collect())
}

/// The Bradley–Terry loss of a batch of `[chosen; rejected]` rows.
pub struct RewardLoss {
    head: Rc<RefCell<Option<ScoreHead>>>,
}

impl StageLoss for RewardLoss {
    fn loss(
        &self,
        model: &MiniMindForCausalLM,
        batch: &LmBatch,
        dropout: DropoutSeed,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let head = self.head.borrow().clone().context("the reward head was not built")?;
        let t = batch.x.dim(1)?;
        let ids = Tensor::cat(&[&batch.x, &batch.y.narrow(1, t - 1, 1)?], 1)?;
        let scores = head.scores(model, &ids, &last_positions(batch)?, dropout)?;
        let b = scores.dim(0)? / 2;
        // dpo_loss with β = 1 and no reference is exactly −log σ(s_c − s_r).
        let zero = scores.zeros_like()?;
        let (loss, margin) = dpo_loss(&scores, &zero, 1.0)?;
        let margin: Vec<f32> = margin.to_vec1()?;
        let accuracy = margin.iter().filter(|&&m| m > 0.0).count() as f64 / b as f64;
        let mean = margin.iter().map(|&m| m as f64).sum::<f64>() / b as f64;
        Ok((loss, vec![("accuracy".into(), accuracy), ("margin".into(), mean)]))
    }

    fn weight(&self, batch: &LmBatch) -> f64 {
        (batch.x.dims()[0] / 2) as f64
    }
}

/// `minimind reward-model`: what to train on and how.
#[derive(Debug, Clone)]
pub struct RewardModelConfig {
    /// The model folder to start from (an SFT model: its backbone and tokenizer).
    pub model: PathBuf,
    /// `{"chosen": […], "rejected": […]}` JSON Lines.
    pub data: PathBuf,
    pub train: TrainConfig,
}

/// Trains a reward model from `model`'s backbone and a new score head.
pub fn reward_model(c: &RewardModelConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    let tokenizer = Tokenizer::load(&c.model)?;
    let (config, mut tensors) = checkpoint::model_tensors(&c.model, &t.device)?;
    if !tensors.contains_key(HEAD[0]) {
        // A new head: w ~ N(0, 1/(d+1)), seeded; b = 0.
        let random = WeightBuilder::random(t.seed, DType::F32, &t.device, false);
        let head = ScoreHead::new(&random, config.hidden_size)?;
        tensors.insert(HEAD[0].into(), head.weight);
        tensors.insert(HEAD[1].into(), head.bias);
    }
    let fresh = WeightBuilder::loaded(tensors, DType::F32, &t.device, true);
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&REWARD_MODEL, &config)?)?;
    let data = DpoData::open(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&REWARD_MODEL)?, t.seed)?;
    let head = Rc::new(RefCell::new(None));
    let mut stage = DataStage::with_loss("reward-model", data, RewardLoss { head: head.clone() }, t.device.clone());
    let shape = config.clone();
    let build = move |wb: &WeightBuilder| {
        let lm = MiniMindForCausalLM::new(&shape, wb, InitScheme::Minimind2)?;
        *head.borrow_mut() = Some(ScoreHead::new(wb, shape.hidden_size)?);
        Ok(lm)
    };
    let output = ModelOutput::FullWith(HEAD.iter().map(|s| s.to_string()).collect());
    run_stage(t, &REWARD_MODEL, &mut stage, Start { fresh, build, output, tokenizer_dir: Some(c.model.clone()) })
}
