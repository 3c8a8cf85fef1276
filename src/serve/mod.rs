//! `minimind serve`: an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/health`) and a web chat page at `/`, over the generation [`engine`].
//!
//! Responses follow OpenAI's shapes: `chat.completion` objects with `usage`; streams of
//! `chat.completion.chunk` events (the first delta carries the role, the last the `finish_reason`,
//! an optional usage-only chunk) ending with `data: [DONE]`; errors as
//! `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status. Text inside
//! `<think>…</think>` goes to `reasoning_content`.

pub mod engine;
pub mod metrics;
pub mod request;
pub mod tokens;

use crate::infer::reasoning::{ReasoningSplit, Split};
use crate::infer::FinishReason;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, Event, Job};
use request::{ApiError, Request};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::unbounded_channel;

const PAGE: &str = include_str!("page.html");

/// Serves `models` on `host:port` until the process ends: the generation worker with room for
/// `queue` waiting requests, and the routes over it.
pub fn run(
    models: Vec<engine::LoadedModel>,
    host: &str,
    port: u16,
    config: engine::EngineConfig,
    api_key: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let ids: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
    let engine = Engine::start(models, config);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))?;
        eprintln!("serving {} on http://{} (web chat at /, API at /v1)", ids.join(", "), listener.local_addr()?);
        axum::serve(listener, router_with_key(engine, api_key)).await?;
        Ok(())
    })
}

/// The HTTP routes over a running engine. Every non-2xx answer is an OpenAI-shaped error: unknown
/// paths (404), wrong methods (405), bodies over 2 MiB (413), headers over [`MAX_HEADER_BYTES`] (431).
pub fn router(engine: Engine) -> Router {
    router_with_key(engine, None)
}

/// [`router`] where, with an `api_key`, the API (`/v1/*`, `/tokenize`, `/detokenize`) answers only
/// requests carrying `Authorization: Bearer <key>` (401 otherwise); the page, `/health` and
/// `/metrics` stay open.
pub fn router_with_key(engine: Engine, api_key: Option<String>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .layer(axum::middleware::from_fn(move |request, next| require_key(api_key.clone(), request, next)));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "no such path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed on this path")
        })
        .layer(axum::middleware::from_fn(limit_headers))
        .with_state(engine)
}

async fn require_key(key: Option<String>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(key) = key else { return next.run(request).await };
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if given.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|g| g.trim() == key) {
        return next.run(request).await;
    }
    let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", "missing or incorrect API key");
    error.code = Some("invalid_api_key");
    error.into_response()
}

/// Request headers larger than this in all are refused with 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

