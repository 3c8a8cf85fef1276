//! Reasoning distillation: SFT on answers written as `<think>\n…\n</think>\n<answer>\n…\n</answer>`
//! with extra weight on the format tags (MiniMind2's `train_distill_reason`): wherever the target
//! token is one of the ids that spell `<think>`, `</think>`, `<answer>`, `</answer>`, its loss weight
//! becomes `tag_weight` (10) — even outside the answer — while the mean still divides by the number
//! of ordinarily supervised tokens. Plus a display filter that sets the think part apart.

use crate::data::{EncodedRow, LmData};
use crate::sft::{conversation_data, SftEncoding};
use crate::tokenizer::Tokenizer;
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

    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[crate::tokenizer::ChatMessage]) -> Result<EncodedRow> {
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

/// Rewrites streamed text so the reasoning stands apart: `<think>` opens a `[think]` block,
/// `</think>` closes it with `[/think]`, and the `<answer>` tags are dropped. Tags split across
/// pieces are held back until they are complete.
#[derive(Default)]
pub struct ThinkDisplay {
    pending: String,
}

const REWRITES: [(&str, &str); 4] =
    [("<think>", "[think] "), ("</think>", " [/think]"), ("<answer>", ""), ("</answer>", "")];

impl ThinkDisplay {
    /// The displayable part of `piece` (plus anything held back before it).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut out = String::new();
        loop {
            match self.pending.find('<') {
                None => {
                    out.push_str(&std::mem::take(&mut self.pending));
                    return out;
                }
                Some(at) => {
                    out.push_str(&self.pending[..at]);
                    self.pending.drain(..at);
                    if let Some((tag, shown)) = REWRITES.iter().find(|(tag, _)| self.pending.starts_with(tag)) {
                        out.push_str(shown);
                        self.pending.drain(..tag.len());
                    } else if REWRITES.iter().any(|(tag, _)| tag.starts_with(self.pending.as_str())) {
                        return out; // maybe the start of a tag: wait for more
                    } else {
                        out.push('<');
                        self.pending.drain(..1);
                    }
                }
            }
        }
    }

    /// Whatever is still held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}
