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

// ---- multiple-choice benchmarks ----

use minimind::eval::{load_benchmark, render_prompt_for, score_choices, ChoiceOptions, ChoiceScoring};

#[test]
fn benchmark_layouts_load_with_their_examples() {
    let root = fixture("choice");
    let subjects = load_benchmark(&root, None).unwrap();
    let names: Vec<&str> = subjects.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["colors", "numbers"]);
    let colors = &subjects[0];
    assert_eq!((colors.questions.len(), colors.dev.len()), (8, 2));
    // Quoted fields keep their comma and line break; answers are letters.
    assert_eq!(colors.questions[3].question, "Mix red and white, and you get which color?");
    assert_eq!(colors.questions[6].question, "What color is an orange?\n(the fruit)");
    assert_eq!(colors.questions[6].answer, 2);
    assert!(colors.questions[7].source.ends_with("colors_val.csv:10"), "{}", colors.questions[7].source);
    // CMMLU's header: an unnamed index column, capitalized names.
    assert_eq!(subjects[1].questions[1].choices, ["十", "二十四", "六", "八"]);
    assert_eq!(subjects[1].questions[1].answer, 1);
    // A file inside val/ finds its dev examples; JSONL groups by subject, letters or indices.
    let one = load_benchmark(&root.join("val/numbers_val.csv"), None).unwrap();
    assert_eq!((one.len(), one[0].dev.len()), (1, 2));
    let mixed = load_benchmark(&fixture("choice_mixed.jsonl"), None).unwrap();
    let shape: Vec<(&str, usize)> = mixed.iter().map(|s| (s.name.as_str(), s.questions.len())).collect();
    assert_eq!(shape, [("choice_mixed", 1), ("sums", 2)]);
    assert_eq!((mixed[1].questions[0].answer, mixed[1].questions[1].answer), (1, 0));
    assert!(load_benchmark(&root, Some("test")).unwrap_err().to_string().contains("no test/ folder"));
    // Files saved with a byte-order mark (as spreadsheet programs write them) load the same.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bom.csv"), "\u{feff}question,A,B,answer\nq,a,b,B\n").unwrap();
    let bom_jsonl = "\u{feff}{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n";
    std::fs::write(dir.path().join("bom.jsonl"), bom_jsonl).unwrap();
    let both = load_benchmark(dir.path(), None).unwrap();
    assert_eq!(both.iter().map(|s| s.questions.len()).sum::<usize>(), 2);
}

#[test]
fn bad_benchmark_rows_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str, wanted: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", load_benchmark(&path, None).unwrap_err());
        assert!(err.contains(&format!("{name}:")) && err.contains(wanted), "{err}");
    };
    check("letter.csv", "question,A,B,C,D,answer\nq1,a,b,c,d,A\nq2,a,b,c,d,E\n", "letter.csv:3");
    check("quoted.csv", "question,A,B,answer\nq1,a,b,B\n\"q2\nsecond line\",a,b,C\n", "quoted.csv:3");
    check("header.csv", "id,question,A,B,C,D\n0,q,a,b,c,d\n", "header.csv:1");
    check(
        "row.jsonl",
        "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": \"A\"}\n{\"question\": \"q\"}\n",
        "row.jsonl:2",
    );
    check("index.jsonl", "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}\n", "index.jsonl:1");
}

#[test]
fn few_shot_prompts_render_as_documented() {
    let subjects = load_benchmark(&fixture("choice"), None).unwrap();
    let colors = &subjects[0];
    let prompt = render_prompt_for(colors, 1, &colors.questions[0]);
    assert_eq!(
        prompt,
        "以下是关于colors的单项选择题，请直接给出正确答案的选项。\n\n\
         What color is the sky on a clear day?\nA. green\nB. blue\nC. red\nD. black\n答案：B\n\n\
         What color is grass?\nA. green\nB. blue\nC. red\nD. white\n答案："
    );
}

