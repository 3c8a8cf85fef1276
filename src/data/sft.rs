//! Supervised fine-tuning data: `{"conversations": [{"role", "content"}, …]}` rendered with the
//! model's chat template, with MiniMind's loss mask — only assistant answers are supervised.
//!
//! Mask (spec §5.3): scan the ids for the assistant header (`bos + "assistant"`, e.g.
//! `<|im_start|>assistant`); from the token after the header's newline up to and including the end
//! token (`<|im_end|>`) and the newline after it, positions get weight 1. An answer cut by truncation
//! is supervised to the end of the row. Every assistant turn of a multi-turn conversation counts.

use super::rows::{EncodedRow, JsonlIndex, LineCheck, LmData, RowEncoder};
use crate::data::tokenizer::{json_array, ChatMessage, Tokenizer};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct ConversationRow {
    conversations: Vec<ChatMessage>,
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The messages of an SFT line, or what was expected instead. minimind-3's fields are checked too:
/// `tools` and `tool_calls` must be JSON arrays (or strings holding one).
pub fn parse_conversation(line: &str) -> Result<Vec<ChatMessage>, String> {
    let expected = r#"expected {"conversations": [{"role": "user"|"assistant"|"system"|"tool", "content": "…"}, …]}"#;
    let row: ConversationRow = serde_json::from_str(line).map_err(|e| format!("{expected} ({e})"))?;
    if let Some(m) = row.conversations.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
        return Err(format!("unknown role {:?}; {expected}", m.role));
    }
    for m in &row.conversations {
        for (field, value) in [("tools", &m.tools), ("tool_calls", &m.tool_calls)] {
            if value.as_ref().is_some_and(|v| json_array(v).is_none()) {
                return Err(format!("{field} must be a JSON array (or a string holding one)"));
            }
        }
    }
    if !row.conversations.iter().any(|m| m.role == "assistant") {
        return Err(format!("no assistant message to learn from; {expected}"));
    }
    Ok(row.conversations)
}

/// Weight 1 on assistant answers (see the module docs), 0 elsewhere; aligned with `ids`.
pub fn assistant_mask(ids: &[u32], header: &[u32], end: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let mut mask = vec![0f32; n];
    let mut i = 0;
    while i < n {
        if !ids[i..].starts_with(header) {
            i += 1;
            continue;
        }
        let start = i + header.len();
        let stop = (start..n).find(|&e| ids[e..].starts_with(end)).unwrap_or(n);
        for m in mask.iter_mut().take((stop + end.len() + 1).min(n)).skip(start + 1) {
            *m = 1.0;
        }
        i = if stop < n { stop + end.len() } else { n };
    }
    mask
}

/// How a conversation becomes a training row.
#[derive(Debug, Clone)]
pub struct SftEncoding {
    pub max_seq_len: usize,
    pub pad: u32,
    /// Ids of the assistant header, `bos_token + "assistant"`.
    pub header: Vec<u32>,
    /// Ids of the end-of-turn token.
    pub end: Vec<u32>,
}

impl SftEncoding {
    pub fn for_tokenizer(tokenizer: &Tokenizer, max_seq_len: usize) -> Result<Self> {
        let bos = tokenizer.special_token("bos_token").unwrap_or_else(|| "<|im_start|>".into());
        let eos = tokenizer.special_token("eos_token").unwrap_or_else(|| "<|im_end|>".into());
        let header = tokenizer.encode(&format!("{bos}assistant"))?;
        let end = tokenizer.encode(&eos)?;
        if header.is_empty() || end.is_empty() {
            bail!("the tokenizer cannot encode the assistant header {bos:?} + \"assistant\" or {eos:?}");
        }
        Ok(Self { max_seq_len, pad: tokenizer.pad_id()?, header, end })
    }

    /// Template → ids truncated/padded to `max_seq_len` → assistant mask.
    pub fn encode(&self, tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<EncodedRow> {
        let text = tokenizer.render_chat(messages, false)?;
        let mut ids = tokenizer.encode_prefix(&text, self.max_seq_len)?;
        ids.resize(self.max_seq_len, self.pad);
        let mask = assistant_mask(&ids, &self.header, &self.end);
        Ok(EncodedRow { ids, mask, norm: None })
    }
}

/// SFT data: conversation lines encoded with `encoding`.
pub fn sft_data<'a>(
    path: &Path,
    skip_bad: bool,
    encoding: SftEncoding,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    seed: u64,
) -> Result<LmData<'a>> {
    conversation_data(path, skip_bad, tokenizer, batch_size, seed, move |messages| encoding.encode(tokenizer, messages))
}

/// Conversation lines (`{"conversations": …}`) turned into rows by `encode`; checks first that the
/// tokenizer's chat template renders, before hours of training find out it does not. Every line is
/// encoded in the indexing pass: rows whose answers lie wholly beyond `--max-seq-len` train nothing,
/// so they are left out and counted (and a file of only such rows is refused).
pub fn conversation_data<'a>(
    path: &Path,
    skip_bad: bool,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    seed: u64,
    encode: impl Fn(&[ChatMessage]) -> Result<EncodedRow> + 'a,
) -> Result<LmData<'a>> {
    tokenizer
        .render_chat(&[ChatMessage::new("user", "x"), ChatMessage::new("assistant", "y")], false)
        .with_context(|| format!("the tokenizer in {} cannot render SFT data", tokenizer.dir.display()))?;
    let check = |line: &str| -> Result<LineCheck, String> {
        let row = encode(&parse_conversation(line)?).map_err(|e| format!("{e:#}"))?;
        Ok(if row.mask[1..].iter().any(|&m| m > 0.0) { LineCheck::Keep } else { LineCheck::NothingToTrain })
    };
    let index = JsonlIndex::build_checked(path, skip_bad, check)?;
    let encode: RowEncoder<'a, EncodedRow> = Box::new(move |line| {
        let messages = parse_conversation(line).map_err(anyhow::Error::msg)?;
        encode(&messages)
    });
    Ok(LmData::new(index, batch_size, seed, encode))
}
