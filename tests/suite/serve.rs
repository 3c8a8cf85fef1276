//! The OpenAI-compatible server, through real HTTP on loopback.

use crate::common::*;
use minimind::serve::engine::{Engine, EngineConfig, LoadedModel};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The small random model every server test serves (seed 7), answering to "tiny" (and `aliases`).
fn tiny(aliases: &[&str]) -> LoadedModel {
    let config = minimind::ModelConfig { max_position_embeddings: 4096, ..micro_config(6400, 4, 2, 16) };
    let (model, _) = init(&config, 7);
    let tokenizer = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    LoadedModel { id: "tiny".into(), aliases: aliases.iter().map(|a| a.to_string()).collect(), model, tokenizer }
}

/// Serves `engine` on a free loopback port; returns the port.
fn serve(engine: Engine) -> u16 {
    serve_router(minimind::serve::router(engine))
}

/// Starts a server with the tiny model (also answering to "minimind"); returns the port.
fn start() -> u16 {
    serve(Engine::start(vec![tiny(&["minimind"])], EngineConfig { queue: 32, ..Default::default() }))
}

/// One HTTP/1.1 request; returns the status and the (de-chunked) body.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
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

fn dechunk(mut s: &str) -> String {
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

fn post(port: u16, path: &str, body: Value) -> (u16, Value, String) {
    let (status, text) = http(port, "POST", path, Some(&body.to_string()));
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value, text)
}

/// The `data:` payloads of an event stream.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

