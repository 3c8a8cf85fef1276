//! Answer accuracy on prompts with a ground truth — the rows `minimind grpo` trains on
//! (`{"conversations": [..., {"role": "assistant", "content": ""}], "gt": …}` or `{"prompt", "gt"}`):
//! every prompt is answered greedily through the batching engine and the answer is checked by the
//! same rule as GRPO's ground-truth reward ([`gt_match`]: the last number of the answer for a
//! numeric `gt`, else the answer's text or last line). The figure that shows what RL changed.

use crate::data::rl::encode_rl_row;
use crate::data::JsonlIndex;
use crate::infer::generate::greedy_answers;
use crate::train::rewards::gt_match;
use crate::{MiniMindForCausalLM, Tokenizer};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;

/// One answered prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub prompt: String,
    pub answer: String,
    pub gt: String,
    pub correct: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnswerAccuracy {
    pub answers: Vec<Answer>,
}

impl AnswerAccuracy {
    pub fn correct(&self) -> usize {
        self.answers.iter().filter(|a| a.correct).count()
    }

    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.answers.len().max(1) as f64
    }
}

/// Greedy answers to the first `max_rows` rows (all when `None`) of `path`, `batch` decoded together.
pub fn answer_accuracy(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    path: &Path,
    max_new_tokens: usize,
    batch: usize,
    max_rows: Option<usize>,
) -> Result<AnswerAccuracy> {
    let max_prompt = model.config.max_position_embeddings.saturating_sub(max_new_tokens);
    let index = JsonlIndex::build(path, false, |line| {
        let row = encode_rl_row(line, tokenizer, max_prompt)?;
        row.gt.map(|_| ()).ok_or_else(|| "the row has no \"gt\" (the answer to check against)".to_string())
    })?;
    let rows = max_rows.map_or(index.len(), |n| n.min(index.len()));
    if rows == 0 {
        bail!("{}: no rows to answer", path.display());
    }
    let prompts = (0..rows)
        .map(|i| encode_rl_row(&index.read(i)?, tokenizer, max_prompt).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let texts = greedy_answers(model, tokenizer, &ids, max_new_tokens, batch)?;
    let mut answers = Vec::with_capacity(rows);
    for (prompt, answer) in prompts.into_iter().zip(texts) {
        let gt = prompt.gt.context("a row without gt passed the scan")?;
        let correct = gt_match(&answer, &gt) > 0.5;
        answers.push(Answer { prompt: prompt.text, answer, gt, correct });
    }
    Ok(AnswerAccuracy { answers })
}
