//! Parsing and validating OpenAI-style requests into generation jobs, with OpenAI-shaped errors.

use super::engine::Engine;
use super::tools::{tool_specs, ToolChoice};
use crate::infer::sampler::{SamplingParams, DEFAULT_MAX_NEW_TOKENS};
use axum::http::StatusCode;
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: &str) -> Self {
        Self { status, kind, message: message.to_string(), param: None, code: None }
    }

    fn invalid(param: &'static str, message: String) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message, param: Some(param), code: None }
    }
}

/// The most choices one request may ask for (`n`).
pub const MAX_CHOICES: usize = 8;

pub struct Request {
    pub model: usize,
    /// Choices to generate (`n`), each its own sequence with seed `seed + index`.
    pub n: usize,
    /// Report token log probabilities with this many alternatives (chat: `logprobs` +
    /// `top_logprobs`; completions: `logprobs: k`).
    pub logprobs: Option<usize>,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The rendered prompt ends inside an opened `<think>` block (the answer starts in its reasoning).
    pub opens_thinking: bool,
    /// Tools offered, and whether the answer must be a call.
    pub tools: ToolChoice,
    /// Structured output (`response_format` `json_object` / `json_schema`): the grammar the answer
    /// is decoded under.
    pub constraint: Option<crate::infer::grammar::Constraint>,
}

fn number(body: &Value, key: &'static str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| ApiError::invalid(key, format!("{key} must be a number"))),
    }
}

/// A boolean field at `pointer` (false when absent or null); anything but a boolean is a 400.
fn flag(body: &Value, pointer: &str, param: &'static str) -> Result<bool, ApiError> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(param, format!("{} must be true or false, got {other}", &pointer[1..]))),
    }
}

/// Text of a message's `content`: a string, or an array of `{"type": "text", "text": …}` parts.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            parts.iter().map(|p| p.get("text").and_then(Value::as_str)).collect::<Option<Vec<_>>>().map(|v| v.concat())
        }
        _ => None,
    }
}

/// The model a request names (`model`); without one, the first model unless `required`.
pub fn model_index(engine: &Engine, body: &Value, required: bool) -> Result<usize, ApiError> {
    let name = match body.get("model").and_then(Value::as_str) {
        Some(name) => name,
        None if required => return Err(ApiError::invalid("model", "model is required".into())),
        None => return Ok(0),
    };
    engine.models.iter().position(|m| m.answers_to(name)).ok_or_else(|| {
        let known: Vec<&str> = engine.models.iter().map(|m| m.id.as_str()).collect();
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message: format!("the model {name:?} does not exist; available: {}", known.join(", ")),
            param: Some("model"),
            code: Some("model_not_found"),
        }
    })
}

/// `response_format`: `text` (default), `json_object` (any JSON object) or `json_schema`
/// (`{"json_schema": {"name", "schema"}}`): a grammar the answer is decoded under, so it always parses
/// and validates. A schema the grammar engine cannot compile is a 400.
fn response_format(
    engine: &Engine,
    model: usize,
    body: &Value,
) -> Result<Option<crate::infer::grammar::Constraint>, ApiError> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(f) => f,
    };
    let schema = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => None,
        Some("json_schema") => Some(
            format
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| ApiError::invalid("response_format", "json_schema needs a schema object".into()))?,
        ),
        _ => return Err(ApiError::invalid("response_format", "type must be text, json_object or json_schema".into())),
    };
    let grammars =
        engine.grammars(model).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e))?;
    grammars
        .json(schema)
        .map(Some)
        .map_err(|e| ApiError::invalid("response_format", format!("the schema cannot be used: {e:#}")))
}

/// The grammar of a forced tool call (`tool_choice` `required` or a named function) over `tools`.
fn forced_call(
    engine: &Engine,
    model: usize,
    body: &Value,
    tools: &[(String, Option<Value>)],
) -> Result<crate::infer::grammar::Constraint, ApiError> {
    let name = body.pointer("/tool_choice/function/name").and_then(Value::as_str);
    let grammars =
        engine.grammars(model).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e))?;
    grammars
        .tool_call(tools, name)
        .map_err(|e| ApiError::invalid("tools", format!("the tools' parameters cannot be used: {e:#}")))
}

