//! Tokenizer: any HF `tokenizer.json` plus its `tokenizer_config.json` (special tokens and the chat
//! template). The template is rendered by a Jinja engine configured as transformers configures
//! jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods, Python-style
//! `tojson`), so the text is byte-identical to `apply_chat_template`.

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `tokenizer_config.json` as read (empty object when the folder has none).
    config: Json,
    chat: Option<Environment<'static>>,
    /// Bytes the longest vocabulary entry can stand for (its string's UTF-8 length: never less).
    longest_token: usize,
    pub dir: PathBuf,
}

/// One chat turn; `content` is the text, `role` one of system/user/assistant/tool. minimind-3's rows
/// add an assistant's `reasoning_content` and `tool_calls`, and the `tools` it may call (on the
/// system message); the latter two as JSON arrays or as strings holding them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Json>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into(), reasoning_content: None, tool_calls: None, tools: None }
    }
}

/// A JSON array given as itself or as a string holding it (minimind-3's rows store `tools` and
/// `tool_calls` as strings); `None` for anything else.
pub fn json_array(value: &Json) -> Option<Vec<Json>> {
    match value {
        Json::Array(items) => Some(items.clone()),
        Json::String(text) => match serde_json::from_str(text) {
            Ok(Json::Array(items)) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// The template's view of a switch for thinking models (minimind-3's `open_thinking`, Qwen3's
/// `enable_thinking`): `Some(true)` opens the reasoning block in the generation prompt, `Some(false)`
/// closes it empty, `None` leaves the template's default.
pub fn thinking_kwargs(think: Option<bool>) -> Json {
    match think {
        Some(on) => serde_json::json!({ "open_thinking": on, "enable_thinking": on }),
        None => Json::Null,
    }
}

fn tk_err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json` and, if present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = if config_path.exists() {
            let text =
                std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?
        } else {
            Json::Object(Default::default())
        };
        let chat = match config.get("chat_template") {
            Some(Json::String(template)) => Some(
                chat_environment(template.clone())
                    .with_context(|| format!("{}: chat_template does not parse", config_path.display()))?,
            ),
            _ => None,
        };
        let longest_token = inner.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        Ok(Self { inner, config, chat, longest_token, dir: dir.to_path_buf() })
    }

    /// The underlying HF tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, with special tokens matched but none added (MiniMind has no post-processor).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tk_err)?.get_ids().to_vec())
    }

    /// The first `max_tokens` ids of `text`, encoding only a prefix long enough to hold them (with
    /// room to spare where the cut changes the last word's tokens), so a huge row costs memory in
    /// proportion to what training uses of it, not to its length.
    pub fn encode_prefix(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>> {
        let budget = (max_tokens + 64).saturating_mul(self.longest_token);
        let mut ids = if text.len() > budget {
            let mut cut = budget;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.encode(&text[..cut])?
        } else {
            self.encode(text)?
        };
        ids.truncate(max_tokens);
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tk_err)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A special token's text from `tokenizer_config.json` (`"bos_token"`, …), string or AddedToken form.
    pub fn special_token(&self, key: &str) -> Option<String> {
        match self.config.get(key)? {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    }

    fn special_id(&self, key: &str, fallback: &str) -> Result<u32> {
        let text = self.special_token(key).unwrap_or_else(|| fallback.to_string());
        self.token_to_id(&text)
            .with_context(|| format!("tokenizer in {} has no {key} token {text:?}", self.dir.display()))
    }

    pub fn bos_id(&self) -> Result<u32> {
        self.special_id("bos_token", "<|im_start|>")
    }

    pub fn eos_id(&self) -> Result<u32> {
        self.special_id("eos_token", "<|im_end|>")
    }

    pub fn pad_id(&self) -> Result<u32> {
        self.special_id("pad_token", "<|endoftext|>")
    }

    /// Ids that end a generation: the eos token plus `<|im_end|>` and `<|endoftext|>` when present.
    pub fn stop_ids(&self) -> Result<Vec<u32>> {
        let mut ids = vec![self.eos_id()?];
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = self.token_to_id(t) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Renders the chat template as `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…, **extra)` does. `messages` is a JSON array of message objects.
    pub fn apply_chat_template(&self, messages: &Json, add_generation_prompt: bool, extra: &Json) -> Result<String> {
        let env = self
            .chat
            .as_ref()
            .with_context(|| format!("{}/tokenizer_config.json has no chat_template", self.dir.display()))?;
        let mut ctx = serde_json::Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(t) = self.special_token(key) {
                ctx.insert(key.into(), Json::String(t));
            }
        }
        if let Json::Object(extra) = extra {
            ctx.extend(extra.clone());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        let template = env.get_template("chat")?;
        template.render(Value::from_serialize(&ctx)).map_err(|e| anyhow!("rendering the chat template: {e:#}"))
    }

    /// Chat-template rendering of messages (the template's default thinking switch).
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_chat_with(messages, add_generation_prompt, None)
    }

    /// [`render_chat`](Self::render_chat) with the thinking switch ([`thinking_kwargs`]). `tool_calls`
    /// strings become arrays and a message's `tools` becomes the template's `tools`, as
    /// minimind-3's data loader passes them.
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        think: Option<bool>,
    ) -> Result<String> {
        let mut extra = thinking_kwargs(think);
        let mut values = Vec::with_capacity(messages.len());
        for m in messages {
            let mut value = serde_json::to_value(m)?;
            if let Some(calls) = m.tool_calls.as_ref().and_then(json_array) {
                value["tool_calls"] = Json::Array(calls);
            }
            if let Some(tools) = m.tools.as_ref().and_then(json_array) {
                if !extra.is_object() {
                    extra = Json::Object(Default::default());
                }
                extra["tools"] = Json::Array(tools);
            }
            values.push(value);
        }
        self.apply_chat_template(&Json::Array(values), add_generation_prompt, &extra)
    }
}

/// A Jinja environment matching transformers' chat-template sandbox.
fn chat_environment(template: String) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", python_tojson);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template_owned("chat", template)?;
    Ok(env)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False)` with Python's `", "`/`": "` separators.
fn python_tojson(value: Value, indent: Option<usize>) -> Result<Value, minijinja::Error> {
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { item_sep } else { "" });
                newline(out, level + 1);
                write_python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(if i > 0 { item_sep } else { "" });
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Incremental detokenizer for streaming: yields text only once it forms whole UTF-8 characters.
///
/// It decodes a short window — the previously emitted token(s) as context plus the pending ones — so
/// each step costs O(1) regardless of how long the generation is (transformers' `DecodeStream` idea).
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Window start (context tokens already emitted).
    prefix_start: usize,
    /// First token not yet emitted.
    read_start: usize,
    /// Decoded text of `ids[prefix_start..read_start]`.
    prefix: String,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), prefix_start: 0, read_start: 0, prefix: String::new() }
    }

    /// Adds one id; returns the newly completed text, if any. Text ending in U+FFFD (an incomplete
    /// byte sequence so far) is held back until a later token completes it.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids[self.prefix_start..], true)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new) = text.strip_prefix(self.prefix.as_str()) else {
            bail!("streaming detokenization: the decoder rewrote text it had already produced");
        };
        let new = new.to_string();
        self.prefix_start = self.read_start;
        self.read_start = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids[self.prefix_start..self.read_start], true)?;
        Ok(Some(new))
    }

    /// Whatever is still held back at the end (a trailing replacement character if the model
    /// really produced an invalid byte sequence).
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids[self.prefix_start..], true)?;
        let rest = text.get(self.prefix.len()..).unwrap_or("").to_string();
        self.prefix_start = self.ids.len();
        self.read_start = self.ids.len();
        self.prefix.clear();
        Ok((!rest.is_empty()).then_some(rest))
    }
}
