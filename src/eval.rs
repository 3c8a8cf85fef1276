//! Perplexity of a model on pretraining-format text: `exp(Σ −log p(token) / tokens)` over every
//! real next token of every row, each row encoded as in pretraining (`[bos] text [eos]`, cut to the
//! sequence length). Used to state what a change such as int8 weights costs in quality.

use crate::data::pretrain::{parse_text_row, PretrainEncoding};
use crate::data::{JsonlIndex, LmBatch};
use crate::{ops, MiniMindForCausalLM, Tokenizer};
use anyhow::{bail, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    pub rows: usize,
    pub tokens: usize,
    /// Mean negative log-likelihood per token (nats).
    pub nll: f64,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        self.nll.exp()
    }
}

/// Perplexity over the first `max_rows` rows (all when `None`) of `path`, `batch` rows at a time.
pub fn perplexity(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    path: &Path,
    max_seq_len: usize,
    batch: usize,
    max_rows: Option<usize>,
) -> Result<Perplexity> {
    if max_seq_len < 2 || batch == 0 {
        bail!("--max-seq-len must be ≥ 2 and --batch-size ≥ 1");
    }
    let index = JsonlIndex::build(path, false, |line| parse_text_row(line).map(|_| ()))?;
    let rows = max_rows.map_or(index.len(), |n| n.min(index.len()));
    if rows == 0 {
        bail!("{}: no rows to evaluate", path.display());
    }
    let encoding = PretrainEncoding::for_tokenizer(tokenizer, max_seq_len, true)?;
    let (mut total, mut tokens) = (0f64, 0usize);
    for start in (0..rows).step_by(batch) {
        let mut encoded = Vec::new();
        for i in start..(start + batch).min(rows) {
            let text = parse_text_row(&index.read(i)?).map_err(anyhow::Error::msg)?;
            encoded.push(encoding.encode(tokenizer, &text)?);
        }
        let b = LmBatch::from_rows(&encoded, model.device())?;
        let mask = b.mask.flatten_all()?;
        let count = mask.sum_all()?.to_scalar::<f32>()? as f64;
        let logits = model.forward_flat(&b.x)?;
        let mean = ops::cross_entropy(&logits, &b.y.flatten_all()?, &mask)?.to_scalar::<f32>()? as f64;
        total += mean * count;
        tokens += count as usize;
    }
    if tokens == 0 {
        bail!("{}: the rows hold no tokens to predict", path.display());
    }
    Ok(Perplexity { rows, tokens, nll: total / tokens as f64 })
}
