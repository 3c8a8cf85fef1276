//! The OpenAI-compatible server, through real HTTP on loopback.

use crate::common::*;
use minimind::serve::engine::{Engine, EngineConfig, LoadedModel};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The small random model every server test serves (seed 7), answering to "tiny" (and `aliases`).
pub(crate) fn tiny(aliases: &[&str]) -> LoadedModel {
    let config = minimind::ModelConfig { max_position_embeddings: 4096, ..micro_config(6400, 4, 2, 16) };
    let (model, _) = init(&config, 7);
    let tokenizer = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    LoadedModel { id: "tiny".into(), aliases: aliases.iter().map(|a| a.to_string()).collect(), model, tokenizer }
}

/// Serves `engine` on a free loopback port; returns the port.
pub(crate) fn serve(engine: Engine) -> u16 {
    serve_router(minimind::serve::router(engine))
}

/// Starts a server with the tiny model (also answering to "minimind"); returns the port.
pub(crate) fn start() -> u16 {
    serve(Engine::start(vec![tiny(&["minimind"])], EngineConfig { queue: 32, ..Default::default() }))
}

/// One HTTP/1.1 request; returns the status and the (de-chunked) body.
pub(crate) fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.unwrap_or("");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, body)
}

pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

pub(crate) fn post(port: u16, path: &str, body: Value) -> (u16, Value, String) {
    let (status, text) = http(port, "POST", path, Some(&body.to_string()));
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value, text)
}

/// The `data:` payloads of an event stream.
pub(crate) fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

pub(crate) fn chat(extra: Value) -> Value {
    let mut body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "你好"}], "temperature": 0, "max_tokens": 6});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn responses_have_the_openai_shapes() {
    let port = start();
    let (status, _, _) = post(port, "/v1/models", json!({}));
    assert_eq!(status, 405, "models is GET");
    let (status, body) = http(port, "GET", "/v1/models", None);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, models["object"].as_str(), models["data"][0]["id"].as_str()),
        (200, Some("list"), Some("tiny"))
    );
    let (status, health) = http(port, "GET", "/health", None);
    assert!(status == 200 && health.contains("\"ok\""));
    let (status, page) = http(port, "GET", "/", None);
    assert!(status == 200 && page.contains("minimind chat"));

    // Non-stream: every field; usage counts real tokens; max_tokens reached ⇒ "length".
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({})));
    assert_eq!(status, 200);
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-") && r["created"].as_u64().unwrap() > 0);
    assert_eq!(r["model"], "tiny");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let t = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let prompt = t
        .encode(&t.render_chat(&[minimind::data::tokenizer::ChatMessage::new("user", "你好")], true).unwrap())
        .unwrap();
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(
        r["usage"]["total_tokens"],
        r["usage"]["prompt_tokens"].as_u64().unwrap() + r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    if r["choices"][0]["finish_reason"] == "length" {
        assert_eq!(r["usage"]["completion_tokens"], 6);
    }
    let content = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    // Stream: role first, content deltas, finish chunk, usage chunk, [DONE]; same greedy text.
    let (status, _, text) =
        post(port, "/v1/chat/completions", chat(json!({"stream": true, "stream_options": {"include_usage": true}})));
    assert_eq!(status, 200);
    let ev = events(&text);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"], r["usage"]);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], r["choices"][0]["finish_reason"]);
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content);

    // Plain completions.
    let (status, r, _) =
        post(port, "/v1/completions", json!({"model": "tiny", "prompt": "浣溪沙", "max_tokens": 4, "temperature": 0}));
    assert_eq!((status, r["object"].as_str()), (200, Some("text_completion")));
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 4);
}

#[test]
fn bad_requests_get_openai_errors() {
    let port = start();
    let long = "很长".repeat(3000);
    let cases = [
        (http(port, "POST", "/v1/chat/completions", Some("{not json")), 400, "not valid JSON"),
        (
            post_raw(port, json!({"model": "other", "messages": [{"role": "user", "content": "x"}]})),
            404,
            "does not exist",
        ),
        (post_raw(port, json!({"model": "tiny", "messages": []})), 400, "must not be empty"),
        (post_raw(port, json!({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]})), 400, "role"),
        (post_raw(port, chat(json!({"max_tokens": 0}))), 400, "positive integer"),
        (post_raw(port, chat(json!({"max_tokens": 100000}))), 400, "exceeds the context"),
        (
            post_raw(port, json!({"model": "tiny", "messages": [{"role": "user", "content": long}]})),
            400,
            "the context holds",
        ),
        (post_raw(port, chat(json!({"n": 9}))), 400, "n must be an integer in 1..=8"),
    ];
    for ((status, body), expect_status, expect_text) in cases {
        assert_eq!(status, expect_status, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(expect_text), "{message}");
        assert!(v["error"]["type"].is_string());
    }
}

