//! Hostile input: corrupt weights, folders that hold a user's work, leftovers of a killed run, data
//! that trains nothing, input edges — each gives a clean error or the right behavior, never a panic
//! and never lost work.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::data::rows::{JsonlIndex, LineCheck};
use minimind::infer::{Sampler, SamplingParams};
use minimind::model::checkpoint::{load_tensors, save_model, save_tensors};
use std::path::Path;

/// A tiny pretrained-shape model folder with the v2 tokenizer.
fn model_folder(dir: &Path) {
    let config = micro_config(6400, 4, 2, 16);
    let (model, _) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        3,
        &Device::Cpu,
    )
    .unwrap();
    save_model(dir, &model).unwrap();
    minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v2"), dir).unwrap();
}

#[test]
fn non_finite_weights_are_refused_at_load_with_the_tensors_name() {
    let dir = tempfile::tempdir().unwrap();
    model_folder(dir.path());
    let path = dir.path().join("model.safetensors");
    let mut tensors: Vec<(String, Tensor)> = load_tensors(&path, &Device::Cpu).unwrap().into_iter().collect();
    let (name, w) = tensors.iter_mut().find(|(n, _)| n.ends_with("layers.1.mlp.up_proj.weight")).unwrap();
    let mut values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[7] = f32::NAN;
    *w = Tensor::from_vec(values, w.shape(), &Device::Cpu).unwrap();
    let name = name.clone();
    save_tensors(&path, &tensors).unwrap();
    let err = fails(minimind(&["generate", "--model", p(dir.path()), "--prompt", "你好", "--max-new-tokens", "4"]));
    assert!(err.contains(&name) && err.contains("NaN or infinite"), "{err}");
}

#[test]
fn nan_logits_are_an_error_and_tiny_temperatures_are_greedy() {
    for top_k in [0, 1, 2] {
        let mut sampler = Sampler::new(SamplingParams { top_k, ..Default::default() }).unwrap();
        let err = sampler.sample(&[0.5, f32::NAN, 1.0], &[]).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }
    // Greedy decoding (which reads the logits in place) checks them too, NaN and +∞ alike.
    let mut greedy = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let mut logits = vec![0.25f32; 40];
        logits[33] = bad;
        assert!(greedy.sample(&logits, &[]).unwrap_err().to_string().contains("NaN or infinite"));
    }
    assert_eq!(greedy.sample(&[f32::NEG_INFINITY, 2.0, 7.5, 7.5, -3.0], &[]).unwrap(), 2, "the first of equals");
    // 1e-40 is a denormal in f32: logits / t would be ±∞. It samples the argmax.
    let mut sampler = Sampler::new(SamplingParams { temperature: 1e-40, ..Default::default() }).unwrap();
    for _ in 0..20 {
        assert_eq!(sampler.sample(&[0.1, 3.0, 2.9, -1.0], &[]).unwrap(), 1);
    }
    assert!(Sampler::new(SamplingParams { temperature: f64::NAN, ..Default::default() }).is_err());
}

fn pretrain_args<'a>(data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let tok = Box::leak(Box::new(tokenizer_dir("v2")));
    vec![
        "pretrain",
        "--data",
        p(data),
        "--tokenizer",
        p(tok),
        "--out",
        p(out),
        "--preset",
        "tiny",
        "--max-steps=2",
        "--batch-size=2",
        "--max-seq-len",
        "16",
    ]
}

#[test]
fn a_folder_holding_a_model_is_never_replaced_without_resume_or_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (fixture("pretrain_en_austen_16.jsonl"), dir.path().join("model"));
    ok(minimind(&pretrain_args(&data, &out)));
    let before: Vec<Vec<u8>> = ["model.safetensors", "tokenizer.json", "metrics.jsonl"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let err = fails(minimind(&pretrain_args(&data, &out)));
    assert!(err.contains("already holds") && err.contains("--overwrite"), "{err}");
    let sft =
        fails(minimind(&["sft", "--model", p(&out), "--data", p(&fixture("sft_zh_en_32.jsonl")), "--out", p(&out)]));
    assert!(sft.contains("already holds"), "{sft}");
    let after: Vec<Vec<u8>> = ["model.safetensors", "tokenizer.json", "metrics.jsonl"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert!(before == after, "the folder changed");
    let mut args = pretrain_args(&data, &out);
    args.push("--overwrite");
    ok(minimind(&args));
}

#[test]
fn a_run_that_fails_before_its_first_step_keeps_the_old_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    std::fs::write(&metrics, "{\"old\": true}\n").unwrap();
    struct Broken;
    impl minimind::train::Stage for Broken {
        type Batch = ();
        fn name(&self) -> &str {
            "broken"
        }
        fn batches_per_epoch(&self) -> usize {
            4
        }
        fn next_batch(&mut self) -> anyhow::Result<()> {
            anyhow::bail!("the data went away")
        }
        fn loss(&self, _: &minimind::MiniMindForCausalLM, _: &(), _: Option<u64>) -> anyhow::Result<Tensor> {
            unreachable!()
        }
        fn tokens(&self, _: &()) -> usize {
            0
        }
        fn cursor(&self) -> minimind::data::DataCursor {
            Default::default()
        }
        fn seek(&mut self, _: minimind::data::DataCursor) {}
    }
    let (model, params) = micro_model(1);
    let opts = train_options(dir.path());
    let err = minimind::train::train(&model, &params, &mut Broken, &opts).unwrap_err().to_string();
    assert!(err.contains("went away"));
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), "{\"old\": true}\n");
}

