//! Tokenizers and chat templates against MiniMind's real files (reference values from the spec).

use crate::common::*;
use minimind::data::tokenizer::{ChatMessage, TextStream, Tokenizer};
use serde_json::json;

fn load(version: &str) -> Tokenizer {
    Tokenizer::load(&tokenizer_dir(version)).unwrap()
}

#[test]
fn reference_encodings_v2_classic() {
    let t = load("v2-classic");
    assert_eq!(t.vocab_size(), 6400);
    let cases: &[(&str, &[u32])] = &[
        ("<s>assistant", &[1, 1078, 538, 501]),
        ("\n", &[201]),
        ("你好", &[5134]),
        ("<think>", &[30, 450, 1573, 32]),
        ("</think>", &[5540, 450, 1573, 32]),
        ("<answer>", &[30, 662, 89, 275, 32]),
        ("</answer>", &[5540, 662, 89, 275, 32]),
        ("Hello world", &[42, 392, 338, 1636]),
    ];
    for (text, ids) in cases {
        assert_eq!(t.encode(text).unwrap(), *ids, "{text:?}");
    }
    assert_eq!((t.bos_id().unwrap(), t.eos_id().unwrap(), t.pad_id().unwrap()), (1, 2, 0));
}

#[test]
fn reference_encodings_v2_and_v3() {
    let v2 = load("v2");
    assert_eq!(v2.encode("<|im_start|>assistant\n").unwrap(), [1, 1078, 538, 501, 201]);
    assert_eq!(v2.encode("<|im_end|>").unwrap(), [2]);
    assert_eq!((v2.bos_id().unwrap(), v2.eos_id().unwrap(), v2.pad_id().unwrap()), (1, 2, 0));
    let v3 = load("v3");
    assert_eq!(v3.encode("<|im_start|>assistant\n").unwrap(), [1, 1388, 570, 811, 234]);
    assert_eq!(v3.encode("<|im_end|>\n").unwrap(), [2, 234]);
    assert_eq!(v3.encode("<think>").unwrap(), [25]);
    assert_eq!(v3.encode("Hello world").unwrap(), [1602, 1707]);
}

#[test]
fn encode_decode_round_trips() {
    let texts = [
        "床前明月光，疑是地上霜。",
        "It is a truth universally acknowledged.",
        "emoji 🦀🚀 and 👩‍👩‍👧 family",
        "mixed 中文 English 123 \t tabs\n\nnewlines",
        "looks invalid: \u{FFFD} \u{0} <|im_start <s <|unknown|> \\x80 %%",
        "  leading and trailing spaces  ",
    ];
    for version in ["v2-classic", "v2", "v3"] {
        let t = load(version);
        for text in texts {
            let ids = t.encode(text).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "{version}: {text:?}");
        }
    }
}

#[test]
fn chat_template_v2_classic_matches_transformers() {
    let t = load("v2-classic");
    let messages = [ChatMessage::new("user", "你好"), ChatMessage::new("assistant", "你好！")];
    let text = t.render_chat(&messages, false).unwrap();
    assert_eq!(
        text,
        "<s>system\n你是 MiniMind，是一个有用的人工智能助手。</s>\n<s>user\n你好</s>\n<s>assistant\n你好！</s>\n"
    );
    let ids = [
        1, 85, 736, 201, 608, 345, 562, 261, 75, 47, 807, 270, 1589, 400, 411, 1946, 740, 1728, 945, 1184, 286, 2, 201,
        1, 320, 275, 201, 5134, 2, 201, 1, 1078, 538, 501, 201, 5134, 2207, 2, 201,
    ];
    assert_eq!(t.encode(&text).unwrap(), ids);
}