pub(crate) fn post_raw(port: u16, body: Value) -> (u16, String) {
    http(port, "POST", "/v1/chat/completions", Some(&body.to_string()))
}

#[test]
fn a_client_that_disconnects_frees_its_slot_and_concurrent_clients_get_their_own_answers() {
    let port = start();
    // Start a long stream, read its first bytes, hang up.
    drop(open_stream(port, 2000));
    let health = || -> Value { serde_json::from_str(&http(port, "GET", "/health", None).1).unwrap() };
    let start = std::time::Instant::now();
    while health()["pending"] != 0 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let generated = health()["generated_tokens"].as_u64().unwrap();
    assert!(generated < 2000, "the abandoned request ran to the end ({generated} tokens)");

    // 16 clients at once, each with its own prompt; greedy answers equal the one-client answers.
    let prompts: Vec<String> = (0..16).map(|i| format!("问题 {i}")).collect();
    let single: Vec<String> = prompts.iter().map(|p| answer(port, p)).collect();
    let handles: Vec<_> = prompts.iter().cloned().map(|p| std::thread::spawn(move || answer(port, &p))).collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(together, single);
}

/// KV slots are bounded: with 2 slots and a queue of 1, two long streams run, one more request
/// waits for a slot, one more sits in the queue, the next is refused (503). A client that hangs up
/// frees its slot at once and the waiting requests run; answers of requests that joined a running
/// batch late, with other lengths, equal the one-client answers.
#[test]
fn kv_slots_bound_the_batch_and_late_joiners_get_single_client_answers() {
    let config = EngineConfig { queue: 1, max_batch: 2, kv_cache_tokens: 2 * 2048, request_timeout: None };
    let port = serve(Engine::start(vec![tiny(&[])], config));
    let health = move || -> Value { serde_json::from_str(&http(port, "GET", "/health", None).1).unwrap() };
    let wait_for = |key: &str, n: u64| {
        let start = std::time::Instant::now();
        while health()[key] != n {
            assert!(start.elapsed().as_secs() < 60, "{key} never reached {n}: {}", health());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let single: Vec<String> = ["一", "二二", "三三三"].iter().map(|p| answer_n(port, p, 5 + p.len() % 4)).collect();
    // Two long streams (≈ 1 s each here) take both slots.
    let long = || open_stream(port, 2000);
    // (Each one joins the batch before the next is sent: the queue holds one.)
    let a = long();
    wait_for("running", 1);
    let b = long();
    wait_for("running", 2);
    // The third waits for a slot (taken from the queue), the fourth waits in the queue…
    let third = std::thread::spawn(move || answer_n(port, "一", 5 + "一".len() % 4));
    wait_for("pending", 3);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let fourth = std::thread::spawn(move || answer_n(port, "二二", 5 + "二二".len() % 4));
    wait_for("pending", 4);
    // …and the fifth finds the queue full.
    let (status, body) = http(port, "POST", "/v1/chat/completions", Some(&chat(json!({"max_tokens": 3})).to_string()));
    assert_eq!(status, 503, "{body}");
    // Hanging up frees the slots: the waiting requests join the running batch and finish.
    drop(a);
    assert_eq!(third.join().unwrap(), single[0]);
    assert_eq!(fourth.join().unwrap(), single[1]);
    let late = answer_n(port, "三三三", 5 + "三三三".len() % 4); // beside the stream still running
    assert_eq!(late, single[2]);
    drop(b);
    wait_for("pending", 0);
    assert_eq!(health()["running"], 0);
}

/// A greedy stream of up to `max_tokens`, started (its 200 and first bytes read) and left open.
/// (Greedy: this random model's greedy answer never ends early, a sampled one might.)
pub(crate) fn open_stream(port: u16, max_tokens: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = chat(json!({"stream": true, "max_tokens": max_tokens})).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    s
}

/// A streamed greedy answer, reassembled.
pub(crate) fn answer(port: u16, prompt: &str) -> String {
    answer_n(port, prompt, 8)
}

/// A streamed greedy answer of up to `max_tokens`, reassembled.
pub(crate) fn answer_n(port: u16, prompt: &str, max_tokens: usize) -> String {
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": max_tokens, "stream": true});
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body.to_string()));
    assert_eq!(status, 200);
    events(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn reasoning_goes_to_reasoning_content() {
    use minimind::infer::reasoning::{ReasoningSplit, Split};
    let split = |r: &str, c: &str| Split { reasoning: r.into(), content: c.into() };
    assert_eq!(ReasoningSplit::whole("<think>\nplan\n</think>\n\nanswer", false), split("plan", "answer"));
    assert_eq!(ReasoningSplit::whole("plain", false), split("", "plain"));
    // A prompt that opened the block (minimind-3's open_thinking): a bare </think> ends the reasoning.
    assert_eq!(ReasoningSplit::whole("\nplan\n</think>\n\nanswer", true), split("plan", "answer"));
    // Elsewhere a stray </think> is dropped, streamed or whole.
    assert_eq!(ReasoningSplit::whole("a</think>b", false), split("", "ab"));
    // An answer that ends inside a held-back partial tag keeps those characters.
    for tail in ["<", "<th", "</thi"] {
        let mut s = ReasoningSplit::new(false);
        let mut out = s.push(&format!("x{tail}"));
        out.append(s.finish());
        assert_eq!(out, split("", &format!("x{tail}")));
    }
}

/// Streamed == whole for random texts made of tag fragments, at every split point and in random
/// pieces, starting inside the block or not.
#[test]
fn reasoning_split_streamed_equals_whole() {
    use minimind::infer::reasoning::{ReasoningSplit, Split};
    const FRAGMENTS: [&str; 14] =
        ["<", "<th", "<think>", "</think>", "</thi", "nk>", "think", ">", "/", " ", "\n", "a", "思", "</"];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for case in 0..400 {
        let text: String = (0..1 + next(12)).map(|_| FRAGMENTS[next(FRAGMENTS.len())]).collect();
        let opened = case % 2 == 1;
        let whole = ReasoningSplit::whole(&text, opened);
        let streamed = |pieces: &[&str]| {
            let mut s = ReasoningSplit::new(opened);
            let mut out = Split::default();
            pieces.iter().for_each(|p| out.append(s.push(p)));
            out.append(s.finish());
            out
        };
        let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        for &at in &bounds {
            assert_eq!(streamed(&[&text[..at], &text[at..]]), whole, "{text:?} split at {at}");
        }
        let mut cuts: Vec<usize> = (0..4).map(|_| bounds[next(bounds.len())]).collect();
        cuts.sort();
        let mut pieces = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain([&text.len()]) {
            pieces.push(&text[from..c]);
            from = c;
        }
        assert_eq!(streamed(&pieces), whole, "{text:?} in pieces {pieces:?}");
    }
}

#[test]
fn served_model_name_and_sampling_defaults() {
    let port = start();
    // The alias answers like the id; an unknown name is a 404.
    let (status, r, _) = post(
        port,
        "/v1/chat/completions",
        json!({"model": "minimind", "max_tokens": 3,
        "messages": [{"role": "user", "content": "你好"}]}),
    );
    assert_eq!(status, 200, "{r}");
    let (status, _, _) = post(
        port,
        "/v1/chat/completions",
        json!({"model": "gpt-4", "max_tokens": 3,
        "messages": [{"role": "user", "content": "你好"}]}),
    );
    assert_eq!(status, 404);
    // Unset sampling fields take the CLI's defaults: with one seed the API's answer is the library's.
    let LoadedModel { model, tokenizer, .. } = tiny(&[]);
    let text = tokenizer.render_chat(&[minimind::data::tokenizer::ChatMessage::new("user", "你好")], true).unwrap();
    let prompt = tokenizer.encode(&text).unwrap();
    let params = minimind::infer::SamplingParams { seed: 5, ..Default::default() };
    let mut sampler = minimind::infer::Sampler::new(params).unwrap();
    let stops = tokenizer.stop_ids().unwrap();
    let out = minimind::infer::generate(&model, &prompt, 8, &stops, &mut sampler, |_| Ok(true)).unwrap();
    let expected = tokenizer.decode(&out.tokens, true).unwrap();
    let (_, r, _) = post(
        port,
        "/v1/chat/completions",
        json!({"model": "tiny", "max_tokens": 8, "seed": 5,
        "messages": [{"role": "user", "content": "你好"}]}),
    );
    assert_eq!(r["choices"][0]["message"]["content"].as_str().unwrap(), expected);
}

#[test]
fn stop_strings_end_the_answer() {
    let port = start();
    let (_, r, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 12})));
    let content = r["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let Some(second) = content.chars().nth(1) else { return };
    let stop = second.to_string();
    let expected = &content[..content.find(&stop).unwrap()];
    let (_, r, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 12, "stop": [stop]})));
    assert_eq!(r["choices"][0]["message"]["content"], expected);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

