//! `minimind serve`: an OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/health`) and a web chat page at `/`, over the generation [`engine`].
//!
//! Responses follow OpenAI's shapes: `chat.completion` objects with `usage`; streams of
//! `chat.completion.chunk` events (the first delta carries the role, the last the `finish_reason`,
//! an optional usage-only chunk) ending with `data: [DONE]`; errors as
//! `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status. Text inside
//! `<think>…</think>` goes to `reasoning_content`.

pub mod demo_tools;
pub mod engine;
pub mod metrics;
pub mod request;
mod running;
pub mod tokens;
pub mod tools;
pub mod votes;

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
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tools::ToolChoice;

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

/// What every response object of one request shares.
#[derive(Clone)]
struct Reply {
    id: String,
    model: String,
    created: u64,
    chat: bool,
}

impl Reply {
    /// A streamed chunk of choice `index`.
    fn chunk(&self, index: usize, delta: Value, finish: Option<&str>) -> Value {
        let (id, created, model) = (&self.id, self.created, &self.model);
        if self.chat {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": index, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish}]})
        }
    }
}

/// A choice's `logprobs`: chat's `{"content": [entries]}`, or the completions API's legacy
/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}` (offsets from `offset`).
fn logprobs_field(chat: bool, entries: &[Value], offset: usize) -> Value {
    if chat {
        return json!({"content": entries});
    }
    let tokens: Vec<&str> = entries.iter().map(|e| e["token"].as_str().unwrap_or("")).collect();
    let mut at = offset;
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let start = at;
            at += t.len();
            start
        })
        .collect();
    let top: Vec<Value> = entries
        .iter()
        .map(|e| {
            let alternatives = e["top_logprobs"].as_array().map(Vec::as_slice).unwrap_or_default();
            Value::Object(
                alternatives
                    .iter()
                    .map(|a| (a["token"].as_str().unwrap_or("").to_string(), a["logprob"].clone()))
                    .collect(),
            )
        })
        .collect();
    json!({"tokens": tokens, "token_logprobs": entries.iter().map(|e| e["logprob"].clone()).collect::<Vec<_>>(),
           "top_logprobs": top, "text_offset": offsets})
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens})
}

/// The whole answer once every choice has finished.
async fn whole_reply(reply: Reply, req: &Request, mut rx: UnboundedReceiver<(usize, Event)>) -> Response {
    let mut texts = vec![String::new(); req.n];
    let mut logprobs: Vec<Vec<Value>> = vec![Vec::new(); req.n];
    let mut finishes = vec![None; req.n];
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    while finishes.iter().any(Option::is_none) {
        match rx.recv().await {
            Some((i, Event::Text(t))) => texts[i].push_str(&t),
            Some((i, Event::Logprobs(entry))) => logprobs[i].push(entry),
            Some((i, Event::Done { finish, prompt_tokens: p, completion_tokens: c, .. })) => {
                finishes[i] = Some(finish);
                prompt_tokens = p;
                completion_tokens += c;
            }
            Some((_, Event::Error(e))) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e).into_response()
            }
            None => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "generation stopped")
                    .into_response()
            }
        }
    }
    let choices: Vec<Value> = texts
        .iter()
        .zip(&finishes)
        .enumerate()
        .map(|(index, (text, finish))| {
            let mut finish = finish_name(finish.unwrap_or(FinishReason::Stop));
            let logprobs = req.logprobs.map(|_| logprobs_field(reply.chat, &logprobs[index], 0));
            if reply.chat {
                let split = ReasoningSplit::whole(text, req.opens_thinking);
                let mut message = json!({"role": "assistant", "content": split.content});
                if !split.reasoning.is_empty() {
                    message["reasoning_content"] = json!(split.reasoning);
                }
                if req.tools != ToolChoice::None {
                    let answer = format!("{}{}", req.tools.prompt_suffix(), split.content);
                    match tools::parse_tool_calls(&answer) {
                        Some((content, calls)) => {
                            message["content"] = if content.is_empty() { Value::Null } else { json!(content) };
                            message["tool_calls"] = json!(calls);
                            finish = "tool_calls";
                        }
                        None => message["content"] = json!(answer),
                    }
                }
                json!({"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs})
            } else {
                json!({"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs})
            }
        })
        .collect();
    let object = if reply.chat { "chat.completion" } else { "text_completion" };
    Json(json!({"id": reply.id, "object": object, "created": reply.created, "model": reply.model,
                "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}))
    .into_response()
}

/// Server-sent events: each choice's first chunk carries the role; deltas; a chunk with its finish
/// reason; after the last choice the usage chunk when asked, then `[DONE]`.
fn stream_reply(reply: Reply, req: &Request, rx: UnboundedReceiver<(usize, Event)>) -> Response {
    let first = |index: usize| {
        let delta = if reply.chat { json!({"role": "assistant", "content": ""}) } else { json!({"content": ""}) };
        reply.chunk(index, delta, None).to_string()
    };
    let queue: std::collections::VecDeque<String> = (0..req.n).map(first).collect();
    // Completions stream raw text; chat streams it split into reasoning and content.
    let splitters: Vec<Option<ReasoningSplit>> =
        (0..req.n).map(|_| reply.chat.then(|| ReasoningSplit::new(req.opens_thinking))).collect();
    let stream_state = Streaming {
        rx,
        reply,
        splitters,
        logprobs: req.logprobs.map(|_| vec![Vec::new(); req.n]),
        tools: (req.tools != ToolChoice::None)
            .then(|| (req.tools.prompt_suffix().to_string(), vec![String::new(); req.n])),
        queue,
        open: req.n,
        include_usage: req.include_usage,
        usage: (0, 0),
        finished: false,
    };
    let stream = futures_util::stream::unfold(stream_state, |mut state| async move {
        while state.queue.is_empty() && !state.finished {
            let event = state.rx.recv().await;
            state.take(event);
        }
        let data = state.queue.pop_front()?;
        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), state))
    });
    let mut response = Sse::new(stream).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, "no-cache".parse().expect("static header"));
    response
}

/// Where a streamed reply stands.
struct Streaming {
    rx: UnboundedReceiver<(usize, Event)>,
    reply: Reply,
    splitters: Vec<Option<ReasoningSplit>>,
    /// Log probabilities of each choice's tokens not sent yet (when asked for).
    logprobs: Option<Vec<Vec<Value>>>,
    /// With tools: the forced start of the answer and each choice's content so far, held until
    /// the end, when it becomes `tool_calls` deltas or (not a valid call) content.
    tools: Option<(String, Vec<String>)>,
    queue: std::collections::VecDeque<String>,
    /// Choices not finished yet.
    open: usize,
    include_usage: bool,
    /// Prompt tokens, completion tokens of all choices.
    usage: (usize, usize),
    finished: bool,
}

impl Streaming {
    /// A chunk of choice `i`, carrying the log probabilities of the tokens it adds when asked.
    fn chunk(&mut self, i: usize, delta: Value, finish: Option<&str>) -> String {
        let mut chunk = self.reply.chunk(i, delta, finish);
        if let Some(pending) = self.logprobs.as_mut() {
            chunk["choices"][0]["logprobs"] = logprobs_field(self.reply.chat, &std::mem::take(&mut pending[i]), 0);
        }
        chunk.to_string()
    }

    /// Turns one event into the chunks to send.
    fn take(&mut self, event: Option<(usize, Event)>) {
        match event {
            Some((i, Event::Text(t))) => {
                let mut piece = match self.splitters[i].as_mut() {
                    Some(s) => s.push(&t),
                    None => Split { reasoning: String::new(), content: t },
                };
                if let Some((_, held)) = self.tools.as_mut() {
                    held[i].push_str(&std::mem::take(&mut piece.content));
                    if piece.reasoning.is_empty() {
                        return;
                    }
                }
                let piece = if self.reply.chat { delta(piece) } else { json!({"content": piece.content}) };
                let chunk = self.chunk(i, piece, None);
                self.queue.push_back(chunk)
            }
            Some((i, Event::Logprobs(entry))) => {
                if let Some(pending) = self.logprobs.as_mut() {
                    pending[i].push(entry);
                }
            }
            Some((i, Event::Done { finish, prompt_tokens, completion_tokens, .. })) => {
                // A partial tag held back at the very end is text after all.
                if let Some(mut rest) = self.splitters[i].as_mut().map(ReasoningSplit::finish) {
                    if let Some((_, held)) = self.tools.as_mut() {
                        held[i].push_str(&std::mem::take(&mut rest.content));
                    }
                    if rest != Split::default() {
                        let chunk = self.chunk(i, delta(rest), None);
                        self.queue.push_back(chunk);
                    }
                }
                let mut finish = finish_name(finish);
                if let Some((prefix, held)) = self.tools.as_mut() {
                    let answer = format!("{prefix}{}", std::mem::take(&mut held[i]));
                    let piece = match tools::parse_tool_calls(&answer) {
                        Some((content, calls)) => {
                            finish = "tool_calls";
                            let calls: Vec<Value> = calls
                                .into_iter()
                                .enumerate()
                                .map(|(k, mut c)| {
                                    c["index"] = json!(k);
                                    c
                                })
                                .collect();
                            let mut piece = json!({"tool_calls": calls});
                            if !content.is_empty() {
                                piece["content"] = json!(content);
                            }
                            piece
                        }
                        None => json!({"content": answer}),
                    };
                    let chunk = self.chunk(i, piece, None);
                    self.queue.push_back(chunk);
                }
                let chunk = self.chunk(i, json!({}), Some(finish));
                self.queue.push_back(chunk);
                self.usage = (prompt_tokens, self.usage.1 + completion_tokens);
                self.open -= 1;
                if self.open == 0 {
                    if self.include_usage {
                        let mut chunk = self.reply.chunk(0, json!({}), None);
                        chunk["choices"] = json!([]);
                        chunk["usage"] = usage(self.usage.0, self.usage.1);
                        self.queue.push_back(chunk.to_string());
                    }
                    self.queue.push_back("[DONE]".to_string());
                    self.finished = true;
                }
            }
            Some((_, Event::Error(e))) => {
                let error = json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}});
                self.queue.push_back(error.to_string());
                self.queue.push_back("[DONE]".to_string());
                self.finished = true;
            }
            None => self.finished = true,
        }
    }
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