async fn limit_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let size: usize = request.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if size > MAX_HEADER_BYTES {
        let message = format!("request headers of {size} bytes exceed {MAX_HEADER_BYTES}");
        return ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "invalid_request_error", &message)
            .into_response();
    }
    next.run(request).await
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 200 `{"status": "ok", …}` while the generation worker runs, 503 `"unhealthy"` once it has stopped.
async fn health(State(engine): State<Engine>) -> Response {
    let pending = engine.pending.load(Ordering::SeqCst);
    let running = engine.running.load(Ordering::SeqCst);
    let generated = engine.generated.load(Ordering::SeqCst);
    let (status, word) = match engine.alive.load(Ordering::SeqCst) {
        true => (StatusCode::OK, "ok"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
    };
    let body = json!({"status": word, "pending": pending, "running": running, "max_batch": engine.config.max_batch,
                      "generated_tokens": generated});
    (status, Json(body)).into_response()
}

/// Prometheus text format (version 0.0.4).
async fn metrics(State(engine): State<Engine>) -> Response {
    let running = engine.running.load(Ordering::SeqCst);
    let waiting = engine.pending.load(Ordering::SeqCst).saturating_sub(running);
    let body = engine.metrics.render(waiting, running);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn models(State(engine): State<Engine>) -> Json<Value> {
    let data: Vec<Value> = engine
        .models
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": now(), "owned_by": "minimind"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// A body that could not be read (over the size limit: 413) as an OpenAI-shaped error.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

async fn chat_completions(State(engine): State<Engine>, body: Body) -> Response {
    match body {
        Ok(body) => respond(engine, body, true).await,
        Err(e) => ApiError::new(e.status(), "invalid_request_error", &e.body_text()).into_response(),
    }
}

async fn completions(State(engine): State<Engine>, body: Body) -> Response {
    match body {
        Ok(body) => respond(engine, body, false).await,
        Err(e) => ApiError::new(e.status(), "invalid_request_error", &e.body_text()).into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

async fn respond(engine: Engine, body: Bytes, chat: bool) -> Response {
    let req = match Request::parse(&engine, &body, chat) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (tx, mut rx) = unbounded_channel();
    let job = Job {
        model: req.model,
        prompt: req.prompt.clone(),
        max_new_tokens: req.max_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        events: tx,
        submitted: std::time::Instant::now(),
    };
    if let Err(msg) = engine.submit(job) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg).into_response();
    }
    let id = format!("{}-{:x}", if chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>());
    let model_id = engine.models[req.model].id.clone();
    let created = now();
    if !req.stream {
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens});
                    let choice = if chat {
                        let split = ReasoningSplit::whole(&text, req.opens_thinking);
                        let mut message = json!({"role": "assistant", "content": split.content});
                        if !split.reasoning.is_empty() {
                            message["reasoning_content"] = json!(split.reasoning);
                        }
                        json!({"index": 0, "message": message, "finish_reason": finish_name(finish)})
                    } else {
                        json!({"index": 0, "text": text, "finish_reason": finish_name(finish)})
                    };
                    let object = if chat { "chat.completion" } else { "text_completion" };
                    return Json(json!({"id": id, "object": object, "created": created, "model": model_id,
                                       "choices": [choice], "usage": usage}))
                    .into_response();
                }
                Some(Event::Error(e)) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e).into_response()
                }
                None => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "generation stopped")
                        .into_response()
                }
            }
        }
    }
    // Streaming: the first chunk carries the role; deltas; a final chunk with the finish reason;
    // the usage chunk when asked; then [DONE].
    let include_usage = req.include_usage;
    let chunk = move |delta: Value, finish: Option<&str>| -> Value {
        if chat {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": model_id,
                   "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish}]})
        }
    };
    let first = if chat {
        chunk(json!({"role": "assistant", "content": ""}), None)
    } else {
        chunk(json!({"content": ""}), None)
    };
    let queue = std::collections::VecDeque::from([first.to_string()]);
    // Completions stream raw text; chat streams it split into reasoning and content.
    let splitter = chat.then(|| ReasoningSplit::new(req.opens_thinking));
    let state = (rx, splitter, queue, false, chunk);
    let stream = futures_util::stream::unfold(
        state,
        move |(mut rx, mut splitter, mut queue, mut finished, chunk)| async move {
            while queue.is_empty() && !finished {
                match rx.recv().await {
                    Some(Event::Text(t)) => {
                        let piece = match splitter.as_mut() {
                            Some(s) => delta(s.push(&t)),
                            None => json!({"content": t}),
                        };
                        queue.push_back(chunk(piece, None).to_string())
                    }
                    Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                        // A partial tag held back at the very end is text after all.
                        if let Some(rest) = splitter.as_mut().map(ReasoningSplit::finish) {
                            if rest != Split::default() {
                                queue.push_back(chunk(delta(rest), None).to_string());
                            }
                        }
                        queue.push_back(chunk(json!({}), Some(finish_name(finish))).to_string());
                        if include_usage {
                            let mut usage = chunk(json!({}), None);
                            usage["choices"] = json!([]);
                            usage["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                "total_tokens": prompt_tokens + completion_tokens});
                            queue.push_back(usage.to_string());
                        }
                        queue.push_back("[DONE]".to_string());
                        finished = true;
                    }
                    Some(Event::Error(e)) => {
                        queue.push_back(
                            json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}})
                                .to_string(),
                        );
                        queue.push_back("[DONE]".to_string());
                        finished = true;
                    }
                    None => finished = true,
                }
            }
            let data = queue.pop_front()?;
            Some((Ok::<_, Infallible>(SseEvent::default().data(data)), (rx, splitter, queue, finished, chunk)))
        },
    );
    let mut response = Sse::new(stream).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}

/// A chat delta from a piece of split answer: `reasoning_content` and/or `content`.
fn delta(piece: Split) -> Value {
    let mut delta = json!({});
    if !piece.reasoning.is_empty() {
        delta["reasoning_content"] = json!(piece.reasoning);
    }
    if !piece.content.is_empty() || piece.reasoning.is_empty() {
        delta["content"] = json!(piece.content);
    }
    delta
}