/// Sends raw bytes (tolerating a server that answers before reading them all); status and body.
pub(crate) fn raw(port: u16, request: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub(crate) fn is_openai_error(v: &Value) -> bool {
    v["error"]["message"].is_string() && v["error"]["type"].is_string()
}

#[test]
fn every_error_is_openai_shaped() {
    let port = start();
    let (status, body) = http(port, "GET", "/v1/nope", None);
    assert_eq!(status, 404);
    assert!(is_openai_error(&serde_json::from_str(&body).unwrap()), "{body}");
    let (status, body) = http(port, "GET", "/v1/chat/completions", None);
    assert_eq!(status, 405);
    assert!(is_openai_error(&serde_json::from_str(&body).unwrap()), "{body}");
    // A 3 MiB body is over the 2 MiB limit.
    let big = format!("{{\"model\": \"tiny\", \"prompt\": \"{}\"}}", "a".repeat(3 << 20));
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
        big.len()
    );
    let (status, body) = raw(port, request.as_bytes());
    assert_eq!(status, 413);
    assert!(is_openai_error(&body), "{body}");
    let request =
        format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(40 << 10));
    let (status, body) = raw(port, request.as_bytes());
    assert_eq!(status, 431);
    assert!(is_openai_error(&body), "{body}");
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({"stream": "yes"})));
    assert_eq!(status, 400);
    assert_eq!(r["error"]["param"], "stream");
}

