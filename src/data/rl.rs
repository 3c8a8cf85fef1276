//! Prompts for reinforcement learning. A line is MiniMind's RLAIF row — an SFT conversation whose
//! last assistant turn is empty or absent — or `{"prompt": "…"}`, with an optional ground truth
//! `"gt"` (a string or a number) that verifiable rewards compare answers with:
//!
//! ```json
//! {"conversations": [{"role": "user", "content": "12 + 30 = ?"}, {"role": "assistant", "content": ""}], "gt": "42"}
//! ```
//!
//! The prompt is the conversation up to its last user turn, rendered by the chat template with the
//! assistant's generation prompt.

use super::rows::{JsonlIndex, RowEncoder, Rows};
use super::tokenizer::{ChatMessage, Tokenizer};
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

/// One prompt to sample completions for.
#[derive(Debug, Clone)]
pub struct RlPrompt {
    /// The rendered prompt's token ids.
    pub ids: Vec<u32>,
    /// The last user turn's text (what an external scorer is shown).
    pub text: String,
    /// The answer verifiable rewards expect, when the row has one.
    pub gt: Option<String>,
    /// The prompt's messages (tool-use rollouts render later turns after them).
    pub messages: Vec<ChatMessage>,
}

const EXPECTED: &str =
    r#"expected {"conversations": [{"role": "user", "content": "…"}, …], "gt": …} or {"prompt": "…", "gt": …}"#;

/// A line's prompt messages and ground truth, or what was expected instead.
pub fn parse_rl_row(line: &str) -> Result<(Vec<ChatMessage>, Option<String>), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("{EXPECTED} ({e})"))?;
    let gt = match value.get("gt") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(format!("\"gt\" must be a string or a number, got {other}")),
    };
    if let Some(prompt) = value.get("prompt") {
        let prompt = prompt.as_str().ok_or(format!("\"prompt\" must be a string; {EXPECTED}"))?;
        return Ok((vec![ChatMessage::new("user", prompt)], gt));
    }
    let messages: Vec<ChatMessage> = value
        .get("conversations")
        .map(|c| serde_json::from_value(c.clone()))
        .ok_or(format!("no \"conversations\" or \"prompt\"; {EXPECTED}"))?
        .map_err(|e| format!("{EXPECTED} ({e})"))?;
    let last_user = messages.iter().rposition(|m| m.role == "user").ok_or(format!("no user turn; {EXPECTED}"))?;
    Ok((messages[..=last_user].to_vec(), gt))
}

/// A line encoded: its prompt rendered and tokenized (at most `max_prompt_len` tokens).
pub fn encode_rl_row(line: &str, tokenizer: &Tokenizer, max_prompt_len: usize) -> Result<RlPrompt, String> {
    encode_rl_row_with(line, tokenizer, max_prompt_len, None)
}

/// [`encode_rl_row`] offering `tools` (an OpenAI `tools` array) to rows that bring none of their own.
pub fn encode_rl_row_with(
    line: &str,
    tokenizer: &Tokenizer,
    max_prompt_len: usize,
    tools: Option<&Value>,
) -> Result<RlPrompt, String> {
    let (mut messages, gt) = parse_rl_row(line)?;
    if let Some(tools) = tools.filter(|_| messages.iter().all(|m| m.tools.is_none())) {
        messages[0].tools = Some(tools.clone());
    }
    let text = tokenizer.render_chat(&messages, true).map_err(|e| format!("{e:#}"))?;
    let ids = tokenizer.encode(&text).map_err(|e| format!("{e:#}"))?;
    if ids.len() > max_prompt_len {
        return Err(format!("the prompt has {} tokens, more than --max-seq-len {max_prompt_len}", ids.len()));
    }
    let text = messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
    Ok(RlPrompt { ids, text, gt, messages })
}

/// Prompts, shuffled and batched.
pub type RlData<'a> = Rows<'a, RlPrompt>;

impl<'a> RlData<'a> {
    /// Indexes `path`, encoding every line once so that a bad one stops the run (or is skipped and
    /// counted with `skip_bad`) before the first step.
    pub fn open(
        path: &Path,
        skip_bad: bool,
        tokenizer: &'a Tokenizer,
        max_prompt_len: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self> {
        Self::open_with_tools(path, skip_bad, tokenizer, max_prompt_len, batch_size, seed, None)
    }

    /// [`RlData::open`] with `tools` offered in every prompt (see [`encode_rl_row_with`]).
    pub fn open_with_tools(
        path: &Path,
        skip_bad: bool,
        tokenizer: &'a Tokenizer,
        max_prompt_len: usize,
        batch_size: usize,
        seed: u64,
        tools: Option<Value>,
    ) -> Result<Self> {
        let check = tools.clone();
        let index = JsonlIndex::build(path, skip_bad, |line| {
            encode_rl_row_with(line, tokenizer, max_prompt_len, check.as_ref()).map(|_| ())
        })?;
        let encode: RowEncoder<'a, RlPrompt> = Box::new(move |line| {
            encode_rl_row_with(line, tokenizer, max_prompt_len, tools.as_ref()).map_err(anyhow::Error::msg)
        });
        Ok(Rows::new(index, batch_size, seed, encode))
    }
}
