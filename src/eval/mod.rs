//! Perplexity and bits per byte of a model on held-out data: `exp(Σ −log p(token) / tokens)` over
//! the scored tokens, and `Σ −log₂ p(token) / bytes` over the UTF-8 bytes those tokens spell — the
//! figure that compares models across tokenizers (a tokenizer with longer tokens has fewer, harder
//! ones). Two formats:
//! - `{"text"}` rows, each encoded as in pretraining (`[bos] text [eos]`, cut to the sequence
//!   length), every real next token scored;
//! - SFT conversations ([`EvalFormat::Sft`]), encoded as in SFT, only the supervised (assistant) tokens
//!   scored — the SFT loss on held-out chats.
//!
//! Multiple-choice benchmarks (C-Eval, CMMLU, JSONL) are read by [`benchmark`] and scored by
//! [`choice`]; [`answers`] measures generated answers against a ground truth.

pub mod answers;
pub mod benchmark;
pub mod choice;

pub use answers::{answer_accuracy, AnswerAccuracy};
pub use benchmark::{load_benchmark, Question, Subject};
pub use choice::{render_prompt, render_prompt_for, score_choices, ChoiceOptions, ChoiceResult, ChoiceScoring};

use crate::data::pretrain::{parse_text_row, PretrainEncoding};
use crate::data::sft::{parse_conversation, SftEncoding};
use crate::data::{EncodedRow, JsonlIndex, LmBatch};
use crate::{ops, MiniMindForCausalLM, Tokenizer};
use anyhow::{bail, Result};
use std::path::Path;

#[derive(Debug, Clone, Copy)]
pub struct Perplexity {
    pub rows: usize,
    pub tokens: usize,
    /// UTF-8 bytes of the scored tokens' text (special tokens count none).
    pub bytes: usize,
    /// Mean negative log-likelihood per token (nats).
    pub nll: f64,
}

impl Perplexity {
    pub fn value(&self) -> f64 {
        self.nll.exp()
    }

    /// `nll · tokens / (bytes · ln 2)`.
    pub fn bits_per_byte(&self) -> f64 {
        self.nll * self.tokens as f64 / (self.bytes.max(1) as f64 * std::f64::consts::LN_2)
    }
}

/// What the rows of an evaluation file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalFormat {
    /// `{"text": …}`: every next token scored.
    #[default]
    Text,
    /// `{"conversations": […]}`: the assistant turns scored.
    Sft,
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
    evaluate(model, tokenizer, path, EvalFormat::Text, max_seq_len, batch, max_rows)
}

/// [`perplexity`] of a file in either format.
pub fn evaluate(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    path: &Path,
    format: EvalFormat,
    max_seq_len: usize,
    batch: usize,
    max_rows: Option<usize>,
) -> Result<Perplexity> {
    if max_seq_len < 2 || batch == 0 {
        bail!("--max-seq-len must be ≥ 2 and --batch-size ≥ 1");
    }
    let index = match format {
        EvalFormat::Text => JsonlIndex::build(path, false, |line| parse_text_row(line).map(|_| ()))?,
        EvalFormat::Sft => JsonlIndex::build(path, false, |line| parse_conversation(line).map(|_| ()))?,
    };
    let rows = max_rows.map_or(index.len(), |n| n.min(index.len()));
    if rows == 0 {
        bail!("{}: no rows to evaluate", path.display());
    }
    let text = PretrainEncoding::for_tokenizer(tokenizer, max_seq_len, true)?;
    let sft = SftEncoding::for_tokenizer(tokenizer, max_seq_len)?;
    let encode = |line: &str| -> Result<EncodedRow> {
        match format {
            EvalFormat::Text => {
                let (ids, len) = text.encode(tokenizer, &parse_text_row(line).map_err(anyhow::Error::msg)?)?;
                Ok(EncodedRow::prefix(ids, len))
            }
            EvalFormat::Sft => sft.encode(tokenizer, &parse_conversation(line).map_err(anyhow::Error::msg)?),
        }
    };
    let (mut total, mut tokens, mut bytes) = (0f64, 0usize, 0usize);
    for start in (0..rows).step_by(batch) {
        let encoded =
            (start..(start + batch).min(rows)).map(|i| encode(&index.read(i)?)).collect::<Result<Vec<_>>>()?;
        for row in &encoded {
            bytes += scored_bytes(tokenizer, row)?;
        }
        let b = LmBatch::from_encoded(&encoded, model.device())?;
        let mask = b.mask.flatten_all()?;
        let count = mask.sum_all()?.to_scalar::<f32>()? as f64;
        if count == 0.0 {
            continue;
        }
        let logits = model.forward_flat(&b.x)?;
        let mean = ops::cross_entropy(&logits, &b.y.flatten_all()?, &mask)?.to_scalar::<f32>()? as f64;
        total += mean * count;
        tokens += count as usize;
    }
    if tokens == 0 {
        bail!("{}: the rows hold no tokens to predict", path.display());
    }
    Ok(Perplexity { rows, tokens, bytes, nll: total / tokens as f64 })
}

/// UTF-8 bytes of the text a row's scored targets spell (decoded together, special tokens dropped).
fn scored_bytes(tokenizer: &Tokenizer, row: &EncodedRow) -> Result<usize> {
    let targets: Vec<u32> =
        row.ids[1..].iter().zip(&row.mask[1..]).filter(|(_, &m)| m > 0.0).map(|(&id, _)| id).collect();
    Ok(tokenizer.decode(&targets, true)?.len())
}
