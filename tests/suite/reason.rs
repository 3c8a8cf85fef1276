//! Reasoning SFT: tag tokens weighted, the plain count as denominator; the think display.

use crate::common::*;
use minimind::data::reason::ReasonEncoding;
use minimind::data::sft::SftEncoding;
use minimind::data::tokenizer::{ChatMessage, Tokenizer};
use minimind::infer::reasoning::ThinkDisplay;

#[test]
fn tag_tokens_get_weight_10_and_the_mean_keeps_the_plain_count() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let sft = SftEncoding::for_tokenizer(&t, 96).unwrap();
    let enc = ReasonEncoding::new(&t, sft.clone(), 10.0).unwrap();
    // MiniMind's tokenizer spells the tags with these pieces (spec §6.6).
    assert_eq!(enc.tag_ids.iter().copied().collect::<Vec<_>>(), [30, 32, 89, 275, 450, 662, 1573, 5540]);
    let messages = [
        ChatMessage::new("user", "1+1?"),
        ChatMessage::new("assistant", "<think>\n一加一\n</think>\n<answer>\n2\n</answer>"),
    ];
    let plain = sft.encode(&t, &messages).unwrap();
    let row = enc.encode(&t, &messages).unwrap();
    assert_eq!(row.ids, plain.ids);
    for j in 1..row.ids.len() {
        let expect = if enc.tag_ids.contains(&row.ids[j]) { 10.0 } else { plain.mask[j] };
        assert_eq!(row.mask[j], expect, "position {j} (id {})", row.ids[j]);
    }
    // Every piece of every tag in the answer is weighted (the tags are 4, 4, 5 and 5 pieces).
    for tag in minimind::data::reason::TAGS {
        let pieces = t.encode(tag).unwrap();
        let at = (0..row.ids.len()).find(|&j| row.ids[j..].starts_with(&pieces)).unwrap();
        assert!(row.mask[at..at + pieces.len()].iter().all(|&m| m == 10.0), "{tag}");
    }
    assert_eq!(row.norm, Some(plain.mask[1..].iter().sum::<f32>()));
}

#[test]
fn think_display_sets_the_reasoning_apart_even_across_pieces() {
    let mut d = ThinkDisplay::default();
    let pieces = ["<th", "ink>\nplan", " a<b\n</", "think>\n<ans", "wer>\nok\n</answer>", "<"];
    let shown: String = pieces.iter().map(|p| d.push(p)).collect::<String>() + &d.finish();
    assert_eq!(shown, "[think] \nplan a<b\n [/think]\n\nok\n<");
}
