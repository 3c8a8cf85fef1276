//! minimind-3's chat template rendered by minimind's engine, byte for byte against transformers'
//! `apply_chat_template` (tests/fixtures/templates/v3.json, written by tools/make_template_fixtures.py),
//! minimind-3's SFT row format (tools and tool calls as JSON strings) and its loss mask.

use crate::common::*;
use minimind::data::sft::{parse_conversation, SftEncoding};
use minimind::Tokenizer;
use serde_json::{json, Value};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("templates/v3.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

#[test]
fn the_v3_template_renders_as_transformers_does() {
    let tok = Tokenizer::load(&tokenizer_dir("v3")).unwrap();
    for case in cases() {
        let mut extra = case["kwargs"].clone();
        if !case["tools"].is_null() {
            extra["tools"] = case["tools"].clone();
        }
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let ours = tok.apply_chat_template(&case["messages"], gen, &extra).unwrap();
        assert_eq!(ours, case["expected"].as_str().unwrap(), "case {}", case["name"]);
    }
}

/// A minimind-3 SFT row: tools as a JSON string on the system message, tool calls as a JSON string.
fn tool_row() -> String {
    let case = cases().into_iter().find(|c| c["name"] == "tools_and_calls").unwrap();
    let mut messages = case["messages"].as_array().unwrap().clone();
    messages[0]["tools"] = json!(case["tools"].to_string());
    messages[2]["tool_calls"] = json!(messages[2]["tool_calls"].to_string());
    json!({ "conversations": messages }).to_string()
}

#[test]
fn minimind3_rows_render_like_the_reference_and_supervise_only_the_assistant() {
    let tok = Tokenizer::load(&tokenizer_dir("v3")).unwrap();
    let messages = parse_conversation(&tool_row()).unwrap();
    let rendered = tok.render_chat(&messages, false).unwrap();
    let case = cases().into_iter().find(|c| c["name"] == "tools_and_calls").unwrap();
    let expected = case["expected"].as_str().unwrap();
    assert_eq!(rendered, expected);
    // The supervised targets are exactly the assistant turns after their header, through <|im_end|>\n.
    let row = SftEncoding::for_tokenizer(&tok, 512).unwrap().encode(&tok, &messages).unwrap();
    let supervised: Vec<u32> = row.ids.iter().zip(&row.mask).filter(|(_, m)| **m > 0.0).map(|(id, _)| *id).collect();
    let spans: String = expected
        .split("<|im_start|>assistant\n")
        .skip(1)
        .map(|turn| &turn[..turn.find("<|im_end|>\n").unwrap() + "<|im_end|>\n".len()])
        .collect();
    assert_eq!(tok.decode(&supervised, false).unwrap(), spans);
    assert!(spans.contains("<tool_call>") && !spans.contains("tool_response"));
}

#[test]
fn malformed_tool_fields_are_named() {
    let row = r#"{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "tool_calls": "not json"}]}"#;
    assert!(parse_conversation(row).unwrap_err().contains("tool_calls must be a JSON array"));
}

#[test]
fn the_thinking_switch_reaches_the_template() {
    let tok = Tokenizer::load(&tokenizer_dir("v3")).unwrap();
    let user = [minimind::data::tokenizer::ChatMessage::new("user", "你好")];
    let open = tok.render_chat_with(&user, true, Some(true)).unwrap();
    let closed = tok.render_chat_with(&user, true, Some(false)).unwrap();
    assert!(open.ends_with("<|im_start|>assistant\n<think>\n"), "{open:?}");
    assert!(closed.ends_with("<think>\n\n</think>\n\n"), "{closed:?}");
    assert_eq!(tok.render_chat(&user, true).unwrap(), closed);
}

/// A tiny model folder with minimind-3's tokenizer.
fn v3_model(dir: &std::path::Path) {
    let (model, _) = minimind::model::checkpoint::init_model(
        &minimind::ModelConfig { max_position_embeddings: 1024, ..micro_config(6400, 4, 2, 16) },
        minimind::model::params::InitScheme::Minimind2,
        2,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    minimind::model::checkpoint::save_model(dir, &model).unwrap();
    minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v3"), dir).unwrap();
}

#[test]
fn generate_and_serve_take_the_thinking_switch() {
    let dir = tempfile::tempdir().unwrap();
    v3_model(dir.path());
    let args =
        ["generate", "--model", p(dir.path()), "--prompt", "你好", "--max-new-tokens", "3", "--temperature", "0"];
    ok(minimind(&[&args[..], &["--chat", "--think"]].concat()));
    ok(minimind(&[&args[..], &["--chat", "--no-think"]].concat()));
    let err = fails(minimind(&[&args[..], &["--think"]].concat()));
    assert!(err.contains("add --chat"), "{err}");
    // SFT trains on minimind-3's rows (tools and tool calls as JSON strings, a tool turn).
    let rows = dir.path().join("tools.jsonl");
    std::fs::write(&rows, format!("{}\n{}\n", tool_row(), tool_row())).unwrap();
    let sft_out = dir.path().join("sft");
    let sft = ["sft", "--model", p(dir.path()), "--data", p(&rows), "--out", p(&sft_out)];
    ok(minimind(&[&sft[..], &["--max-steps", "1", "--batch-size", "2", "--max-seq-len", "1024"]].concat()));
    // The API: chat_template_kwargs (vLLM) or open_thinking (minimind-3) open the block, and the
    // answer is then read as reasoning from its first token.
    use minimind::serve::engine::{Engine, LoadedModel};
    let (model, tokenizer) = minimind::infer::load(dir.path(), &candle_core::Device::Cpu, &Default::default()).unwrap();
    let models = vec![LoadedModel { id: "m".into(), aliases: vec![], model, tokenizer }];
    let engine = Engine::start(models, minimind::serve::engine::EngineConfig { queue: 2, ..Default::default() });
    let opens = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "你好"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let request = minimind::serve::request::Request::parse(&engine, body.to_string().as_bytes(), true);
        request.map_err(|e| e.message).unwrap().opens_thinking
    };
    assert!(opens(json!({"chat_template_kwargs": {"open_thinking": true}})));
    assert!(opens(json!({"open_thinking": true})));
    assert!(!opens(json!({"chat_template_kwargs": {"enable_thinking": false}})));
    assert!(!opens(json!({})));
}

#[test]
fn a_tokenizer_trained_with_the_minimind3_layout_has_its_36_reserved_tokens_and_template() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok");
    let (poems, chats) = (fixture("pretrain_zh_songci_32.jsonl"), fixture("sft_zh_en_32.jsonl"));
    ok(minimind(&[
        "train-tokenizer",
        "--data",
        p(&poems),
        "--data",
        p(&chats),
        "--vocab-size",
        "900",
        "--layout",
        "minimind3",
        "--out",
        p(&out),
    ]));
    let added = |dir: &std::path::Path| -> Vec<(u64, String, bool)> {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
        let list = json["added_tokens"].as_array().unwrap().iter();
        list.map(|t| {
            (t["id"].as_u64().unwrap(), t["content"].as_str().unwrap().into(), t["special"].as_bool().unwrap())
        })
        .collect()
    };
    assert_eq!(added(&out), added(&tokenizer_dir("v3")));
    let (ours, reference) = (Tokenizer::load(&out).unwrap(), Tokenizer::load(&tokenizer_dir("v3")).unwrap());
    assert_eq!(ours.encode("<think>\n</think>").unwrap()[0], 25);
    let ids = ours.encode("<think>好<|im_end|>").unwrap();
    assert_eq!(ours.decode(&ids, true).unwrap(), "<think>好", "non-special tags stay when specials are skipped");
    for case in cases() {
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let mut extra = case["kwargs"].clone();
        if !case["tools"].is_null() {
            extra["tools"] = case["tools"].clone();
        }
        assert_eq!(
            ours.apply_chat_template(&case["messages"], gen, &extra).unwrap(),
            reference.apply_chat_template(&case["messages"], gen, &extra).unwrap()
        );
    }
}
