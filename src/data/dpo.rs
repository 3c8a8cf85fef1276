//! DPO data: `{"chosen": [...], "rejected": [...]}` conversation pairs, each side encoded as SFT is
//! (chat template, assistant-only mask). A pair that cannot train — a side whose answer lies wholly
//! beyond `--max-seq-len` — is found in the indexing pass, before step 1.

use super::rows::{EncodedRow, JsonlIndex, LmBatch, RowEncoder, Rows};
use super::sft::{parse_conversation, SftEncoding};
use super::tokenizer::{ChatMessage, Tokenizer};
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

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

/// A line's chosen and rejected rows.
pub type DpoPair = (EncodedRow, EncodedRow);

/// Preference pairs, shuffled and batched as `[chosen rows; rejected rows]`.
pub type DpoData<'a> = Rows<'a, DpoPair>;

/// Both sides of a DPO line encoded, or what was expected when the pair cannot train.
pub fn encode_pair(line: &str, encoding: &SftEncoding, tokenizer: &Tokenizer) -> Result<DpoPair, String> {
    let (chosen, rejected) = parse_pair(line)?;
    let side = |messages: &[ChatMessage], name: &str| -> Result<EncodedRow, String> {
        let row = encoding.encode(tokenizer, messages).map_err(|e| format!("{name}: {e:#}"))?;
        if row.mask[1..].iter().all(|&m| m == 0.0) {
            return Err(format!(
                "the {name} side has no supervised token within --max-seq-len {} (its answer lies beyond it)",
                encoding.max_seq_len
            ));
        }
        Ok(row)
    };
    Ok((side(&chosen, "chosen")?, side(&rejected, "rejected")?))
}

impl<'a> DpoData<'a> {
    /// Indexes `path`, encoding every pair once so that one which cannot train stops the run (or is
    /// skipped and counted with `skip_bad`) before the first step.
    pub fn open(
        path: &Path,
        skip_bad: bool,
        encoding: SftEncoding,
        tokenizer: &'a Tokenizer,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        let index = JsonlIndex::build(path, skip_bad, |line| encode_pair(line, &encoding, tokenizer).map(|_| ()))?;
        let encode: RowEncoder<'a, DpoPair> =
            Box::new(move |line| encode_pair(line, &encoding, tokenizer).map_err(anyhow::Error::msg));
        Ok(Rows::new(index, batch_size, seed, encode))
    }

    /// The next batch: rows `0..B` chosen, `B..2B` rejected (the same pairs in the same order).
    pub fn next_batch(&mut self, device: &Device) -> Result<LmBatch> {
        let (mut rows, rejected): (Vec<EncodedRow>, Vec<EncodedRow>) = self.next_rows()?.into_iter().unzip();
        rows.extend(rejected);
        LmBatch::from_encoded(&rows, device)
    }
}
