//! End to end through the binary: train a tokenizer, pretrain a few steps, generate, on the fixtures.

use crate::common::*;
use std::process::Command;

#[test]
fn tokenizer_pretrain_generate_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, model) = (dir.path().join("tok"), dir.path().join("model"));
    let data = fixture("pretrain_zh_songci_32.jsonl");
    ok(minimind(&["train-tokenizer", "--data", p(&data), "--vocab-size", "800", "--out", p(&tok)]));
    let out = ok(minimind(&[
        "pretrain",
        "--data",
        p(&data),
        "--tokenizer",
        p(&tok),
        "--out",
        p(&model),
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--accumulation-steps",
        "2",
        "--max-seq-len",
        "64",
        "--max-steps",
        "6",
        "--save-every",
        "4",
        "--lr",
        "2e-3",
    ]));
    assert!(out.contains("pretrained 6 steps"), "{out}");
    for file in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.jsonl", "loss.png"]
    {
        assert!(model.join(file).exists(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(model.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 6);
    let text = ok(minimind(&[
        "generate",
        "--model",
        p(&model),
        "--prompt",
        "浣溪沙（",
        "--max-new-tokens",
        "12",
        "--seed",
        "1",
    ]));
    assert!(text.starts_with("浣溪沙（") && text.chars().count() > "浣溪沙（".chars().count(), "{text:?}");
    // Greedy decoding is deterministic; the chat path renders the template.
    let greedy = |chat: bool| {
        let mut args =
            vec!["generate", "--model", p(&model), "--prompt", "你好", "--temperature", "0", "--max-new-tokens", "8"];
        if chat {
            args.push("--chat");
        }
        ok(minimind(&args))
    };
    assert_eq!(greedy(false), greedy(false));
    greedy(true);
    // The chart can be redrawn on demand.
    std::fs::remove_file(model.join("loss.png")).unwrap();
    ok(minimind(&["chart", p(&model)]));
    assert!(model.join("loss.png").exists());
}

#[test]
fn bad_input_gives_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"a\"}\n{\"text\": [1]}\n").unwrap();
    let tok = tokenizer_dir("v2");
    let out = minimind(&[
        "pretrain",
        "--data",
        p(&bad),
        "--tokenizer",
        p(&tok),
        "--out",
        p(&dir.path().join("m")),
        "--preset",
        "tiny",
        "--max-steps",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: expected a JSON object with a string field \"text\"", bad.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    // With --skip-bad-lines the bad row is skipped and reported.
    let out = minimind(&[
        "pretrain",
        "--data",
        p(&bad),
        "--tokenizer",
        p(&tok),
        "--out",
        p(&dir.path().join("m")),
        "--preset",
        "tiny",
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--max-seq-len",
        "16",
        "--skip-bad-lines",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping 1 lines of"), "{stderr}");
    // Empty data, a missing model folder and a bad preset are errors too.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let out = minimind(&[
        "pretrain",
        "--data",
        p(&empty),
        "--tokenizer",
        p(&tok),
        "--out",
        p(&dir.path().join("m2")),
        "--preset",
        "tiny",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the file is empty"));
    let out = minimind(&["generate", "--model", p(&dir.path().join("nothing")), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let out = minimind(&["info", "--preset", "huge"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));
}

#[test]
fn info_prints_preset_parameter_counts() {
    assert!(ok(minimind(&["info", "--preset", "minimind2-small"])).contains("parameters: 25829888"));
    assert!(ok(minimind(&["info", "--preset", "minimind2"])).contains("parameters: 104030976"));
}

#[test]
fn killing_training_never_leaves_a_truncated_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let data = fixture("pretrain_en_austen_16.jsonl");
    let tok = tokenizer_dir("v2");
    // Saves after every step; killed at several moments, the folder always loads.
    for delay_ms in [700u64, 1100, 1500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_minimind"))
            .args(["pretrain", "--data", p(&data), "--tokenizer", p(&tok), "--out", p(&model), "--preset", "tiny"])
            .args([
                "--batch-size",
                "2",
                "--accumulation-steps",
                "1",
                "--max-seq-len",
                "32",
                "--max-steps",
                "100000",
                "--save-every",
                "1",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !model.join("model.safetensors").exists() && start.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let loaded =
            minimind::model::checkpoint::load_model(&model, &candle_core::Device::Cpu, candle_core::DType::F32, false);
        assert!(loaded.is_ok(), "checkpoint unreadable after kill at +{delay_ms} ms: {:#}", loaded.err().unwrap());
    }
}

#[test]
fn sft_and_resume_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, base, chat) = (dir.path().join("tok"), dir.path().join("base"), dir.path().join("chat"));
    let corpus = fixture("pretrain_zh_songci_32.jsonl");
    ok(minimind(&["train-tokenizer", "--data", p(&corpus), "--vocab-size", "700", "--out", p(&tok)]));
    let pretrain = |extra: &[&str]| {
        let mut args = vec![
            "pretrain",
            "--data",
            p(&corpus),
            "--tokenizer",
            p(&tok),
            "--out",
            p(&base),
            "--preset",
            "tiny",
            "--batch-size",
            "4",
            "--accumulation-steps",
            "1",
            "--max-seq-len",
            "48",
            "--max-steps",
            "6",
            "--save-every",
            "3",
        ];
        args.extend_from_slice(extra);
        minimind(&args)
    };
    ok(pretrain(&[]));
    let straight = std::fs::read_to_string(base.join("metrics.jsonl")).unwrap();
    // --resume of a finished run continues from its last checkpoint: nothing left, same metrics.
    ok(pretrain(&["--resume"]));
    assert_eq!(std::fs::read_to_string(base.join("metrics.jsonl")).unwrap(), straight);
    // Resuming with a different schedule is refused with a reason.
    let out = pretrain(&["--resume", "--seed", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resume"), "{}", String::from_utf8_lossy(&out.stderr));
    // SFT from the pretrained folder on the chat fixture.
    let sft = fixture("sft_zh_en_32.jsonl");
    let out = ok(minimind(&[
        "sft",
        "--model",
        p(&base),
        "--data",
        p(&sft),
        "--out",
        p(&chat),
        "--batch-size",
        "4",
        "--max-seq-len",
        "160",
        "--max-steps",
        "4",
        "--lr",
        "1e-3",
    ]));
    assert!(out.contains("fine-tuned 4 steps"), "{out}");
    for file in ["model.safetensors", "tokenizer_config.json", "metrics.jsonl", "loss.png", "trainer_state.safetensors"]
    {
        assert!(chat.join(file).exists(), "{file} missing");
    }
    let answer =
        ok(minimind(&["generate", "--model", p(&chat), "--chat", "--prompt", "你好", "--max-new-tokens", "8"]));
    assert!(!answer.contains("<|im_start|>"), "special tokens are not printed: {answer}");
    // DPO from the SFT model on the preference fixture: margin and accuracy are logged and charted.
    let prefs = fixture("dpo_zh_en_16.jsonl");
    let dpo = dir.path().join("dpo");
    let out = ok(minimind(&[
        "dpo",
        "--model",
        p(&chat),
        "--data",
        p(&prefs),
        "--out",
        p(&dpo),
        "--batch-size",
        "2",
        "--max-seq-len",
        "160",
        "--max-steps",
        "3",
        "--lr",
        "1e-4",
        "--beta",
        "0.1",
    ]));
    assert!(out.contains("preference-tuned 3 steps"), "{out}");
    let metrics = minimind::train::metrics::read_metrics(&dpo.join("metrics.jsonl")).unwrap();
    assert!((metrics[0].loss - std::f64::consts::LN_2).abs() < 1e-4, "first DPO loss {}", metrics[0].loss);
    assert!(metrics.iter().all(|m| m.extra.contains_key("reward_margin") && m.extra.contains_key("accuracy")));
    assert!(dpo.join("loss.png").exists());
    // LoRA on the chat model: only the adapter is written; generate applies it; merge folds it in.
    let adapter = dir.path().join("lora");
    let out = ok(minimind(&[
        "lora",
        "--model",
        p(&chat),
        "--data",
        p(&fixture("sft_zh_en_32.jsonl")),
        "--out",
        p(&adapter),
        "--batch-size",
        "4",
        "--max-seq-len",
        "160",
        "--max-steps",
        "3",
        "--lr",
        "1e-2",
        "--rank",
        "4",
    ]));
    assert!(out.contains("adapted 3 steps"), "{out}");
    assert!(adapter.join("adapter.safetensors").exists() && !adapter.join("model.safetensors").exists());
    let greedy = |args: &[&str]| {
        let mut all = vec!["generate", "--chat", "--prompt", "你好", "--temperature", "0", "--max-new-tokens", "8"];
        all.extend_from_slice(args);
        ok(minimind(&all))
    };
    let with_adapter = greedy(&["--model", p(&chat), "--lora", p(&adapter)]);
    let merged = dir.path().join("merged");
    ok(minimind(&["lora", "merge", "--model", p(&chat), "--lora", p(&adapter), "--out", p(&merged)]));
    assert_eq!(greedy(&["--model", p(&merged)]), with_adapter, "merged model decodes like base + adapter");
    // Black-box distillation data from a teacher, then white-box distillation into the base model.
    let written = dir.path().join("teacher.jsonl");
    let out = ok(minimind(&[
        "generate-dataset",
        "--teacher",
        p(&chat),
        "--prompts",
        p(&fixture("sft_zh_en_32.jsonl")),
        "--out",
        p(&written),
        "--max-new-tokens",
        "6",
    ]));
    assert!(out.contains("32 teacher answers"), "{out}");
    let first = std::fs::read_to_string(&written).unwrap();
    assert_eq!(first.lines().count(), 32);
    assert!(minimind::data::sft::parse_conversation(first.lines().next().unwrap()).is_ok());
    let student = dir.path().join("student");
    let out = ok(minimind(&[
        "distill",
        "--student",
        p(&base),
        "--teacher",
        p(&chat),
        "--data",
        p(&written),
        "--out",
        p(&student),
        "--batch-size",
        "4",
        "--max-seq-len",
        "160",
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
        "--alpha",
        "0.5",
        "--temperature",
        "2",
    ]));
    assert!(out.contains("distilled 2 steps"), "{out}");
    let metrics = minimind::train::metrics::read_metrics(&student.join("metrics.jsonl")).unwrap();
    assert!(metrics.iter().all(|m| m.extra.contains_key("ce") && m.extra.contains_key("kd")));
    // Reasoning distillation on think/answer data; generation shows the think part apart.
    let reasoner = dir.path().join("reason");
    let out = ok(minimind(&[
        "reason",
        "--model",
        p(&chat),
        "--data",
        p(&fixture("reason_zh_en_8.jsonl")),
        "--out",
        p(&reasoner),
        "--batch-size",
        "4",
        "--max-seq-len",
        "160",
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
    ]));
    assert!(out.contains("reasoning-tuned 2 steps"), "{out}");
    assert!(reasoner.join("model.safetensors").exists());
    // The terminal chat: greedy answers repeat after /reset, /exit stops reading.
    let mut child = Command::new(env!("CARGO_BIN_EXE_minimind"))
        .args(["chat", "--model", p(&chat), "--temperature", "0", "--max-new-tokens", "6", "--history", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all("你好\n/reset\n你好\n/exit\nnot read\n".as_bytes()).unwrap();
    let transcript = ok(child.wait_with_output().unwrap());
    let parts: Vec<&str> = transcript.split("(conversation reset)\n").collect();
    assert_eq!(parts.len(), 2, "{transcript:?}");
    assert_eq!(parts[0], parts[1], "the same greedy answer before and after /reset, and nothing after /exit");
    // SFT data in the wrong format names the line.
    let out = minimind(&["sft", "--model", p(&base), "--data", p(&corpus), "--out", p(&dir.path().join("x"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":1: expected {\"conversations\""), "{stderr}");
}

#[test]
fn import_a_classic_pth_then_chat_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (pth, model, adapter) = (dir.path().join("full_sft_64.pth"), dir.path().join("model"), dir.path().join("lora"));
    let config = micro_config(6400, 4, 2, 16);
    let weights = crate::common::pth::classic_weights(&config, 9);
    crate::common::pth::write_pth(&pth, &weights, &[("output.weight", "tok_embeddings.weight")]);
    let out = ok(minimind(&["import", p(&pth), "--out", p(&model), "--heads", "4"]));
    assert!(out.contains("MiniMind2-classic names") && out.contains("bundled minimind2-classic"), "{out}");
    assert!(out.contains("4 heads / 2 KV heads, vocab 6400, tied head"), "{out}");
    let lora: Vec<(String, candle_core::Tensor)> = (0..2)
        .flat_map(|l| {
            let path = format!("layers.{l}.attention.wq.lora");
            let a = crate::common::pth::random_normal(&[4, 64], l as u64);
            let b = crate::common::pth::random_normal(&[64, 4], l as u64 + 7);
            [(format!("{path}.A.weight"), a), (format!("{path}.B.weight"), b)]
        })
        .collect();
    let lora_pth = dir.path().join("lora_x_64.pth");
    crate::common::pth::write_pth(&lora_pth, &lora, &[]);
    let out = ok(minimind(&["import", p(&lora_pth), "--base", p(&model), "--out", p(&adapter)]));
    assert!(out.contains("rank 4, targets q_proj"), "{out}");
    for extra in [&[][..], &["--lora", p(&adapter)][..]] {
        let mut args = vec!["generate", "--model", p(&model), "--chat", "--prompt", "你好", "--max-new-tokens", "4"];
        args.extend_from_slice(extra);
        ok(minimind(&args));
    }
    // Perplexity, and int8 weights for eval and generate.
    let data = fixture("pretrain_zh_songci_32.jsonl");
    let f32_eval =
        ok(minimind(&["eval", "--model", p(&model), "--data", p(&data), "--max-seq-len", "32", "--rows", "6"]));
    let int8_eval = ok(minimind(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--max-seq-len",
        "32",
        "--rows",
        "6",
        "--int8",
    ]));
    assert!(f32_eval.starts_with("perplexity ") && f32_eval.contains("of 6 rows)"), "{f32_eval}");
    assert!(int8_eval.contains("int8 weights"), "{int8_eval}");
    let ppl = |s: &str| s.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap();
    assert!((ppl(&f32_eval) / ppl(&int8_eval) - 1.0).abs() < 0.05, "{f32_eval} vs {int8_eval}");
    ok(minimind(&["generate", "--model", p(&model), "--prompt", "春", "--max-new-tokens", "3", "--int8"]));
    // An f16 KV cache gives the fp32 model's greedy answer here (a few tokens of a trained model).
    let greedy = ["generate", "--model", p(&model), "--prompt", "春", "--max-new-tokens", "4", "--temperature", "0"];
    assert_eq!(ok(minimind(&[&greedy[..], &["--kv-f16"]].concat())), ok(minimind(&greedy)));
    ok(minimind(&[&greedy[..], &["--kv-f16", "--int8"]].concat()));
    // An int8 KV cache (a scale per cached row) runs with either weights; one cache format at a time.
    ok(minimind(&[&greedy[..], &["--kv-int8"]].concat()));
    ok(minimind(&[&greedy[..], &["--kv-int8", "--int8"]].concat()));
    let both = minimind(&[&greedy[..], &["--kv-f16", "--kv-int8"]].concat());
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && stderr.contains("cannot be used with"), "{stderr}");
    // --logits-out writes the prompt's logits: [tokens, vocab], matching the library forward of the
    // model as inference loads it (panel-packed), and the plain model's to rounding.
    let logits_path = dir.path().join("logits.safetensors");
    ok(minimind(&[
        "generate",
        "--model",
        p(&model),
        "--prompt",
        "春风",
        "--max-new-tokens",
        "1",
        "--logits-out",
        p(&logits_path),
    ]));
    let saved = minimind::model::checkpoint::load_tensors(&logits_path, &candle_core::Device::Cpu).unwrap();
    let (loaded, _) =
        minimind::model::checkpoint::load_model(&model, &candle_core::Device::Cpu, candle_core::DType::F32, false)
            .unwrap();
    let (inference, _) = minimind::infer::load(&model, &candle_core::Device::Cpu, &Default::default()).unwrap();
    let ids = saved["input_ids"].unsqueeze(0).unwrap();
    assert_eq!(saved["logits"].dims(), &[ids.dim(1).unwrap(), 6400]);
    assert_eq!(max_abs_diff(&saved["logits"], &inference.forward(&ids, None).unwrap().squeeze(0).unwrap()), 0.0);
    assert!(max_abs_diff(&saved["logits"], &loaded.forward(&ids, None).unwrap().squeeze(0).unwrap()) < 1e-3);
    let out = minimind(&["import", p(&lora_pth), "--out", p(&adapter)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--base"));
}

/// `generate --prompts FILE` decodes many prompts through the batching engine: one JSON line per
/// prompt, in order, each greedy answer the one `generate --prompt` gives alone; bad lines are named.
#[test]
fn generate_prompts_file_batches_and_matches_single_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let (data, tok) = (fixture("pretrain_zh_songci_32.jsonl"), tokenizer_dir("v2"));
    let args = ["pretrain", "--data", p(&data), "--tokenizer", p(&tok), "--out", p(&model), "--preset", "tiny"];
    ok(minimind(&[&args[..], &["--max-steps", "3", "--max-seq-len", "64", "--batch-size", "4"]].concat()));
    let prompts = ["浣溪沙", "春", "明月几时有，把酒问青天", "山"];
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts.iter().map(|t| serde_json::json!({ "prompt": t }).to_string()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let greedy = ["--temperature", "0", "--max-new-tokens", "10", "--chat"];
    let batch = ok(minimind(
        &[&["generate", "--model", p(&model), "--prompts", p(&file), "--max-batch", "3"], &greedy[..]].concat(),
    ));
    let rows: Vec<serde_json::Value> = batch.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), prompts.len());
    for (row, prompt) in rows.iter().zip(prompts) {
        assert_eq!(row["prompt"], prompt);
        let alone = ok(minimind(&[&["generate", "--model", p(&model), "--prompt", prompt], &greedy[..]].concat()));
        assert_eq!(row["text"].as_str().unwrap(), alone.trim_end_matches('\n'), "prompt {prompt}");
    }
    std::fs::write(&file, "{\"prompt\": \"a\"}\n{\"text\": 1}\n").unwrap();
    let err = fails(minimind(&["generate", "--model", p(&model), "--prompts", p(&file)]));
    assert!(err.contains("prompts.jsonl:2: expected {\"prompt\""), "{err}");
}

#[test]
fn bench_generate_and_serve_report_their_figures() {
    // Batch-1 decoding, fp32 and int8 (the tiny shape has whole int8 panels).
    for int8 in [false, true] {
        let mut args = vec!["--threads", "2", "bench", "generate", "--preset", "tiny", "--steps", "1"];
        args.extend(["--prompt-len", "8", "--new-tokens", "8"]);
        if int8 {
            args.extend(["--int8", "--kv-f16"]);
        }
        let out = ok(minimind(&args));
        let rate: f64 = out.lines().last().unwrap().split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(out.contains("Generate throughput") && rate > 0.0, "{out}");
        assert_eq!(out.contains("int8 weights"), int8, "{out}");
        assert_eq!(out.contains("f16 KV cache"), int8, "{out}");
    }
    // The serving engine under 1 and 2 clients: one line per client count with its ratio to one client,
    // prompt tokens, first-token latency and memory.
    let out = ok(minimind(&[
        "--threads",
        "2",
        "bench",
        "serve",
        "--preset",
        "tiny",
        "--clients",
        "1,2",
        "--seconds",
        "1",
        "--prompt-len",
        "8",
        "--new-tokens",
        "8",
        "--rounds",
        "2",
    ]));
    // Two rounds of two runs, then each count's median over the rounds.
    let (runs, medians) = out.split_once("medians over 2 rounds:").unwrap_or_else(|| panic!("{out}"));
    let lines: Vec<&str> = runs.lines().filter(|l| l.contains("clients:")).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].contains("(1.00× one client") && lines[1].contains("prompt tokens/s"), "{out}");
    assert!(lines[2].contains("(1.00× one client") && runs.contains("round 2 of 2"), "{out}");
    for line in lines {
        let rate: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(rate > 0.0 && line.contains("first token p50") && line.contains("peak RSS"), "{line}");
    }
    assert!(out.contains("a tenth into the run"), "{out}");
    let medians: Vec<&str> = medians.lines().filter(|l| l.contains("clients:")).collect();
    assert_eq!(medians.len(), 2, "{out}");
    assert!(medians[0].contains("1.00× one client (rounds: 1.00, 1.00)"), "{out}");
    // Decode attention alone, in each cache format: a time per step and the rate keys and values
    // are read at.
    for (flag, label) in
        [(None, "f32 KV cache"), (Some("--kv-f16"), "f16 KV cache"), (Some("--kv-int8"), "int8 KV cache")]
    {
        let mut args = vec!["--threads", "2", "bench", "attention", "--preset", "tiny", "--batch-size", "3"];
        args.extend(["--seq-len", "21", "--steps", "2"]);
        args.extend(flag);
        let out = ok(minimind(&args));
        let ms: f64 = out.split(" ms a step").next().and_then(|s| s.rsplit(' ').next()).unwrap().parse().unwrap();
        assert!(out.contains(label) && out.contains("3 rows × 21 cached positions") && ms > 0.0, "{out}");
    }
}