fn chat(extra: Value) -> Value {
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

fn post_raw(port: u16, body: Value) -> (u16, String) {
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
fn open_stream(port: u16, max_tokens: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = chat(json!({"stream": true, "max_tokens": max_tokens})).to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    s
}

/// A streamed greedy answer, reassembled.
fn answer(port: u16, prompt: &str) -> String {
    answer_n(port, prompt, 8)
}

/// A streamed greedy answer of up to `max_tokens`, reassembled.
fn answer_n(port: u16, prompt: &str, max_tokens: usize) -> String {
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
fn raw(port: u16, request: &[u8]) -> (u16, Value) {
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

fn is_openai_error(v: &Value) -> bool {
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

/// `/tokenize` gives what a request feeds the model and `/detokenize` turns ids back into text.
#[test]
fn tokenize_and_detokenize_round_trip() {
    let port = start();
    let post_json = |path: &str, body: Value| -> (u16, Value) {
        let (status, text) = http(port, "POST", path, Some(&body.to_string()));
        (status, serde_json::from_str(&text).unwrap())
    };
    let (status, r) = post_json("/tokenize", json!({"content": "明月几时有"}));
    assert_eq!(status, 200, "{r}");
    let ids = r["tokens"].clone();
    assert_eq!(r["count"], ids.as_array().unwrap().len());
    let (_, back) = post_json("/detokenize", json!({"tokens": ids}));
    assert_eq!(back["prompt"], "明月几时有");
    // A completion prompt gets its bos, a conversation its template and generation prompt.
    let (_, plain) = post_json("/tokenize", json!({"model": "tiny", "prompt": "明月几时有"}));
    assert_eq!(plain["count"], r["count"].as_u64().unwrap() + 1);
    let (_, chat) = post_json("/tokenize", json!({"messages": [{"role": "user", "content": "明月几时有"}]}));
    let (_, text) = post_json("/detokenize", json!({"tokens": chat["tokens"]}));
    let text = text["prompt"].as_str().unwrap();
    assert!(
        text.contains("<|im_start|>user\n明月几时有<|im_end|>") && text.ends_with("<|im_start|>assistant\n"),
        "{text:?}"
    );
    // Bad input is a 400 / 404 in OpenAI's error shape.
    assert_eq!(post_json("/detokenize", json!({"tokens": [1, 999999]})).0, 400);
    assert_eq!(post_json("/tokenize", json!({"nothing": 1})).0, 400);
    assert_eq!(post_json("/tokenize", json!({"model": "nope", "content": "x"})).0, 404);
}

/// `--api-key`: the API answers only with the right bearer token; the page, health and metrics stay
/// open.
#[test]
fn api_key_guards_the_api() {
    let engine = Engine::start(vec![tiny(&[])], EngineConfig { queue: 4, ..Default::default() });
    let port = serve_router(minimind::serve::router_with_key(engine, Some("sk-test".into())));
    let call = |auth: Option<&str>, path: &str| -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        (status, out)
    };
    let (status, body) = call(None, "/v1/models");
    assert_eq!(status, 401);
    assert!(body.contains("\"code\":\"invalid_api_key\""), "{body}");
    assert_eq!(call(Some("Bearer wrong"), "/v1/models").0, 401);
    assert_eq!(call(Some("Bearer sk-test"), "/v1/models").0, 200);
    for open in ["/", "/health", "/metrics"] {
        assert_eq!(call(None, open).0, 200, "{open}");
    }
}

/// The page's demo tools over HTTP: the list is an OpenAI `tools` array, a call answers its result,
/// a call that cannot be carried out answers 400 with the reason.
#[test]
fn demo_tools_are_listed_and_called() {
    let port = start();
    let (status, body) = http(port, "GET", "/demo/tools", None);
    let tools: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    let names: Vec<&str> = tools.as_array().unwrap().iter().filter_map(|t| t["function"]["name"].as_str()).collect();
    assert_eq!(names, ["calculator", "current_time"]);
    let (status, result, _) = post(port, "/demo/tools/calculator", json!({"expression": "(3 + 4) * 2^3"}));
    assert_eq!((status, result["result"].as_str()), (200, Some("56")));
    let (status, result, _) = post(port, "/demo/tools/calculator", json!({"expression": "1 +"}));
    assert_eq!(status, 400);
    assert!(result["error"].as_str().unwrap().contains("column 4"), "{result}");
    assert_eq!(post(port, "/demo/tools/shell", json!({})).0, 400);
}

/// `/metrics` is Prometheus text: counters of requests and tokens, the queue gauges, latency
/// histograms whose counts add up.
#[test]
fn metrics_count_requests_tokens_and_latencies() {
    let port = start();
    for prompt in ["一", "二"] {
        answer_n(port, prompt, 4);
    }
    let (status, text) = http(port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("{name}\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let finished =
        value("minimind_requests_total{outcome=\"stop\"}") + value("minimind_requests_total{outcome=\"length\"}");
    assert_eq!(finished, 2.0);
    assert!(value("minimind_generation_tokens_total") >= 2.0);
    assert!(value("minimind_prompt_tokens_total") > 0.0);
    assert_eq!(value("minimind_time_to_first_token_seconds_count"), 2.0);
    assert_eq!(value("minimind_requests_running"), 0.0);
    let tokens = value("minimind_generation_tokens_total");
    assert_eq!(
        value("minimind_time_per_output_token_seconds_count"),
        tokens - 2.0,
        "one interval per token after the first"
    );
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with('#') || line.split(' ').count() == 2, "not Prometheus text: {line:?}");
    }
}

/// `n` choices: each its own sequence (seeds seed, seed + 1, …), whole or streamed with their
/// indexes, usage counting every choice's tokens once and the prompt once.
#[test]
fn n_choices_whole_and_streamed() {
    let port = start();
    let body = chat(json!({"n": 3, "temperature": 1.0, "seed": 5, "max_tokens": 6}));
    let (status, r, _) = post(port, "/v1/chat/completions", body.clone());
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    let texts: Vec<&str> = choices.iter().map(|c| c["message"]["content"].as_str().unwrap()).collect();
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "different seeds sample differently: {texts:?}");
    assert_eq!(r["usage"]["completion_tokens"], 18);
    // Choice i is what a single request with seed 5 + i answers.
    let (_, alone, _) =
        post(port, "/v1/chat/completions", chat(json!({"temperature": 1.0, "seed": 6, "max_tokens": 6})));
    assert_eq!(alone["choices"][0]["message"]["content"], texts[1]);
    // Streamed: every choice's deltas carry its index, each ends with its finish reason.
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&streamed.to_string()));
    assert_eq!(status, 200);
    let mut got = vec![String::new(); 3];
    let mut finished = 0;
    for e in events(&text).iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        got[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        finished += usize::from(choice["finish_reason"].is_string());
    }
    assert_eq!(finished, 3);
    assert_eq!(got, texts);
}

/// `--request-timeout`: a generating request ends with what it has (`length`), the server goes on.
/// Greedy, because this random model's greedy answer never reaches end-of-text within 2,000 tokens
/// (≈ 0.75 s here), while a sampled one may stop early by chance.
#[test]
fn a_request_past_its_time_limit_ends_with_its_answer_so_far() {
    let limit = std::time::Duration::from_millis(300);
    let port =
        serve(Engine::start(vec![tiny(&[])], EngineConfig { request_timeout: Some(limit), ..Default::default() }));
    let started = std::time::Instant::now();
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 2000})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let tokens = r["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(tokens > 0 && tokens < 2000, "{tokens} tokens");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let (status, _, _) = post(port, "/v1/chat/completions", chat(json!({"max_tokens": 2})));
    assert_eq!(status, 200);
}