#[test]
fn temp_files_of_a_killed_run_are_removed_and_resume_needs_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (fixture("pretrain_en_austen_16.jsonl"), dir.path().join("model"));
    ok(minimind(&pretrain_args(&data, &out)));
    // What a run killed in the middle of atomic_write leaves (no process has this pid).
    let stale = out.join(".trainer_state.safetensors.tmp.4000000000");
    std::fs::write(&stale, vec![0u8; 1024]).unwrap();
    let mut args = pretrain_args(&data, &out);
    args.retain(|a| *a != "--max-steps=2");
    args.extend(["--max-steps=3", "--resume"]);
    let err = fails(minimind(&args)); // a different --max-steps cannot resume, but the cleanup ran
    assert!(err.contains("cannot resume"), "{err}");
    assert!(!stale.exists(), "the stale temp file is still there");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut args = pretrain_args(&data, &empty);
    args.push("--resume");
    let err = fails(minimind(&args));
    assert!(err.contains("nothing to resume"), "{err}");
}

#[test]
fn sft_rows_that_train_nothing_are_counted_and_a_file_of_only_those_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    model_folder(&model);
    let row = |user: &str| {
        serde_json::json!({"conversations": [{"role": "user", "content": user}, {"role": "assistant", "content": "好"}]})
            .to_string()
    };
    let long = "很长的问题。".repeat(40);
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, format!("{}\n{}\n", row(&long), row(&long))).unwrap();
    let args = |out: &str| {
        vec![
            "sft".to_string(),
            "--model".into(),
            p(&model).into(),
            "--data".into(),
            p(&data).into(),
            "--out".into(),
            dir.path().join(out).to_str().unwrap().into(),
            "--max-seq-len".into(),
            "32".into(),
            "--max-steps".into(),
            "1".into(),
            "--batch-size".into(),
            "2".into(),
        ]
    };
    let run = |out: &str| minimind(&args(out).iter().map(String::as_str).collect::<Vec<_>>());
    let err = fails(run("a"));
    assert!(err.contains("none of its 2 rows has a token to train on"), "{err}");
    std::fs::write(&data, format!("{}\n{}\n", row(&long), row("你好"))).unwrap();
    let out = run("b");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("leaving out 1 rows"), "{stderr}");
}

#[test]
fn a_byte_order_mark_is_accepted_and_a_huge_row_is_encoded_by_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bom.jsonl");
    std::fs::write(&path, b"\xEF\xBB\xBF{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    let index = JsonlIndex::build(&path, false, |l| minimind::data::pretrain::parse_text_row(l).map(|_| ())).unwrap();
    assert_eq!((index.len(), index.read(0).unwrap().as_str()), (2, "{\"text\": \"a\"}"));
    // The first N ids of a long text are those of its prefix.
    let tok = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let text = "明月几时有，把酒问青天。不知天上宫阙，今夕是何年。".repeat(2000) + "end";
    let full = tok.encode(&text).unwrap();
    assert_eq!(tok.encode_prefix(&text, 100).unwrap(), full[..100]);
    // A 20 MB row trains in a 16-token window without encoding all of it.
    let huge = dir.path().join("huge.jsonl");
    let row = serde_json::json!({"text": "床前明月光".repeat(1_400_000)}).to_string();
    std::fs::write(&huge, row + "\n").unwrap();
    let out = dir.path().join("m");
    let mut args = pretrain_args(&huge, &out);
    args.retain(|a| !a.starts_with("--max-steps") && !a.starts_with("--batch-size"));
    args.extend(["--max-steps=1", "--batch-size=1"]);
    let start = std::time::Instant::now();
    ok(minimind(&args));
    assert!(start.elapsed().as_secs() < 60, "encoding the whole row instead of its prefix?");
}

