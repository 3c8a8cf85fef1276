//! Tool calling as the OpenAI API shapes it, over minimind-3's template: the request's `tools` go
//! into the chat template (`<tools>…</tools>` in the system turn), and the model answers a call as
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. Those blocks become the reply's
//! `tool_calls` (ids, names, JSON-string arguments) and `finish_reason: "tool_calls"`; an answer
//! whose blocks are not valid calls stays plain content.

use serde_json::{json, Value};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// What the request asked of tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// No tools offered (or `tool_choice: "none"`): the answer is content.
    None,
    /// The model decides (`"auto"`, the default with tools).
    Auto,
    /// The answer starts as a call (`"required"`, or one named function): the prompt ends with the
    /// start of the block, which the reply's text is read with.
    Forced(String),
}

impl ToolChoice {
    /// Text appended to the rendered prompt (and put back before the answer when reading it).
    pub fn prompt_suffix(&self) -> &str {
        match self {
            ToolChoice::Forced(prefix) => prefix,
            _ => "",
        }
    }

    /// `tool_choice` of a request offering `tools` (function names).
    pub fn parse(choice: Option<&Value>, names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return match choice {
                None | Some(Value::Null) => Ok(ToolChoice::None),
                Some(Value::String(s)) if s == "none" || s == "auto" => Ok(ToolChoice::None),
                Some(_) => Err("tool_choice needs tools".into()),
            };
        }
        match choice {
            None | Some(Value::Null) => Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Forced(format!("{OPEN}\n"))),
                other => Err(format!("tool_choice must be none, auto, required or a function, got {other:?}")),
            },
            Some(v) => {
                let name =
                    v.pointer("/function/name").and_then(Value::as_str).ok_or("tool_choice must name a function")?;
                if !names.iter().any(|n| n == name) {
                    return Err(format!("tool_choice names {name:?}, which is not among the tools"));
                }
                Ok(ToolChoice::Forced(format!("{OPEN}\n{{\"name\": \"{name}\", \"arguments\": ")))
            }
        }
    }
}

/// A request's `tools` (`[{"type": "function", "function": {"name", "parameters"?, …}}]`) as
/// `(name, parameters schema)`.
pub fn tool_specs(tools: &Value) -> Result<Vec<(String, Option<Value>)>, String> {
    let Value::Array(tools) = tools else { return Err("tools must be an array".into()) };
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = t.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}")
            })?;
            Ok((name.to_string(), t.pointer("/function/parameters").cloned()))
        })
        .collect()
}

/// The calls in a generated answer: its `<tool_call>` blocks, each `{"name": string, "arguments":
/// object}`, as OpenAI `tool_calls` (arguments as a JSON string), and the text around them (trimmed).
/// `None` when there is no block or any block is not a valid call: the answer is then plain content.
pub fn parse_tool_calls(text: &str) -> Option<(String, Vec<Value>)> {
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after.find(CLOSE)?;
        let call: Value = serde_json::from_str(after[..end].trim()).ok()?;
        let name = call.get("name").and_then(Value::as_str)?;
        let arguments = match call.get("arguments") {
            Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object()) => s.clone(),
            Some(args @ Value::Object(_)) => args.to_string(),
            None => "{}".to_string(),
            _ => return None,
        };
        let id = format!("call_{:016x}", rand::random::<u64>());
        calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
        rest = &after[end + CLOSE.len()..];
    }
    content.push_str(rest);
    (!calls.is_empty()).then(|| (content.trim().to_string(), calls))
}
