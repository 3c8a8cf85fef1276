//! Constrained decoding with llguidance (the engine llama.cpp and mistral.rs use): a grammar — here a
//! JSON schema, or "any JSON object" — becomes a [`Matcher`] that, at each step, says which tokens may
//! come next. Decoding masks every other token's logit to −∞ before sampling, so the answer always
//! parses (and validates against the schema) when it ends.
//!
//! llguidance works on token bytes: the tokenizer's byte-level BPE strings are mapped back to the raw
//! bytes they stand for (GPT-2's byte ↔ character table), special tokens marked as such so no grammar
//! can produce them as text.

use crate::Tokenizer;
use anyhow::{anyhow, Result};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use std::sync::Arc;

pub use llguidance::Matcher as Constraint;

/// A model's tokenizer indexed for llguidance, built once.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// `stop` is the token that ends an answer (the chat's `<|im_end|>`): allowed once the grammar
    /// is complete.
    pub fn new(tokenizer: &Tokenizer, stop: u32) -> Result<Self> {
        let hf = tokenizer.hf();
        let n = hf.get_vocab_size(true);
        let unicode_to_byte = byte_level_table();
        let special: std::collections::HashSet<u32> =
            hf.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let piece = hf.id_to_token(id).unwrap_or_default();
                if special.contains(&id) {
                    let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    bytes.extend(piece.as_bytes());
                    return bytes;
                }
                // A byte-level piece maps char by char to bytes; anything else is taken as UTF-8.
                piece
                    .chars()
                    .map(|c| unicode_to_byte.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.as_bytes().to_vec())
            })
            .collect();
        let info = TokRxInfo::new(n as u32, stop);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, &words)));
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A matcher for JSON that validates against `schema` (any JSON object when `None`), written
    /// compactly (`", "` and `": "` between items, no other whitespace: a model cannot stall the
    /// answer in blank space) unless the schema's own `x-guidance` says otherwise.
    pub fn json(&self, schema: Option<&Value>) -> Result<Matcher> {
        let mut schema = schema.cloned().unwrap_or_else(|| serde_json::json!({"type": "object"}));
        if let Some(object) = schema.as_object_mut() {
            object.entry("x-guidance").or_insert_with(
                || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
            );
        }
        let parser = self.factory.create_parser(TopLevelGrammar::from_json_schema(schema))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(anyhow!("{e}"));
        }
        Ok(matcher)
    }
}

impl Grammars {
    /// The rest of a forced tool call after the prompt's `<tool_call>\n` — `{"name": <one of the
    /// tools>, "arguments": <JSON valid for that tool's parameters>}\n</tool_call>` — or, with `name`,
    /// after the prompt's `<tool_call>\n{"name": "<name>", "arguments": `, only the arguments and the
    /// close. `tools` are `(name, parameters schema)`.
    pub fn tool_call(&self, tools: &[(String, Option<Value>)], name: Option<&str>) -> Result<Matcher> {
        let lark_string = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let args = |schema: &Option<Value>| -> String {
            let mut schema =
                schema.clone().filter(Value::is_object).unwrap_or_else(|| serde_json::json!({"type": "object"}));
            if let Some(object) = schema.as_object_mut() {
                object.entry("x-guidance").or_insert_with(
                    || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
                );
            }
            format!("%json {schema}")
        };
        let close = lark_string("}\n</tool_call>");
        let mut lark = String::new();
        match name {
            Some(name) => {
                let (_, schema) = tools.iter().find(|(n, _)| n == name).ok_or_else(|| anyhow!("no tool {name:?}"))?;
                lark.push_str(&format!("start: args {close}\nargs: {}\n", args(schema)));
            }
            None => {
                let calls: Vec<String> = (0..tools.len()).map(|i| format!("call{i}")).collect();
                lark.push_str(&format!("start: {}\n", calls.join(" | ")));
                for (i, (name, schema)) in tools.iter().enumerate() {
                    let open = lark_string(&format!("{{\"name\": \"{name}\", \"arguments\": "));
                    lark.push_str(&format!("call{i}: {open} args{i} {close}\nargs{i}: {}\n", args(schema)));
                }
            }
        }
        let parser = self.factory.create_parser(TopLevelGrammar::from_lark(lark))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(anyhow!("{e}"));
        }
        Ok(matcher)
    }
}

/// Masks `logits` to the tokens `matcher` allows next (−∞ elsewhere, including ids past the
/// tokenizer's vocabulary that a model's head may have).
pub fn mask_logits(matcher: &mut Matcher, logits: &mut [f32]) -> Result<()> {
    let allowed = matcher.compute_mask_or_eos()?;
    for (id, l) in logits.iter_mut().enumerate() {
        if id >= allowed.len() || !allowed.is_allowed(id as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
    Ok(())
}

/// GPT-2's byte-level table inverted: the character each byte is written as → the byte.
fn byte_level_table() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            (char::from_u32(c).expect("a valid char"), b)
        })
        .collect()
}