/// A model pretrained on the benchmark's answered prompts scores above chance from the CLI; a
/// random model scores near chance on the bundled 200-question arithmetic benchmark (its letters
/// balanced, so always picking one letter gives exactly 25 %).
#[test]
fn a_model_trained_on_the_answers_beats_chance_and_a_random_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let subjects = load_benchmark(&fixture("choice"), None).unwrap();
    let rows: String = subjects
        .iter()
        .flat_map(|s| s.questions.iter().map(move |q| (s, q)))
        .map(|(s, q)| {
            let text = render_prompt_for(s, 0, q) + &minimind::eval::benchmark::letter(q.answer).to_string();
            serde_json::json!({ "text": text }).to_string() + "\n"
        })
        .collect();
    let (data, config, trained) =
        (dir.path().join("train.jsonl"), dir.path().join("config.json"), dir.path().join("m"));
    std::fs::write(&data, rows).unwrap();
    std::fs::write(&config, micro_config(6400, 4, 2, 16).to_json().unwrap()).unwrap();
    let tokenizer = tokenizer_dir("v2");
    ok(minimind(&[
        "pretrain",
        "--data",
        p(&data),
        "--tokenizer",
        p(&tokenizer),
        "--config",
        p(&config),
        "--out",
        p(&trained),
        "--batch-size",
        "16",
        "--accumulation-steps",
        "1",
        "--lr",
        "3e-3",
        "--max-steps",
        "150",
        "--save-every",
        "0",
        "--max-seq-len",
        "128",
    ]));
    let json = dir.path().join("eval.json");
    let out = ok(minimind(&["eval", "--model", p(&trained), "--task", p(&fixture("choice")), "--json", p(&json)]));
    assert!(out.contains("chance 0.2500"), "{out}");
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(result["accuracy"].as_f64().unwrap() >= 0.75, "{out}");
    assert_eq!(result["subjects"].as_array().unwrap().len(), 2);
    // With int8 weights the trained model still knows its answers.
    let int8 = ok(minimind(&["eval", "--model", p(&trained), "--task", p(&fixture("choice")), "--int8"]));
    let accuracy: f64 = int8.lines().last().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accuracy >= 0.6 && int8.contains("int8 weights"), "{int8}");

    let t = minimind::Tokenizer::load(&tokenizer).unwrap();
    let arith =
        load_benchmark(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/arith_mc"), None).unwrap();
    for scoring in [ChoiceScoring::Letter, ChoiceScoring::Text] {
        let options = ChoiceOptions { scoring, batch: 8, ..ChoiceOptions::default() };
        let r = score_choices(&model(), &t, &arith, &options, |_| {}).unwrap();
        assert_eq!((r.questions(), r.chance()), (200, 0.25));
        assert!((0.15..=0.35).contains(&r.accuracy()), "{scoring}: {}", r.accuracy());
    }
}

/// Scores do not depend on the batch (rows are padded on the right, after their continuation), and a
/// prompt longer than the context drops its examples first.
#[test]
fn choice_scores_ignore_batching_and_long_prompts_shrink() {
    let t = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let subjects = load_benchmark(&fixture("choice"), None).unwrap();
    let run = |batch, shots, max_seq_len| {
        let o = ChoiceOptions { batch, shots, max_seq_len, ..ChoiceOptions::default() };
        score_choices(&model(), &t, &subjects, &o, |_| {}).unwrap()
    };
    let (one, many) = (run(1, 2, 512), run(5, 2, 512));
    let correct = |r: &minimind::eval::ChoiceResult| r.subjects.iter().map(|s| s.correct).collect::<Vec<_>>();
    assert_eq!(correct(&one), correct(&many));
    assert_eq!(one.shortened, 0);
    assert_eq!(run(3, 2, 40).shortened, 16);
    let err = score_choices(
        &model(),
        &t,
        &load_benchmark(&fixture("choice_mixed.jsonl"), None).unwrap(),
        &ChoiceOptions { shots: 1, ..ChoiceOptions::default() },
        |_| {},
    );
    assert!(err.unwrap_err().to_string().contains("no dev examples"));
}

/// `eval --answers`: greedy answers checked against each row's gt by GRPO's rule — a row whose gt is
/// the model's own answer counts as right, a different number as wrong; rows without gt are refused.
#[test]
fn answer_accuracy_checks_greedy_answers_against_gt() {
    let dir = tempfile::tempdir().unwrap();
    let base = micro_v2_folder(dir.path());
    let rows = dir.path().join("rows.jsonl");
    let row = |prompt: &str, gt: &str| serde_json::json!({"prompt": prompt, "gt": gt}).to_string() + "\n";
    std::fs::write(&rows, row("1 + 1 = ?", "2") + &row("你好", "x")).unwrap();
    let json = dir.path().join("answers.json");
    let args = ["eval", "--model", p(&base), "--answers", p(&rows), "--max-new-tokens", "6", "--json", p(&json)];
    ok(minimind(&args));
    let first: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let answer = first["answers"][1]["answer"].as_str().unwrap().to_string();
    assert!(!answer.trim().is_empty() && !answer.contains('\n'), "{answer:?}");
    // The same prompts, now with the model's own (greedy, so repeated) answer as the second gt.
    std::fs::write(&rows, row("1 + 1 = ?", "2") + &row("你好", &answer)).unwrap();
    let out = ok(minimind(&args));
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(again["answers"][1]["correct"], true, "{out}");
    assert_eq!(again["correct"].as_u64().unwrap(), 1 + u64::from(again["answers"][0]["correct"] == true));
    std::fs::write(&rows, row("1 + 1 = ?", "2") + "{\"prompt\": \"no answer\"}\n").unwrap();
    assert!(fails(minimind(&args)).contains("rows.jsonl:2"));
    // Without something to evaluate, the message names the three modes.
    let none = fails(minimind(&["eval", "--model", p(&base)]));
    assert!(none.contains("--data") && none.contains("--task") && none.contains("--answers"), "{none}");
}
