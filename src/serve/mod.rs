//! `minimind serve`: an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/health`) and a web chat page at `/`, over the generation [`engine`].
//!
//! Responses follow OpenAI's shapes: `chat.completion` objects with `usage`; streams of
//! `chat.completion.chunk` events (the first delta carries the role, the last the `finish_reason`,
//! an optional usage-only chunk) ending with `data: [DONE]`; errors as
//! `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status. Text inside
//! `<think>…</think>` goes to `reasoning_content`. The routes live here, the answers' shapes in
//! `reply.rs`.

pub mod demo_tools;
pub mod engine;
pub mod metrics;
mod reply;
pub mod request;
mod running;
pub mod tokens;
pub mod tools;
pub mod votes;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Engine, Event, Job};
use reply::{stream_reply, whole_reply, Reply};
use request::{ApiError, Request};
use serde_json::{json, Value};
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
    votes: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let ids: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
    let engine = Engine::start(models, config);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))?;
        eprintln!("serving {} on http://{} (web chat at /, API at /v1)", ids.join(", "), listener.local_addr()?);
        axum::serve(listener, router_with(engine, api_key, votes::VoteLog::new(votes))).await?;
        Ok(())
    })
}

/// The HTTP routes over a running engine. Every non-2xx answer is an OpenAI-shaped error: unknown
/// paths (404), wrong methods (405), bodies over 2 MiB (413), headers over [`MAX_HEADER_BYTES`] (431).
pub fn router(engine: Engine) -> Router {
    router_with_key(engine, None)
}

/// [`router`] where, with an `api_key`, the API (`/v1/*`, `/tokenize`, `/detokenize`, the page's `/demo/tools`) answers only
/// requests carrying `Authorization: Bearer <key>` (401 otherwise); the page, `/health` and
/// `/metrics` stay open.
pub fn router_with_key(engine: Engine, api_key: Option<String>) -> Router {
    router_with(engine, api_key, votes::VoteLog::default())
}

/// [`router_with_key`] whose `POST /feedback/vote` appends the page's side-by-side votes to `votes`.
pub fn router_with(engine: Engine, api_key: Option<String>, votes: votes::VoteLog) -> Router {
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/demo/tools", get(demo_tools::list))
        .route("/demo/tools/{name}", post(demo_tools::call))
        .route("/feedback/vote", post(votes::vote))
        .layer(axum::Extension(votes))
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

async fn respond(engine: Engine, body: Bytes, chat: bool) -> Response {
    let req = match Request::parse(&engine, &body, chat) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // `n` choices are `n` jobs (seeds seed, seed+1, …) whose events meet in one channel, tagged with
    // the choice's index. A client that goes away drops the channel, which cancels every choice.
    let (tx, rx) = unbounded_channel::<(usize, Event)>();
    for index in 0..req.n {
        let (job_tx, mut job_rx) = unbounded_channel();
        let mut sampling = req.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(index as u64);
        let job = Job {
            model: req.model,
            prompt: req.prompt.clone(),
            max_new_tokens: req.max_tokens,
            sampling,
            stop: req.stop.clone(),
            events: job_tx,
            submitted: std::time::Instant::now(),
            logprobs: req.logprobs,
            constraint: req.constraint.as_ref().map(|c| c.deep_clone()),
        };
        if let Err(msg) = engine.submit(job) {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg).into_response();
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = job_rx.recv().await {
                if tx.send((index, event)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let reply = Reply {
        id: format!("{}-{:x}", if chat { "chatcmpl" } else { "cmpl" }, rand::random::<u64>()),
        model: engine.models[req.model].id.clone(),
        created: now(),
        chat,
    };
    if req.stream {
        stream_reply(reply, &req, rx)
    } else {
        whole_reply(reply, &req, rx).await
    }
}