/// Chat: `logprobs: true` with `top_logprobs` 0–20; completions: `logprobs: k` with k 0–5.
fn logprobs_request(body: &Value, chat: bool) -> Result<Option<usize>, ApiError> {
    let whole = |key: &'static str, max: f64| -> Result<Option<usize>, ApiError> {
        match number(body, key)? {
            None => Ok(None),
            Some(k) if (0.0..=max).contains(&k) && k.fract() == 0.0 => Ok(Some(k as usize)),
            Some(k) => Err(ApiError::invalid(key, format!("{key} must be an integer in 0..={max}, got {k}"))),
        }
    };
    if !chat {
        return whole("logprobs", 5.0);
    }
    let top = whole("top_logprobs", 20.0)?;
    match (flag(body, "/logprobs", "logprobs")?, top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, Some(_)) => Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true".into())),
        (false, None) => Ok(None),
    }
}

/// The body as a JSON object, or a 400.
pub fn json_object(body: &[u8]) -> Result<Value, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("the request body is not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::invalid("body", "the request body must be a JSON object".into()));
    }
    Ok(body)
}

impl Request {
    pub fn parse(engine: &Engine, body: &[u8], chat: bool) -> Result<Self, ApiError> {
        let body = json_object(body)?;
        let model = model_index(engine, &body, true)?;
        let m = &engine.models[model];
        let (prompt, opens_thinking, tools, tool_specs) = if chat {
            let p = chat_prompt(m, &body)?;
            (p.ids, p.opens_thinking, p.tools, p.tool_specs)
        } else {
            (completion_prompt(m, &body)?, false, ToolChoice::None, Vec::new())
        };
        // A request's prompt and answer share one KV slot.
        let context = engine.config.slot_capacity(&m.model);
        if prompt.len() >= context {
            return Err(ApiError::invalid(
                "messages",
                format!("the prompt has {} tokens; the context holds {context}", prompt.len()),
            ));
        }
        let room = context - prompt.len();
        let max_tokens = match (number(&body, "max_completion_tokens")?, number(&body, "max_tokens")?) {
            (Some(n), _) | (None, Some(n)) => {
                if n < 1.0 || n.fract() != 0.0 {
                    return Err(ApiError::invalid(
                        "max_tokens",
                        format!("max_tokens must be a positive integer, got {n}"),
                    ));
                }
                if n as usize > room {
                    return Err(ApiError::invalid(
                        "max_tokens",
                        format!(
                            "max_tokens {n} plus the prompt's {} tokens exceeds the context of {context}",
                            prompt.len()
                        ),
                    ));
                }
                n as usize
            }
            (None, None) => DEFAULT_MAX_NEW_TOKENS.min(room),
        };
        let logprobs = logprobs_request(&body, chat)?;
        let mut constraint = response_format(engine, model, &body)?;
        if let ToolChoice::Forced(_) = tools {
            // A forced call is decoded under its tools' grammar: its arguments always parse.
            constraint = Some(forced_call(engine, model, &body, &tool_specs)?);
        }
        let n = match number(&body, "n")? {
            None => 1,
            Some(n) if (1.0..=MAX_CHOICES as f64).contains(&n) && n.fract() == 0.0 => n as usize,
            Some(n) => {
                return Err(ApiError::invalid("n", format!("n must be an integer in 1..={MAX_CHOICES}, got {n}")))
            }
        };
        // Unset fields take the same defaults as `minimind generate` / `chat`.
        let defaults = SamplingParams::default();
        let temperature = number(&body, "temperature")?.unwrap_or(defaults.temperature);
        let top_p = number(&body, "top_p")?.unwrap_or(defaults.top_p);
        if !((0.0..=2.0).contains(&temperature) && top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("temperature", "temperature must be in [0, 2] and top_p in (0, 1]".into()));
        }
        // frequency_penalty f maps onto the repetition penalty 1 + f (HF semantics).
        let repetition_penalty = match (number(&body, "repetition_penalty")?, number(&body, "frequency_penalty")?) {
            (Some(r), _) => r,
            (None, Some(f)) => (1.0 + f).max(0.01),
            (None, None) => defaults.repetition_penalty,
        };
        if repetition_penalty <= 0.0 {
            return Err(ApiError::invalid("repetition_penalty", "repetition_penalty must be > 0".into()));
        }
        let sampling = SamplingParams {
            temperature,
            top_k: number(&body, "top_k")?.map_or(defaults.top_k, |k| k.max(0.0) as usize),
            top_p,
            repetition_penalty,
            seed: number(&body, "seed")?.map_or_else(rand::random::<u64>, |s| s as u64),
        };
        let stop = match body.get("stop") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("stop", "stop must be a string or an array of strings".into()))?,
            Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or an array of strings".into())),
        };
        let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();
        let stream = flag(&body, "/stream", "stream")?;
        let include_usage = flag(&body, "/stream_options/include_usage", "stream_options")?;
        Ok(Self {
            model,
            n,
            logprobs,
            prompt,
            max_tokens,
            sampling,
            stop,
            stream,
            include_usage,
            opens_thinking,
            tools,
            constraint,
        })
    }
}

