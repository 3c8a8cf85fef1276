//! Evaluation: bits per byte against an independent count of the text's bytes, and the SFT format
//! scoring only the assistant turns.

use crate::common::*;
use minimind::eval::{evaluate, EvalFormat};

fn model() -> minimind::MiniMindForCausalLM {
    micro_v2_model(2).0
}

fn lines(name: &str, n: usize) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    text.lines().take(n).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn bits_per_byte_is_the_loss_in_bits_over_the_text_bytes() {
    let t = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let path = fixture("pretrain_zh_songci_32.jsonl");
    let p = evaluate(&model(), &t, &path, EvalFormat::Text, 256, 3, Some(6)).unwrap();
    let rows = lines("pretrain_zh_songci_32.jsonl", 6);
    // Every text fits: its tokens and [eos] are the targets ([bos] is only read).
    let tokens: usize = rows.iter().map(|r| t.encode(r["text"].as_str().unwrap()).unwrap().len() + 1).sum();
    let bytes: usize = rows.iter().map(|r| r["text"].as_str().unwrap().len()).sum();
    assert_eq!((p.tokens, p.bytes), (tokens, bytes));
    let expected = p.nll * tokens as f64 / (bytes as f64 * std::f64::consts::LN_2);
    assert!((p.bits_per_byte() - expected).abs() < 1e-12 && p.bits_per_byte() > 0.0);
    // A random model knows nothing: about ln(6400) nats per token.
    assert!((p.nll - 6400f64.ln()).abs() < 1.0, "{}", p.nll);
}

#[test]
fn sft_rows_score_only_the_assistant_turns() {
    let t = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let p = evaluate(&model(), &t, &fixture("sft_zh_en_32.jsonl"), EvalFormat::Sft, 256, 4, Some(8)).unwrap();
    // The supervised text of a turn is its answer and the newline after <|im_end|>.
    let answers: Vec<String> = lines("sft_zh_en_32.jsonl", 8)
        .iter()
        .flat_map(|r| r["conversations"].as_array().unwrap().clone())
        .filter(|m| m["role"] == "assistant")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    let bytes: usize = answers.iter().map(|a| a.len() + 1).sum();
    let tokens: usize = answers.iter().map(|a| t.encode(a).unwrap().len() + 2).sum();
    assert_eq!((p.rows, p.bytes, p.tokens), (8, bytes, tokens));
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "{\"conversations\": []}\n{\"text\": \"x\"}\n").unwrap();
    let err = evaluate(&model(), &t, bad.path(), EvalFormat::Sft, 64, 1, None).unwrap_err();
    assert!(format!("{err:#}").contains(":1"), "{err:#}");
}