#[test]
fn nonsensical_numbers_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (fixture("pretrain_en_austen_16.jsonl"), dir.path().join("m"));
    for (flag, value, says) in [
        ("--lr", "-1e-3", "--lr must be a positive number"),
        ("--lr", "NaN", "--lr must be a positive number"),
        ("--lr", "inf", "--lr must be a positive number"),
        ("--grad-clip", "-1", "--grad-clip must be a number ≥ 0"),
        ("--weight-decay", "nan", "--weight-decay must be a number ≥ 0"),
        ("--max-minutes", "0", "--max-minutes must be a positive number"),
        ("--epochs", "0", "--epochs must be at least 1"),
    ] {
        let mut args = pretrain_args(&data, &out);
        let flag_value = format!("{flag}={value}");
        args.push(&flag_value);
        let err = fails(minimind(&args));
        assert!(err.contains(says), "{flag} {value}: {err}");
        assert!(!out.exists(), "{flag} {value}: the output folder was created");
    }
}

#[test]
fn a_tokenizer_smaller_than_the_vocabulary_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let big = minimind::ModelConfig { vocab_size: 7000, ..minimind::ModelConfig::preset("tiny").unwrap() };
    std::fs::write(&config, big.to_json().unwrap()).unwrap();
    let data = fixture("pretrain_en_austen_16.jsonl");
    let out = dir.path().join("m");
    let mut args = pretrain_args(&data, &out);
    args.retain(|a| *a != "--preset" && *a != "tiny");
    args.extend(["--config", p(&config)]);
    let run = minimind(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("600 embedding rows"), "{stderr}");
}

/// Random bytes and random JSON through every JSON Lines reader: errors, never panics.
#[test]
fn random_lines_never_panic_the_readers() {
    let tok = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let sft = minimind::data::sft::SftEncoding::for_tokenizer(&tok, 24).unwrap();
    let mut rng = Lcg(42);
    let dir = tempfile::tempdir().unwrap();
    for case in 0..300 {
        let line = if case % 2 == 0 { rng.bytes() } else { rng.json(3).to_string().into_bytes() };
        let path = dir.path().join("fuzz.jsonl");
        std::fs::write(&path, &line).unwrap();
        if let Ok(text) = std::str::from_utf8(&line) {
            let _ = minimind::data::pretrain::parse_text_row(text);
            let _ = minimind::data::sft::parse_conversation(text);
            let _ = minimind::data::dpo::encode_pair(text, &sft, &tok);
        }
        let _ = JsonlIndex::build_checked(&path, case % 3 == 0, |l| {
            minimind::data::sft::parse_conversation(l).map(|_| LineCheck::Keep)
        });
        let _ = minimind::data::dpo::DpoData::open(&path, case % 3 == 0, sft.clone(), &tok, 2, 1);
    }
}

/// A small seeded generator of random bytes and random JSON shaped like the inputs.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self) -> Vec<u8> {
        let pieces: [&[u8]; 10] =
            [b"{", b"}", b"\"", b":", b",", b"[", b"]", b"\xEF\xBB\xBF", b"\xff\xfe", b"\"text\""];
        (0..self.next(30)).flat_map(|_| pieces[self.next(pieces.len())].to_vec()).collect()
    }

    pub fn json(&mut self, depth: usize) -> serde_json::Value {
        use serde_json::json;
        let keys = [
            "text",
            "conversations",
            "chosen",
            "rejected",
            "role",
            "content",
            "messages",
            "model",
            "stream",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "stop",
            "seed",
            "prompt",
            "n",
        ];
        let roles = ["user", "assistant", "system", "tool", ""];
        match self.next(if depth == 0 { 5 } else { 8 }) {
            0 => json!(null),
            1 => json!(self.next(3) == 0),
            2 => json!([-1e40, -1.0, 0.0, 0.5, 3.0, 1e9, f64::MAX][self.next(7)]),
            3 => json!(roles[self.next(roles.len())]),
            4 => json!("好".repeat(self.next(5))),
            5 | 6 => {
                let mut map = serde_json::Map::new();
                for _ in 0..self.next(5) {
                    map.insert(keys[self.next(keys.len())].into(), self.json(depth - 1));
                }
                serde_json::Value::Object(map)
            }
            _ => serde_json::Value::Array((0..self.next(4)).map(|_| self.json(depth - 1)).collect()),
        }
    }
}

#[test]
fn finite_check_sees_nan_and_infinity() {
    use minimind::model::checkpoint::all_finite;
    let t = |v: f32| Tensor::new(&[1.0f32, v], &Device::Cpu).unwrap();
    assert!(all_finite(&t(2.0)).unwrap());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(!all_finite(&t(bad)).unwrap());
        assert!(!all_finite(&t(bad).to_dtype(DType::F16).unwrap()).unwrap());
    }
}
