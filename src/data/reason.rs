//! Reasoning distillation: SFT on answers written as `<think>\n…\n</think>\n<answer>\n…\n</answer>`
//! with extra weight on the format tags (MiniMind2's `train_distill_reason`): wherever the target
//! token is one of the ids that spell `<think>`, `</think>`, `<answer>`, `</answer>`, its loss weight
//! becomes `tag_weight` (10) — even outside the answer — while the mean still divides by the number
//! of ordinarily supervised tokens. Plus a display filter that sets the think part apart.

use super::rows::{EncodedRow, LmData};
use super::sft::{conversation_data, SftEncoding};
use crate::data::tokenizer::Tokenizer;
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;

pub const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// SFT encoding with up-weighted tag tokens.
#[derive(Debug, Clone)]
pub struct ReasonEncoding {
    pub sft: SftEncoding,
    /// Token ids that occur in the tags' encodings (for MiniMind's tokenizer:
    /// `<`, `>`, `</`, `th`, `ink`, `ans`, `w`, `er`).
    pub tag_ids: BTreeSet<u32>,
    pub tag_weight: f32,
}

impl ReasonEncoding {
    pub fn new(tokenizer: &Tokenizer, sft: SftEncoding, tag_weight: f32) -> Result<Self> {
        let mut tag_ids = BTreeSet::new();
        for tag in TAGS {
            tag_ids.extend(tokenizer.encode(tag)?);
        }
        Ok(Self { sft, tag_ids, tag_weight })
    }

    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        messages: &[crate::data::tokenizer::ChatMessage],
    ) -> Result<EncodedRow> {
        let mut row = self.sft.encode(tokenizer, messages)?;
        let supervised: f32 = row.mask[1..].iter().sum();
        for (m, id) in row.mask.iter_mut().zip(&row.ids).skip(1) {
            if self.tag_ids.contains(id) {
                *m = self.tag_weight;
            }
        }
        row.norm = Some(supervised);
        Ok(row)
    }
}

/// Reasoning SFT data: conversation lines encoded with `encoding`.
pub fn reason_data<'a>(
    path: &Path,
    skip_bad: bool,
    encoding: ReasonEncoding,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    seed: u64,
) -> Result<LmData<'a>> {
    conversation_data(path, skip_bad, tokenizer, batch_size, seed, move |messages| encoding.encode(tokenizer, messages))
}
