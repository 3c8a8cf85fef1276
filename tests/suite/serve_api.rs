//! The server's API beyond plain chat: tokenize, keys, tools, metrics, `n`, time limits,
//! logprobs, tool calls, JSON schemas and votes — through real HTTP on loopback, as `serve`'s tests.

use crate::common::*;
use crate::serve::*;
use minimind::serve::engine::{Engine, EngineConfig, LoadedModel};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;

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
