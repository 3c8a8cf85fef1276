//! Side-by-side human evaluation: the web page's compare mode shows two models' answers to the same
//! prompt and the reader picks the better one; `POST /feedback/vote` appends the pick to the file of
//! `serve --votes FILE` as a DPO row — the preference data for the next round of `minimind dpo`:
//!
//! ```text
//! {"chosen": [...messages, {"role": "assistant", "content": <picked>}],
//!  "rejected": [...messages, {"role": "assistant", "content": <other>}],
//!  "chosen_model": "…", "rejected_model": "…", "time": <unix seconds>}
//! ```
//!
//! The request body: `{"messages": [...], "chosen": {"model", "content"}, "rejected": {"model",
//! "content"}}`, `messages` the conversation up to the user's prompt (ending with a user turn; tool
//! calls and results of earlier turns are kept as they are).

use super::request::ApiError;
use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where votes go (`None`: voting is off), one writer at a time.
#[derive(Clone, Default)]
pub struct VoteLog {
    path: Option<Arc<Mutex<PathBuf>>>,
}

impl VoteLog {
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path: path.map(|p| Arc::new(Mutex::new(p))) }
    }
}

/// The DPO row of a vote, or what is wrong with the request.
pub fn preference_row(body: &Value, time: u64) -> Result<Value, String> {
    let given = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty());
    let mut messages = given.ok_or("\"messages\" must be a non-empty array")?.clone();
    for (i, m) in messages.iter_mut().enumerate() {
        // A tool-calling turn's content may be null (OpenAI's shape); the DPO row stores "".
        if m.get("content").is_some_and(Value::is_null) {
            m["content"] = json!("");
        }
        if !(m.get("role").is_some_and(Value::is_string) && m.get("content").is_some_and(Value::is_string)) {
            return Err(format!("messages[{i}] must have a string \"role\" and a string or null \"content\""));
        }
    }
    if messages.last().and_then(|m| m["role"].as_str()) != Some("user") {
        return Err("the conversation must end with the user's prompt".into());
    }
    let side = |key: &str| -> Result<(String, String), String> {
        let v = body.get(key).ok_or(format!("missing \"{key}\""))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match (text("model"), text("content")) {
            (Some(model), Some(content)) => Ok((model, content)),
            _ => Err(format!("\"{key}\" must be {{\"model\": string, \"content\": string}}")),
        }
    };
    let ((chosen_model, chosen), (rejected_model, rejected)) = (side("chosen")?, side("rejected")?);
    let with = |answer: String| {
        let mut all = messages.clone();
        all.push(json!({"role": "assistant", "content": answer}));
        all
    };
    Ok(json!({"chosen": with(chosen), "rejected": with(rejected), "chosen_model": chosen_model,
        "rejected_model": rejected_model, "time": time}))
}

pub async fn vote(Extension(log): Extension<VoteLog>, body: Bytes) -> Response {
    let bad =
        |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", &message).into_response();
    let Some(path) = log.path else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "voting is off: start serve with --votes FILE",
        )
        .into_response();
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let row = match preference_row(&body, time) {
        Ok(row) => row,
        Err(message) => return bad(message),
    };
    let written = (|| -> std::io::Result<()> {
        let path = path.lock().map_err(|_| std::io::Error::other("vote file lock poisoned"))?;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&*path)?;
        file.write_all(format!("{row}\n").as_bytes())
    })();
    match written {
        Ok(()) => Json(json!({"saved": true})).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &format!("saving the vote: {e}"))
            .into_response(),
    }
}
