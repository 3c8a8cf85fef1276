//! SFT data: chat template rendering and MiniMind's assistant-only loss mask.

use crate::common::*;
use minimind::data::sft::{assistant_mask, parse_conversation, SftEncoding};
use minimind::data::tokenizer::{ChatMessage, Tokenizer};

fn ones(mask: &[f32]) -> Vec<usize> {
    mask.iter().enumerate().filter(|(_, m)| **m > 0.0).map(|(i, _)| i).collect()
}

#[test]
fn mask_of_the_spec_worked_example() {
    // Spec §5.3: the V2-classic ids of [user: 你好, assistant: 你好！], max_len 44 → positions 35–38.
    let mut ids = vec![
        1, 85, 736, 201, 608, 345, 562, 261, 75, 47, 807, 270, 1589, 400, 411, 1946, 740, 1728, 945, 1184, 286, 2, 201,
        1, 320, 275, 201, 5134, 2, 201, 1, 1078, 538, 501, 201, 5134, 2207, 2, 201,
    ];
    ids.resize(44, 0);
    assert_eq!(ones(&assistant_mask(&ids, &[1, 1078, 538, 501], &[2])), [35, 36, 37, 38]);
    // The same through the real tokenizer and template (V2: same header ids).
    let t = Tokenizer::load(&tokenizer_dir("v2-classic")).unwrap();
    let enc = SftEncoding::for_tokenizer(&t, 44).unwrap();
    assert_eq!((enc.header.as_slice(), enc.end.as_slice()), (&[1u32, 1078, 538, 501][..], &[2u32][..]));
    let row = enc.encode(&t, &[ChatMessage::new("user", "你好"), ChatMessage::new("assistant", "你好！")]).unwrap();
    assert_eq!(row.ids, ids);
    assert_eq!(ones(&row.mask), [35, 36, 37, 38]);
}

#[test]
fn every_assistant_turn_of_a_conversation_is_supervised() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let enc = SftEncoding::for_tokenizer(&t, 128).unwrap();
    let messages = [
        ChatMessage::new("user", "你好"),
        ChatMessage::new("assistant", "你好！"),
        ChatMessage::new("user", "Hello world"),
        ChatMessage::new("assistant", "Hello"),
    ];
    let row = enc.encode(&t, &messages).unwrap();
    let supervised: Vec<u32> = ones(&row.mask).iter().map(|&i| row.ids[i]).collect();
    let mut expect = t.encode("你好！<|im_end|>\n").unwrap();
    expect.extend(t.encode("Hello<|im_end|>\n").unwrap());
    assert_eq!(supervised, expect, "answers, their end tokens and newlines — nothing from the prompts");
    // Padding is never supervised.
    let text_len = t.encode(&t.render_chat(&messages, false).unwrap()).unwrap().len();
    assert!(ones(&row.mask).iter().all(|&i| i < text_len));
}

#[test]
fn a_truncated_answer_is_supervised_to_the_end() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let long = "很长的回答。".repeat(30);
    let messages = [ChatMessage::new("user", "问"), ChatMessage::new("assistant", &long)];
    let full = t.encode(&t.render_chat(&messages, false).unwrap()).unwrap();
    let enc = SftEncoding::for_tokenizer(&t, 40).unwrap();
    let row = enc.encode(&t, &messages).unwrap();
    assert_eq!(row.ids, full[..40]);
    let header_end = (0..40).find(|&i| row.ids[i..].starts_with(&enc.header)).unwrap() + enc.header.len();
    assert_eq!(ones(&row.mask), (header_end + 1..40).collect::<Vec<_>>());
}

#[test]
fn malformed_conversations_say_what_was_expected() {
    assert!(parse_conversation(
        r#"{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#
    )
    .is_ok());
    for (line, why) in [
        (r#"{"text": "x"}"#, "expected {\"conversations\""),
        (r#"{"conversations": [{"role": "user", "content": "q"}]}"#, "no assistant message"),
        (r#"{"conversations": [{"role": "robot", "content": "q"}]}"#, "unknown role \"robot\""),
        (r#"{"conversations": [{"role": "user", "content": 3}]}"#, "expected {\"conversations\""),
    ] {
        let err = parse_conversation(line).unwrap_err();
        assert!(err.contains(why), "{line}: {err}");
    }
}