#[test]
fn chat_template_v2_matches_transformers() {
    let t = load("v2");
    let messages = [ChatMessage::new("user", "你好"), ChatMessage::new("assistant", "你好！")];
    let text = t.render_chat(&messages, false).unwrap();
    assert_eq!(text, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！<|im_end|>\n");
    let ids = [
        1, 85, 736, 201, 59, 292, 389, 260, 3836, 1861, 501, 2, 201, 1, 320, 275, 201, 5134, 2, 201, 1, 1078, 538, 501,
        201, 5134, 2207, 2, 201,
    ];
    assert_eq!(t.encode(&text).unwrap(), ids);
    // An explicit system message replaces the default one.
    let sys = t.render_chat(&[ChatMessage::new("system", "S"), ChatMessage::new("user", "Q")], true).unwrap();
    assert_eq!(sys, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn chat_template_v3_matches_transformers() {
    let t = load("v3");
    let messages = [ChatMessage::new("user", "你好"), ChatMessage::new("assistant", "你好！")];
    let text = t.render_chat(&messages, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n你好！<|im_end|>\n"
    );
    let ids = [1, 832, 311, 234, 1968, 2, 234, 1, 1388, 570, 811, 234, 25, 234, 234, 26, 234, 234, 1968, 1364, 2, 234];
    assert_eq!(t.encode(&text).unwrap(), ids);
    // Generation prompt, with and without open thinking; reasoning split out of the content.
    let q = json!([{"role": "user", "content": "Q"}]);
    assert_eq!(
        t.apply_chat_template(&q, true, &json!({})).unwrap(),
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    assert_eq!(
        t.apply_chat_template(&q, true, &json!({"open_thinking": true})).unwrap(),
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n"
    );
    let r = json!([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nplan\n</think>\n\nA"}]);
    assert!(t
        .apply_chat_template(&r, false, &json!({}))
        .unwrap()
        .ends_with("<|im_start|>assistant\n<think>\nplan\n</think>\n\nA<|im_end|>\n"));
}

#[test]
fn chat_template_v3_tools_use_python_json() {
    let t = load("v3");
    let tools = json!([{"type": "function", "function": {"name": "add", "parameters": {"a": 1, "b": [1, 2]}}}]);
    let text =
        t.apply_chat_template(&json!([{"role": "user", "content": "Q"}]), false, &json!({"tools": tools})).unwrap();
    assert!(text.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": [1, 2]}}}\n</tools>"), "{text}");
}

#[test]
fn stream_decoding_never_splits_a_character() {
    let t = load("v2");
    // A rare character falls back to several byte tokens.
    let text = "𝄞龘🦀";
    let ids = t.encode(text).unwrap();
    assert!(ids.len() > 3, "expected byte-level pieces, got {ids:?}");
    let mut stream = TextStream::new(&t);
    let mut out = String::new();
    for id in ids {
        if let Some(piece) = stream.push(id).unwrap() {
            assert!(!piece.contains('\u{FFFD}'), "half a character was emitted: {piece:?}");
            out.push_str(&piece);
        }
    }
    assert_eq!(out, text);
}

#[test]
fn stream_decoding_equals_full_decoding() {
    for version in ["v2-classic", "v2", "v3"] {
        let t = load(version);
        let text = "水调歌头（苏轼）\n明月几时有？把酒问青天。🦀 Rust — “quoted” 𝄞 end.\n\n  spaces";
        let ids = t.encode(text).unwrap();
        let mut stream = TextStream::new(&t);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&stream.push(id).unwrap().unwrap_or_default());
        }
        out.push_str(&stream.finish().unwrap().unwrap_or_default());
        assert_eq!(out, t.decode(&ids, true).unwrap(), "{version}");
    }
}

#[test]
fn trained_tokenizer_has_specials_first_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let files = [fixture("pretrain_zh_songci_32.jsonl"), fixture("sft_zh_en_32.jsonl")];
    minimind::data::train_tokenizer::train_tokenizer(&files, 600, dir.path(), false).unwrap();
    let t = Tokenizer::load(dir.path()).unwrap();
    for (id, token) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().enumerate() {
        assert_eq!(t.token_to_id(token), Some(id as u32));
    }
    assert_eq!(t.vocab_size(), 600);
    // The 256 byte symbols make any text encodable.
    for text in ["水调歌头（苏轼）", "unseen English ✓ 🦀", "<|im_start|>x<|im_end|>"] {
        assert_eq!(t.decode(&t.encode(text).unwrap(), false).unwrap(), text);
    }
    assert_eq!(t.encode("<|im_start|>").unwrap(), [1]);
    // The written config carries MiniMind2's chat template.
    let chat = t.render_chat(&[ChatMessage::new("user", "你好")], true).unwrap();
    assert_eq!(chat, "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n");
}

#[test]
fn tokenizer_corpus_lines_may_be_text_or_conversations() {
    use minimind::data::train_tokenizer::corpus_text;
    assert_eq!(corpus_text(r#"{"text": "a b"}"#).unwrap(), "a b");
    let chat = r#"{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
    assert_eq!(corpus_text(chat).unwrap(), "q\na");
    let err = corpus_text(r#"{"txt": 1}"#).unwrap_err();
    assert!(err.contains("\"text\"") && err.contains("conversations"), "{err}");
}
