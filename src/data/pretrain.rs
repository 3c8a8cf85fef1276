//! Pretraining data: `{"text": "…"}` lines, each encoded as `[bos] + tokens + [eos]`, right-padded.

use super::rows::{EncodedRow, JsonlIndex, LmData, RowEncoder};
use super::tokenizer::Tokenizer;
use anyhow::Result;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct TextRow {
    text: String,
}

/// The `text` of a pretraining row `{"text": "…"}`, or what was expected instead.
pub fn parse_text_row(line: &str) -> Result<String, String> {
    serde_json::from_str::<TextRow>(line)
        .map(|row| row.text)
        .map_err(|e| format!("expected a JSON object with a string field \"text\" ({e})"))
}

/// How pretraining text becomes ids.
#[derive(Clone, Copy)]
pub struct PretrainEncoding {
    pub max_seq_len: usize,
    /// Wrap every text as `[bos] + tokens + [eos]` (minimind-3's rule); off for data that already
    /// carries its own markers.
    pub wrap: bool,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
}

impl PretrainEncoding {
    /// The encoding with `tokenizer`'s bos / eos / pad ids.
    pub fn for_tokenizer(tokenizer: &Tokenizer, max_seq_len: usize, wrap: bool) -> Result<Self> {
        Ok(Self { max_seq_len, wrap, bos: tokenizer.bos_id()?, eos: tokenizer.eos_id()?, pad: tokenizer.pad_id()? })
    }

    /// `[bos] + tokens[:max_len−2] + [eos]` (or `tokens[:max_len]` unwrapped), right-padded with
    /// `pad` to `max_seq_len`. Returns the ids and the count of real tokens.
    pub fn encode(&self, tokenizer: &Tokenizer, text: &str) -> Result<(Vec<u32>, usize)> {
        let tokens = tokenizer.encode_prefix(text, self.max_seq_len)?;
        let n = self.max_seq_len;
        let mut ids = Vec::with_capacity(n);
        if self.wrap {
            ids.push(self.bos);
            ids.extend(tokens.iter().take(n.saturating_sub(2)));
            ids.push(self.eos);
        } else {
            ids.extend(tokens.iter().take(n));
        }
        let len = ids.len();
        ids.resize(n, self.pad);
        Ok((ids, len))
    }
}

/// Pretraining data: `{"text": …}` lines encoded with `encoding`.
pub fn pretrain_data<'a>(
    path: &Path,
    skip_bad: bool,
    encoding: PretrainEncoding,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    seed: u64,
) -> Result<LmData<'a>> {
    let index = JsonlIndex::build(path, skip_bad, |line| parse_text_row(line).map(|_| ()))?;
    let encode: RowEncoder<'a, EncodedRow> = Box::new(move |line| {
        let text = parse_text_row(line).map_err(anyhow::Error::msg)?;
        let (ids, len) = encoding.encode(tokenizer, &text)?;
        Ok(EncodedRow::prefix(ids, len))
    });
    Ok(LmData::new(index, batch_size, seed, encode))
}