/// `logprobs`: chat's `logprobs.content` (token, logprob, bytes, top_logprobs, most likely first —
/// the greedy token is the first), the same entries streamed, and the completions API's legacy form.
#[test]
fn logprobs_whole_streamed_and_legacy() {
    let port = start();
    let body = chat(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 5}));
    let (status, r, _) = post(port, "/v1/chat/completions", body.clone());
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len() as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
    for entry in &content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let lps: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]) && lps[0] <= 0.0, "{lps:?}");
        assert_eq!(entry["token"], top[0]["token"], "greedy picks the most likely token");
        assert_eq!(entry["logprob"], top[0]["logprob"]);
        assert_eq!(entry["bytes"].as_array().unwrap().len(), entry["token"].as_str().unwrap().len());
    }
    let mut streamed_body = body;
    streamed_body["stream"] = json!(true);
    let (_, text) = http(port, "POST", "/v1/chat/completions", Some(&streamed_body.to_string()));
    let streamed: Vec<Value> = events(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .flat_map(|e| {
            let c: Value = serde_json::from_str(e).unwrap();
            c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed, content);
    // Without logprobs the field is null; top_logprobs alone is refused.
    let (_, plain, _) = post(port, "/v1/chat/completions", chat(json!({})));
    assert!(plain["choices"][0]["logprobs"].is_null());
    assert_eq!(post(port, "/v1/chat/completions", chat(json!({"top_logprobs": 2}))).0, 400);
    // Completions: the legacy arrays.
    let (status, r, _) = post(
        port,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "你好", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert_eq!(n as u64, r["usage"]["completion_tokens"].as_u64().unwrap());
    for key in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), n, "{key}");
    }
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

#[test]
fn tool_call_blocks_become_openai_tool_calls() {
    use minimind::serve::tools::{parse_tool_calls, ToolChoice};
    let (content, calls) = parse_tool_calls(
        "Let me check.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"杭州\"}}\n</tool_call>",
    )
    .unwrap();
    assert_eq!(content, "Let me check.");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "weather");
    let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "杭州"}));
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    // Two calls, arguments given as a JSON string; ids differ.
    let two = "<tool_call>{\"name\": \"a\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call><tool_call>{\"name\": \"b\"}</tool_call>";
    let (content, calls) = parse_tool_calls(two).unwrap();
    assert_eq!((content.as_str(), calls.len()), ("", 2));
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    // Anything that is not a valid call stays plain content.
    for text in [
        "no call",
        "<tool_call>{\"name\": \"a\", \"arguments\": {</tool_call>",
        "<tool_call>{\"name\": \"a\"}",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"a\", \"arguments\": 3}</tool_call>",
    ] {
        assert!(parse_tool_calls(text).is_none(), "{text}");
    }
    let names = vec!["weather".to_string()];
    assert_eq!(ToolChoice::parse(None, &names), Ok(ToolChoice::Auto));
    assert_eq!(ToolChoice::parse(Some(&json!("none")), &names), Ok(ToolChoice::None));
    assert!(matches!(ToolChoice::parse(Some(&json!("required")), &names), Ok(ToolChoice::Forced(_))));
    let named = ToolChoice::parse(Some(&json!({"type": "function", "function": {"name": "weather"}})), &names).unwrap();
    assert_eq!(named.prompt_suffix(), "<tool_call>\n{\"name\": \"weather\", \"arguments\": ");
    assert!(ToolChoice::parse(Some(&json!({"type": "function", "function": {"name": "other"}})), &names).is_err());
    assert!(ToolChoice::parse(Some(&json!("required")), &[]).is_err());
}