/// Extra variables for the chat template: `chat_template_kwargs` (vLLM's field; e.g.
/// `{"enable_thinking": false}`) and minimind-3's top-level `open_thinking` switch.
fn template_kwargs(body: &Value) -> Result<Value, ApiError> {
    let mut kwargs = match body.get("chat_template_kwargs") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(_) => {
            return Err(ApiError::invalid("chat_template_kwargs", "chat_template_kwargs must be an object".into()))
        }
    };
    if body.get("open_thinking").is_some_and(|v| !v.is_null()) {
        let on = flag(body, "/open_thinking", "open_thinking")?;
        kwargs["open_thinking"] = json!(on);
        kwargs["enable_thinking"] = json!(on);
    }
    Ok(kwargs)
}

/// A chat request's prompt: its ids, whether it ends inside an opened `<think>` block, and what it
/// asked of tools (`tools` rendered into the template; a forced call starts the answer).
pub(crate) fn chat_prompt(m: &super::engine::LoadedModel, body: &Value) -> Result<ChatPrompt, ApiError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("messages", "messages must be an array".into()))?;
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty".into()));
    }
    let mut clean = Vec::with_capacity(messages.len());
    for (i, msg) in messages.iter().enumerate() {
        clean.push(clean_message(i, msg)?);
    }
    let tool_specs = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(tools) => tool_specs(tools).map_err(|e| ApiError::invalid("tools", e))?,
    };
    let names: Vec<String> = tool_specs.iter().map(|(name, _)| name.clone()).collect();
    let tools = ToolChoice::parse(body.get("tool_choice"), &names).map_err(|e| ApiError::invalid("tool_choice", e))?;
    let mut kwargs = template_kwargs(body)?;
    if tools != ToolChoice::None {
        kwargs["tools"] = body["tools"].clone();
    }
    let mut text = m
        .tokenizer
        .apply_chat_template(&Value::Array(clean), true, &kwargs)
        .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
    text.push_str(tools.prompt_suffix());
    let ids = m
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &format!("{e:#}")))?;
    Ok(ChatPrompt { ids, opens_thinking: crate::infer::reasoning::opens_thinking(&text), tools, tool_specs })
}

pub(crate) struct ChatPrompt {
    /// The offered tools as `(name, parameters schema)`.
    pub tool_specs: Vec<(String, Option<Value>)>,
    pub ids: Vec<u32>,
    pub opens_thinking: bool,
    pub tools: ToolChoice,
}

/// One message for the template: system, user, assistant (content, or `tool_calls` with a null
/// content) or tool (a function's result).
fn clean_message(i: usize, msg: &Value) -> Result<Value, ApiError> {
    let role = msg.get("role").and_then(Value::as_str).unwrap_or("");
    if !["system", "user", "assistant", "tool"].contains(&role) {
        return Err(ApiError::invalid(
            "messages",
            format!("messages[{i}].role must be system, user, assistant or tool, got {role:?}"),
        ));
    }
    let calls = msg.get("tool_calls").filter(|c| !c.is_null());
    if calls.is_some_and(|c| !c.is_array()) || (calls.is_some() && role != "assistant") {
        return Err(ApiError::invalid("messages", format!("messages[{i}].tool_calls must be an assistant's array")));
    }
    let content = match msg.get("content") {
        Some(Value::Null) | None if calls.is_some() => Some(String::new()),
        Some(c) => content_text(c),
        None => None,
    }
    .ok_or_else(|| ApiError::invalid("messages", format!("messages[{i}].content must be a string")))?;
    let mut clean = json!({"role": role, "content": content});
    if let Some(calls) = calls {
        clean["tool_calls"] = calls.clone();
    }
    Ok(clean)
}

pub(crate) fn completion_prompt(m: &super::engine::LoadedModel, body: &Value) -> Result<Vec<u32>, ApiError> {
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        _ => return Err(ApiError::invalid("prompt", "prompt must be a string".into())),
    };
    crate::infer::generate::encode_prompt(&m.tokenizer, &prompt, false, None)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &format!("{e:#}")))
}
