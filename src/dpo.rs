//! Direct preference optimization: `{"chosen": [...], "rejected": [...]}` conversation pairs, a
//! trainable policy and a frozen reference (both start from the same model folder).
//!
//! Sequence score `π(y|x)`: the mean (MiniMind2) or sum (minimind-3) of the supervised tokens'
//! log-probabilities, supervised as in SFT. With `z = (π_c − π_r) − (ref_c − ref_r)`:
//! `loss = mean(−log σ(β·z))`; logged: reward margin `mean(β·z)` and preference accuracy
//! `mean(β·z > 0)`. At the start policy = reference, so z = 0 and the loss is ln 2.

use crate::data::{DataCursor, EncodedRow, JsonlIndex, LmBatch, ShuffledRows};
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops;
use crate::sft::{parse_conversation, SftEncoding};
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::train::Stage;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use std::cell::RefCell;
use std::path::Path;

/// How a side's per-token log-probabilities become its sequence score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeqLogProb {
    /// Length-normalized mean over supervised tokens (MiniMind2).
    Mean,
    /// Sum over supervised tokens (minimind-3).
    Sum,
}

/// The chosen and rejected conversations of a DPO line, or what was expected instead.
pub fn parse_pair(line: &str) -> Result<(Vec<ChatMessage>, Vec<ChatMessage>), String> {
    let expected = r#"expected {"chosen": [{"role", "content"}, …], "rejected": [{"role", "content"}, …]}"#;
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{expected} ({e})"))?;
    let side = |key: &str| -> Result<Vec<ChatMessage>, String> {
        let messages = value.get(key).ok_or_else(|| format!("no {key:?}; {expected}"))?;
        parse_conversation(&serde_json::json!({ "conversations": messages }).to_string())
            .map_err(|e| format!("{key}: {e}"))
    };
    Ok((side("chosen")?, side("rejected")?))
}

/// Preference pairs, shuffled and batched as `[chosen rows; rejected rows]`.
pub struct DpoData<'a> {
    pub index: JsonlIndex,
    order: ShuffledRows,
    pub batch_size: usize,
    encoding: SftEncoding,
    tokenizer: &'a Tokenizer,
}

impl<'a> DpoData<'a> {
    pub fn open(
        path: &Path,
        skip_bad: bool,
        encoding: SftEncoding,
        tokenizer: &'a Tokenizer,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        let index = JsonlIndex::build(path, skip_bad, |line| parse_pair(line).map(|_| ()))?;
        let order = ShuffledRows::new(index.len(), seed, DataCursor::default());
        Ok(Self { index, order, batch_size, encoding, tokenizer })
    }

    fn encode_side(&self, messages: &[ChatMessage], side: &str) -> Result<EncodedRow> {
        let row = self.encoding.encode(self.tokenizer, messages)?;
        if row.mask[1..].iter().all(|&m| m == 0.0) {
            bail!("the {side} side has no supervised token within --max-seq-len {}", self.encoding.max_seq_len);
        }
        Ok(row)
    }

    /// The next batch: rows `0..B` chosen, `B..2B` rejected (the same pairs in the same order).
    pub fn next_batch(&mut self, device: &Device) -> Result<LmBatch> {
        let rows = self.order.next_batch(self.batch_size);
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for &i in &rows {
            let at = || format!("{}:{}", self.index.path.display(), self.index.line_number(i));
            let (c, r) = parse_pair(&self.index.read(i)?).map_err(anyhow::Error::msg).with_context(at)?;
            chosen.push(self.encode_side(&c, "chosen").with_context(at)?);
            rejected.push(self.encode_side(&r, "rejected").with_context(at)?);
        }
        chosen.extend(rejected);
        LmBatch::from_encoded(&chosen, device)
    }
}

/// Sequence scores `[2B]` of a batch under `model` (see [`SeqLogProb`]).
pub fn sequence_log_probs(
    model: &MiniMindForCausalLM,
    batch: &LmBatch,
    mode: SeqLogProb,
    dropout: DropoutSeed,
) -> Result<Tensor> {
    let (rows, t) = batch.x.dims2()?;
    let logits = model.forward_train(&batch.x, dropout)?;
    let token = ops::target_log_probs(&logits, &batch.y.flatten_all()?)?.reshape((rows, t))?;
    let total = (token * &batch.mask)?.sum(D::Minus1)?;
    Ok(match mode {
        SeqLogProb::Sum => total,
        SeqLogProb::Mean => total.broadcast_div(&batch.mask.sum(D::Minus1)?)?,
    })
}

/// `mean(−log σ(β·z))` with `−log σ(x) = max(−x, 0) + log(1 + e^(−|x|))` (stable for any x).
pub fn dpo_loss(policy: &Tensor, reference: &Tensor, beta: f64) -> Result<(Tensor, Tensor)> {
    let b = policy.dim(0)? / 2;
    let margin = |s: &Tensor| -> Result<Tensor> { Ok((s.narrow(0, 0, b)? - s.narrow(0, b, b)?)?) };
    let z = ((margin(policy)? - margin(reference)?)? * beta)?;
    let loss = (z.neg()?.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?))?.mean_all()?;
    Ok((loss, z))
}

pub struct DpoStage<'a> {
    pub data: DpoData<'a>,
    /// Frozen: built from plain tensors, so it records no graph and receives no gradient.
    pub reference: MiniMindForCausalLM,
    pub beta: f64,
    pub seq_logp: SeqLogProb,
    pub device: Device,
    last: RefCell<Vec<(String, f64)>>,
}

impl<'a> DpoStage<'a> {
    pub fn new(
        data: DpoData<'a>,
        reference: MiniMindForCausalLM,
        beta: f64,
        seq_logp: SeqLogProb,
        device: Device,
    ) -> Self {
        Self { data, reference, beta, seq_logp, device, last: RefCell::new(Vec::new()) }
    }
}

impl Stage for DpoStage<'_> {
    type Batch = LmBatch;

    fn name(&self) -> &str {
        "dpo"
    }

    fn batches_per_epoch(&self) -> usize {
        self.data.index.len().div_ceil(self.data.batch_size)
    }

    fn next_batch(&mut self) -> Result<LmBatch> {
        self.data.next_batch(&self.device)
    }

    fn loss(&self, model: &MiniMindForCausalLM, batch: &LmBatch, dropout: DropoutSeed) -> Result<Tensor> {
        let policy = sequence_log_probs(model, batch, self.seq_logp, dropout)?;
        let reference = sequence_log_probs(&self.reference, batch, self.seq_logp, None)?.detach();
        let (loss, z) = dpo_loss(&policy, &reference, self.beta)?;
        let z: Vec<f32> = z.to_vec1()?;
        let margin = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
        let accuracy = z.iter().filter(|&&v| v > 0.0).count() as f64 / z.len() as f64;
        *self.last.borrow_mut() = vec![("reward_margin".into(), margin), ("accuracy".into(), accuracy)];
        Ok(loss)
    }

    fn tokens(&self, batch: &LmBatch) -> usize {
        batch.tokens()
    }

    fn cursor(&self) -> DataCursor {
        self.data.order.cursor
    }

    fn seek(&mut self, cursor: DataCursor) {
        self.data.order = ShuffledRows::new(self.data.index.len(), self.data.order.seed, cursor);
    }

    fn batch_metrics(&self) -> Vec<(String, f64)> {
        self.last.borrow().clone()
    }
}