/// Over minimind-3's template: offered tools appear in the prompt, assistant `tool_calls` and `tool`
/// results render as the model was trained, and a forced call (named or `required`) is decoded under
/// its parameters' grammar, so even a random model returns a valid call (whole and streamed).
#[test]
fn tools_render_in_the_template_and_forced_calls_are_valid() {
    let config = minimind::ModelConfig { max_position_embeddings: 2048, ..micro_config(6400, 4, 2, 16) };
    let (model, _) = init(&config, 7);
    let tokenizer = minimind::Tokenizer::load(&tokenizer_dir("v3")).unwrap();
    let engine = Engine::start(
        vec![LoadedModel { id: "m3".into(), aliases: vec![], model, tokenizer }],
        EngineConfig::default(),
    );
    let port = serve(engine);
    let tools = json!([{"type": "function", "function": {"name": "weather", "description": "today's weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}},
                                       "required": ["city"], "additionalProperties": false}}}]);
    let messages = json!([
        {"role": "user", "content": "杭州天气?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\": \"杭州\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "晴, 25°C"},
    ]);
    let (_, tokens, _) = post(port, "/tokenize", json!({"messages": messages, "tools": tools}));
    let (_, text, _) = post(port, "/detokenize", json!({"tokens": tokens["tokens"]}));
    let prompt = text["prompt"].as_str().unwrap();
    for part in [
        "<tools>",
        "{\"type\": \"function\", \"function\": {\"name\": \"weather\"",
        "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"杭州\"}}\n</tool_call>",
        "<tool_response>\n晴, 25°C\n</tool_response>",
    ] {
        assert!(prompt.contains(part), "{part:?} not in {prompt:?}");
    }
    // A forced call is decoded under its parameters' grammar: it always comes back as a valid call.
    let forced = json!({"model": "m3", "messages": [{"role": "user", "content": "杭州天气?"}], "tools": tools,
                        "tool_choice": {"type": "function", "function": {"name": "weather"}}, "max_tokens": 40, "temperature": 1.0});
    let (status, r, _) = post(port, "/v1/chat/completions", forced.clone());
    assert_eq!(status, 200, "{r}");
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object(), "{args}");
    let mut streamed = forced.clone();
    streamed["stream"] = json!(true);
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&streamed.to_string()));
    assert_eq!(status, 200);
    let chunks: Vec<Value> =
        events(&text).iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect();
    let calls: Vec<&Value> =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0]["index"].as_u64(), calls[0]["function"]["name"].as_str()), (Some(0), Some("weather")));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    // `required` picks among the tools; the round trip goes on with the call's result.
    let mut required = forced;
    required["tool_choice"] = json!("required");
    required["max_tokens"] = json!(120);
    let (_, r, _) = post(port, "/v1/chat/completions", required);
    let call = r["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "weather", "{r}");
    let round = json!({"model": "m3", "tools": tools, "max_tokens": 5, "messages": [
        {"role": "user", "content": "杭州天气?"},
        {"role": "assistant", "content": null, "tool_calls": [call.clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "晴"}]});
    let (status, r, _) = post(port, "/v1/chat/completions", round);
    assert_eq!(status, 200, "{r}");
}

/// `response_format`: the answer is decoded under the JSON schema's grammar (llguidance), so even a
/// random model's answer parses and validates; a schema that cannot compile is a 400.
#[test]
fn json_schema_answers_parse_and_validate() {
    let port = start();
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["answer", "n"],
                        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                       "n": {"type": "integer", "minimum": 0, "maximum": 9}}});
    let format = json!({"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}});
    for (seed, stream) in [(1, false), (2, false), (3, true)] {
        let body = chat(
            json!({"response_format": format, "max_tokens": 60, "temperature": 1.0, "seed": seed, "stream": stream}),
        );
        let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body.to_string()));
        assert_eq!(status, 200, "{text}");
        let answer: String = if stream {
            events(&text)
                .iter()
                .filter(|e| *e != "[DONE]")
                .filter_map(|e| {
                    serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        } else {
            let r: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
            r["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        };
        let v: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer:?} is not JSON: {e}"));
        assert!(["yes", "no"].contains(&v["answer"].as_str().unwrap()), "{v}");
        assert!(v["n"].as_u64().unwrap() <= 9, "{v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    }
    // A model whose head is wider than its tokenizer's vocabulary never picks the extra ids.
    let config = minimind::ModelConfig { max_position_embeddings: 2048, ..micro_config(6500, 4, 2, 16) };
    let (model, _) = init(&config, 3);
    let tokenizer = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let wide = serve(Engine::start(
        vec![LoadedModel { id: "tiny".into(), aliases: vec![], model, tokenizer }],
        EngineConfig::default(),
    ));
    let (status, r, _) = post(wide, "/v1/chat/completions", chat(json!({"response_format": format, "max_tokens": 60})));
    assert_eq!(status, 200, "{r}");
    serde_json::from_str::<Value>(r["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    let bad = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}});
    let (status, r, _) = post(port, "/v1/chat/completions", chat(json!({"response_format": bad})));
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["param"], "response_format");
}

/// Side-by-side votes from the page's compare mode become DPO pairs in `--votes FILE`: one line per
/// vote that `minimind dpo` reads; malformed votes are refused; without the file voting is off.
#[test]
fn votes_append_preference_pairs() {
    use minimind::serve::votes::VoteLog;
    let dir = tempfile::tempdir().unwrap();
    let votes = dir.path().join("votes.jsonl");
    let engine = Engine::start(vec![tiny(&[])], EngineConfig { queue: 4, ..Default::default() });
    let port = serve_router(minimind::serve::router_with(engine, None, VoteLog::new(Some(votes.clone()))));
    let vote = |chosen: &str, rejected: &str| {
        json!({"messages": [{"role": "user", "content": "你好"}],
               "chosen": {"model": "a", "content": chosen}, "rejected": {"model": "b", "content": rejected}})
        .to_string()
    };
    assert_eq!(http(port, "POST", "/feedback/vote", Some(&vote("你好！", "……"))).0, 200);
    assert_eq!(http(port, "POST", "/feedback/vote", Some(&vote("Hello!", "?"))).0, 200);
    // Earlier turns may hold tool calls with a null content.
    let with_tools = json!({"messages": [{"role": "user", "content": "6×7?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "calculator", "arguments": "{\"expression\": \"6*7\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}, {"role": "assistant", "content": "42"},
        {"role": "user", "content": "你好"}],
        "chosen": {"model": "a", "content": "hi"}, "rejected": {"model": "b", "content": "?"}});
    assert_eq!(http(port, "POST", "/feedback/vote", Some(&with_tools.to_string())).0, 200);
    let (status, body) = http(port, "POST", "/feedback/vote", Some(r#"{"messages": [], "chosen": {}}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("messages"), "{body}");
    let lines: Vec<String> = std::fs::read_to_string(&votes).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), 3);
    let (chosen, _) = minimind::data::dpo::parse_pair(&lines[2]).unwrap();
    assert_eq!((chosen.len(), chosen[1].content.as_str()), (6, ""));
    assert!(chosen[1].tool_calls.is_some());
    let (chosen, rejected) = minimind::data::dpo::parse_pair(&lines[0]).unwrap();
    assert_eq!((chosen[1].content.as_str(), rejected[1].content.as_str()), ("你好！", "……"));
    assert_eq!((chosen[0].content.as_str(), chosen[1].role.as_str()), ("你好", "assistant"));
    let row: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!((row["chosen_model"].as_str(), row["rejected_model"].as_str()), (Some("a"), Some("b")));
    // A server started without --votes refuses votes.
    let off = serve(Engine::start(vec![tiny(&[])], EngineConfig { queue: 4, ..Default::default() }));
    assert_eq!(http(off, "POST", "/feedback/vote", Some(&vote("x", "y"))).0, 404);
}

/// A finished request reports when its first token came (what `/metrics` records): after its
/// arrival and no later than its end; a request that decoded nothing reports none.
#[test]
fn the_engine_reports_each_requests_time_to_first_token() {
    use minimind::serve::engine::{Event, Job};
    let engine = Engine::start(vec![tiny(&[])], EngineConfig { queue: 4, ..Default::default() });
    for max_new_tokens in [6, 0] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let submitted = std::time::Instant::now();
        let job = Job {
            model: 0,
            prompt: vec![10, 11, 12, 13],
            max_new_tokens,
            sampling: minimind::infer::SamplingParams { temperature: 0.0, ..Default::default() },
            stop: Vec::new(),
            events: tx,
            submitted,
            logprobs: None,
            constraint: None,
        };
        engine.submit(job).unwrap();
        let (first_token, completion_tokens) = loop {
            match rx.blocking_recv() {
                Some(Event::Done { first_token, completion_tokens, .. }) => break (first_token, completion_tokens),
                Some(Event::Error(e)) => panic!("request failed: {e}"),
                Some(_) => {}
                None => panic!("the engine stopped"),
            }
        };
        let ended = submitted.elapsed();
        match max_new_tokens {
            0 => assert_eq!((first_token, completion_tokens), (None, 0)),
            _ => {
                assert!(completion_tokens > 0);
                let first = first_token.expect("a request that decoded tokens reports its first");
                assert!(first <= ended, "first token after {first:?}, the request ended after {ended:?}");
            }
        }
    }
}
