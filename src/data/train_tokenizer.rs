//! Training a MiniMind-style tokenizer: byte-level BPE (HF `tokenizers`), the 256 byte symbols as the
//! initial alphabet, no normalizer and no post-processor, and one of two layouts of reserved tokens:
//! - MiniMind2: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` at ids 0/1/2, MiniMind2's chat template;
//! - minimind-3: 36 reserved tokens — 21 special (the three above, then Qwen's multimodal markers),
//!   `<tool_call>` `</tool_call>` `<tool_response>` `</tool_response>` `<think>` `</think>` and 9
//!   buffers as ordinary added tokens — with minimind-3's Qwen3-style template (tools, thinking).

use crate::data::pretrain::parse_text_row;
use crate::data::JsonlIndex;
use crate::model::checkpoint::atomic_write;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// minimind-3's `tokenizer_config.json`: its reserved tokens (`added_tokens_decoder`, ids 0–35) and
/// its chat template.
const MINIMIND3_TOKENIZER_CONFIG: &str = include_str!("../../assets/tokenizers/v3/tokenizer_config.json");

/// Which reserved tokens and chat template a trained tokenizer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenizerLayout {
    #[default]
    Minimind2,
    Minimind3,
}

named_enum!(TokenizerLayout { Minimind2 => "minimind2", Minimind3 => "minimind3" });

impl TokenizerLayout {
    /// The reserved tokens in id order, with whether each is special.
    pub fn reserved(self) -> Result<Vec<(String, bool)>> {
        match self {
            Self::Minimind2 => Ok(SPECIAL_TOKENS.iter().map(|t| (t.to_string(), true)).collect()),
            Self::Minimind3 => {
                let config: serde_json::Value = serde_json::from_str(MINIMIND3_TOKENIZER_CONFIG)?;
                let decoder = config["added_tokens_decoder"].as_object().context("added_tokens_decoder")?;
                (0..decoder.len())
                    .map(|id| {
                        let entry = decoder.get(&id.to_string()).with_context(|| format!("reserved id {id}"))?;
                        let content = entry["content"].as_str().context("content")?.to_string();
                        Ok((content, entry["special"].as_bool().unwrap_or(true)))
                    })
                    .collect()
            }
        }
    }

    fn tokenizer_config(self) -> Result<serde_json::Value> {
        match self {
            Self::Minimind2 => Ok(minimind2_tokenizer_config()),
            Self::Minimind3 => Ok(serde_json::from_str(MINIMIND3_TOKENIZER_CONFIG)?),
        }
    }
}

/// MiniMind2's chat template (from its `tokenizer_config.json`): default system prompt, every user
/// turn followed by the assistant header, assistant turns closed by `<|im_end|>\n`.
pub const MINIMIND2_CHAT_TEMPLATE: &str = "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{{ '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}{% else %}{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}{% for message in messages %}{% set content = message['content'] %}{% if message['role'] == 'user' %}{{ '<|im_start|>user\\n' + content + '<|im_end|>\\n<|im_start|>assistant\\n' }}{% elif message['role'] == 'assistant' %}{{ content + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}";

/// The training text of a corpus line: the `text` of a pretraining row, or the contents of an SFT
/// row's messages joined by newlines (as minimind-3 trains its tokenizer).
pub fn corpus_text(line: &str) -> Result<String, String> {
    parse_text_row(line).or_else(|text_err| match crate::data::sft::parse_conversation(line) {
        Ok(messages) => Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")),
        Err(_) => Err(format!("{text_err}, or an SFT row {{\"conversations\": […]}}")),
    })
}

/// Trains on every line of the `data` files (see [`corpus_text`]) and writes `tokenizer.json` and
/// `tokenizer_config.json` into `out`.
pub fn train_tokenizer(data: &[PathBuf], vocab_size: usize, out: &Path, skip_bad: bool) -> Result<()> {
    train_tokenizer_with(data, vocab_size, out, skip_bad, TokenizerLayout::Minimind2)
}

/// [`train_tokenizer`] with the reserved tokens and template of `layout`.
pub fn train_tokenizer_with(
    data: &[PathBuf],
    vocab_size: usize,
    out: &Path,
    skip_bad: bool,
    layout: TokenizerLayout,
) -> Result<()> {
    let reserved = layout.reserved()?;
    if vocab_size < 256 + reserved.len() {
        bail!(
            "--vocab-size must be at least {} (256 byte symbols + {} reserved tokens)",
            256 + reserved.len(),
            reserved.len()
        );
    }
    if data.is_empty() {
        bail!("no --data file given");
    }
    let indexes = data
        .iter()
        .map(|path| JsonlIndex::build(path, skip_bad, |line| corpus_text(line).map(|_| ())))
        .collect::<Result<Vec<_>>>()?;
    let specials = reserved.iter().map(|(t, _)| AddedToken::from(t.clone(), true)).collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tokenizer = HfTokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // The trainer takes a plain iterator; a read error is kept and reported after it.
    let read_error = std::sync::Mutex::new(None);
    let rows = indexes.iter().flat_map(|index| (0..index.len()).map(move |i| (index, i)));
    let texts = rows.filter_map(|(index, i)| {
        let text = index.read(i).and_then(|l| corpus_text(&l).map_err(anyhow::Error::msg));
        text.map_err(|e| {
            let e = e.context(format!("{}:{}", index.path.display(), index.line_number(i)));
            *read_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        })
        .ok()
    });
    let mut wrapper = tokenizers::models::TrainerWrapper::BpeTrainer(trainer);
    tokenizer.train(&mut wrapper, texts).map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    if let Some(e) = read_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (id, (token, _)) in reserved.iter().enumerate() {
        if tokenizer.token_to_id(token) != Some(id as u32) {
            bail!("reserved token {token} did not land at id {id}");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Trained as specials so they take the first ids; then, as minimind-3 does, the tool/think tags
    // and buffers become ordinary added tokens (kept whole, but shown when decoding).
    let mut json: serde_json::Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(|e| anyhow!("serializing the tokenizer: {e}"))?)?;
    for entry in json["added_tokens"].as_array_mut().context("added_tokens")? {
        let id = entry["id"].as_u64().context("added token id")? as usize;
        if let Some((_, special)) = reserved.get(id) {
            entry["special"] = json!(*special);
        }
    }
    let json = serde_json::to_string(&json)?;
    atomic_write(&out.join("tokenizer.json"), |w| Ok(w.write_all(json.as_bytes())?))?;
    let config = serde_json::to_string_pretty(&layout.tokenizer_config()?)?;
    atomic_write(&out.join("tokenizer_config.json"), |w| Ok(w.write_all(config.as_bytes())?))?;
    for index in indexes.iter().filter(|i| i.skipped > 0) {
        eprintln!("skipped {} malformed lines of {}", index.skipped, index.path.display());
    }
    Ok(())
}

/// MiniMind2's `tokenizer_config.json` (special tokens, no auto bos/eos, the chat template).
pub fn minimind2_tokenizer_config() -> serde_json::Value {
    let added: serde_json::Map<String, serde_json::Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let entry = json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                               "single_word": false, "special": true});
            (id.to_string(), entry)
        })
        .collect();
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": added,
        "additional_special_tokens": [],
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "legacy": true,
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<|endoftext|>",
        "chat_template": MINIMIND2_CHAT_TEMPLATE,
    })
}
