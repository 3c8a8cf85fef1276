//! `POST /tokenize` and `POST /detokenize`, shaped as vLLM's (llama.cpp's `content` is accepted too):
//! what the server would feed the model for a prompt or a conversation, and the text of token ids.

use super::engine::Engine;
use super::request::{chat_prompt, completion_prompt, json_object, model_index, ApiError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// `{"prompt": "…"}` (encoded as `/v1/completions` encodes it), `{"messages": […]}` (the chat
/// template with the generation prompt, as `/v1/chat/completions`), or `{"content": "…"}` (the bare
/// text) → `{"tokens": […], "count": n, "max_model_len": context}`.
pub async fn tokenize(State(engine): State<Engine>, body: Bytes) -> Response {
    match tokenize_body(&engine, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn tokenize_body(engine: &Engine, body: &[u8]) -> Result<Value, ApiError> {
    let body = json_object(body)?;
    let m = &engine.models[model_index(engine, &body, false)?];
    let tokens = if body.get("messages").is_some() {
        chat_prompt(m, &body)?.ids
    } else if body.get("prompt").is_some() {
        completion_prompt(m, &body)?
    } else if let Some(text) = body.get("content").and_then(Value::as_str) {
        m.tokenizer.encode(text).map_err(server_error)?
    } else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "give prompt, messages or content",
        ));
    };
    let context = engine.config.slot_capacity(&m.model);
    Ok(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": context}))
}

/// `{"tokens": [ids]}` → `{"prompt": text}` (special tokens included, as the model wrote them).
pub async fn detokenize(State(engine): State<Engine>, body: Bytes) -> Response {
    match detokenize_body(&engine, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn detokenize_body(engine: &Engine, body: &[u8]) -> Result<Value, ApiError> {
    let body = json_object(body)?;
    let m = &engine.models[model_index(engine, &body, false)?];
    let vocab = m.tokenizer.vocab_size() as u64;
    let ids = body
        .get("tokens")
        .and_then(Value::as_array)
        .and_then(|ids| {
            ids.iter().map(|v| v.as_u64().filter(|&id| id < vocab).map(|id| id as u32)).collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            let message = format!("tokens must be an array of token ids below {vocab}");
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", &message)
        })?;
    let text = m.tokenizer.decode(&ids, false).map_err(server_error)?;
    Ok(json!({"prompt": text}))
}

fn server_error(e: anyhow::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &format!("{e:#}"))
}
