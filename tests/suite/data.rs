//! Streaming JSON Lines, encoding, X/Y/mask construction, shuffling.

use crate::common::*;
use candle_core::Device;
use minimind::data::pretrain::{parse_text_row, pretrain_data, PretrainEncoding};
use minimind::data::tokenizer::Tokenizer;
use minimind::data::{DataCursor, JsonlIndex, LmBatch, ShuffledRows};
use std::io::Write;

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    path
}

fn encoding(max_seq_len: usize) -> PretrainEncoding {
    PretrainEncoding { max_seq_len, wrap: true, bos: 1, eos: 2, pad: 0 }
}

#[test]
fn padded_sample_masks_padding_targets() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let (ids, len) = encoding(8).encode(&t, "你好").unwrap();
    assert_eq!(ids, [1, 5134, 2, 0, 0, 0, 0, 0]);
    assert_eq!(len, 3);
    let batch = LmBatch::from_rows(&[(ids, len)], &Device::Cpu).unwrap();
    assert_eq!(batch.x.to_vec2::<u32>().unwrap(), [[1, 5134, 2, 0, 0, 0, 0]]);
    assert_eq!(batch.y.to_vec2::<u32>().unwrap(), [[5134, 2, 0, 0, 0, 0, 0]]);
    assert_eq!(batch.mask.to_vec2::<f32>().unwrap(), [[1., 1., 0., 0., 0., 0., 0.]]);
}

#[test]
fn truncated_sample_keeps_bos_and_eos_and_full_mask() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let text = "Hello world Hello world Hello world";
    let tokens = t.encode(text).unwrap();
    assert!(tokens.len() > 6);
    let (ids, len) = encoding(6).encode(&t, text).unwrap();
    assert_eq!(len, 6);
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..5], &tokens[..4]);
    assert_eq!(ids[5], 2);
    let batch = LmBatch::from_rows(&[(ids.clone(), len)], &Device::Cpu).unwrap();
    assert_eq!(batch.mask.to_vec2::<f32>().unwrap(), [[1.; 5]]);
    assert_eq!(batch.y.to_vec2::<u32>().unwrap()[0], ids[1..]);
    // Without wrapping the text is only truncated.
    let plain = PretrainEncoding { wrap: false, ..encoding(6) };
    assert_eq!(plain.encode(&t, text).unwrap().0, tokens[..6]);
}

#[test]
fn malformed_lines_report_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"{\"text\": \"ok\"}\n{\"text\": \"ok\"\n", ":2: expected a JSON object with a string field \"text\""),
        (b"{\"text\": \"ok\"}\n\n{\"txt\": \"x\"}\n", ":3: expected a JSON object"),
        (b"{\"text\": 5}\n", ":1: expected a JSON object"),
        (b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n", ":2: invalid UTF-8"),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        let path = write_file(&dir, &format!("bad{i}.jsonl"), bytes);
        let err = JsonlIndex::build(&path, false, |l| parse_text_row(l).map(|_| ())).err().unwrap().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(expected), "case {i}: {err}");
    }
    // --skip-bad-lines skips and counts them.
    let path = write_file(&dir, "mixed.jsonl", b"{\"text\": \"a\"}\nnot json\n{\"text\": 1}\n{\"text\": \"b\"}\n");
    let index = JsonlIndex::build(&path, true, |l| parse_text_row(l).map(|_| ())).unwrap();
    assert_eq!((index.len(), index.skipped), (2, 2));
    assert_eq!(index.read(1).unwrap(), "{\"text\": \"b\"}");
    assert_eq!(index.line_number(1), 4);
}

#[test]
fn empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("empty.jsonl", &b""[..]), ("blank.jsonl", b"\n  \n")] {
        let path = write_file(&dir, name, bytes);
        let err = JsonlIndex::build(&path, false, |l| parse_text_row(l).map(|_| ())).err().unwrap().to_string();
        assert!(err.contains("no training rows"), "{err}");
    }
    let path = write_file(&dir, "allbad.jsonl", b"x\ny\n");
    let err = JsonlIndex::build(&path, true, |l| parse_text_row(l).map(|_| ())).err().unwrap().to_string();
    assert!(err.contains("all 2 lines are malformed"), "{err}");
}

#[test]
fn crlf_lines_and_missing_final_newline_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "crlf.jsonl", b"{\"text\": \"a\"}\r\n{\"text\": \"b\"}");
    let index = JsonlIndex::build(&path, false, |l| parse_text_row(l).map(|_| ())).unwrap();
    assert_eq!(index.len(), 2);
    assert_eq!(parse_text_row(&index.read(0).unwrap()).unwrap(), "a");
    assert_eq!(parse_text_row(&index.read(1).unwrap()).unwrap(), "b");
}

#[test]
fn shuffling_is_seeded_and_covers_every_row_each_epoch() {
    let mut a = ShuffledRows::new(10, 7, DataCursor::default());
    let mut b = ShuffledRows::new(10, 7, DataCursor::default());
    let epoch0: Vec<usize> = (0..3).flat_map(|_| a.next_batch(4)).collect();
    assert_eq!(epoch0.len(), 10, "last batch of an epoch is short, never spans epochs");
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_ne!(epoch0, (0..10).collect::<Vec<_>>(), "rows are shuffled");
    let epoch0_b: Vec<usize> = (0..3).flat_map(|_| b.next_batch(4)).collect();
    assert_eq!(epoch0, epoch0_b, "same seed, same order");
    let epoch1 = a.next_batch(10);
    assert_eq!(a.cursor, DataCursor { epoch: 1, row: 10 });
    assert_ne!(epoch1, epoch0, "each epoch reshuffles");
    // Restoring from a cursor continues identically.
    let mut c = ShuffledRows::new(10, 7, DataCursor { epoch: 0, row: 4 });
    assert_eq!(c.next_batch(4), epoch0[4..8]);
}

#[test]
fn pretrain_batches_from_fixture() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let mut data = pretrain_data(&fixture("pretrain_zh_songci_32.jsonl"), false, encoding(64), &t, 5, 1).unwrap();
    assert_eq!(data.index.len(), 32);
    assert_eq!(data.batches_per_epoch(), 7);
    let batch = data.next_batch(&Device::Cpu).unwrap();
    assert_eq!(batch.x.dims(), [5, 63]);
    assert_eq!(batch.x.to_vec2::<u32>().unwrap()[0][0], 1, "rows start with bos");
}