#[test]
fn a_panicking_generation_fails_its_request_and_the_worker_keeps_serving() {
    // A request asking for exactly 13 tokens panics inside the worker.
    let config = EngineConfig { queue: 4, ..Default::default() };
    let engine = Engine::with_hook(vec![tiny(&[])], config, Box::new(|job| assert_ne!(job.max_new_tokens, 13, "boom")));
    let alive = engine.alive.clone();
    let port = serve(engine);
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 13})));
    assert_eq!(status, 500);
    assert!(r["error"]["message"].as_str().unwrap().contains("boom"), "{r}");
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 3})));
    assert_eq!(status, 200, "{r}");
    let (status, body) = http(port, "GET", "/health", None);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["status"].clone()), (200, json!("ok")));
    // A worker that has stopped makes /health unhealthy.
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = http(port, "GET", "/health", None);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["status"].clone()), (503, json!("unhealthy")));
}

/// Random bytes and random JSON through the request parser: an answer or an error, never a panic.
#[test]
fn random_requests_never_panic_the_parser() {
    use minimind::serve::request::Request;
    let engine = Engine::start(vec![tiny(&[])], EngineConfig { queue: 4, ..Default::default() });
    let mut rng = crate::robustness::Lcg(7);
    for case in 0..2000 {
        let body = match case % 3 {
            0 => rng.bytes(),
            1 => rng.json(4).to_string().into_bytes(),
            _ => {
                let mut v = json!({"model": "tiny", "messages": [{"role": "user", "content": "你好"}]});
                for _ in 0..rng.next(4) {
                    let key = [
                        "stream",
                        "max_tokens",
                        "temperature",
                        "top_p",
                        "top_k",
                        "stop",
                        "seed",
                        "n",
                        "stream_options",
                        "messages",
                        "prompt",
                        "frequency_penalty",
                    ][rng.next(12)];
                    v[key] = rng.json(2);
                }
                v.to_string().into_bytes()
            }
        };
        let _ = Request::parse(&engine, &body, case % 2 == 0);
    }
}
