//! A request's answer in OpenAI's shapes: one `chat.completion` (or `text_completion`) object with
//! `usage` once every choice has finished, or a stream of chunks — role first, text and reasoning
//! and tool-call deltas as they come, the `finish_reason` last, an optional usage chunk — ending
//! with `data: [DONE]`.

use super::engine::Event;
use super::request::{ApiError, Request};
use super::tools::{self, ToolChoice};
use crate::infer::reasoning::{ReasoningSplit, Split};
use crate::infer::FinishReason;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::mpsc::UnboundedReceiver;

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// What every response object of one request shares.
#[derive(Clone)]
pub(super) struct Reply {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) chat: bool,
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
pub(super) async fn whole_reply(reply: Reply, req: &Request, mut rx: UnboundedReceiver<(usize, Event)>) -> Response {
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
pub(super) fn stream_reply(reply: Reply, req: &Request, rx: UnboundedReceiver<(usize, Event)>) -> Response {
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
