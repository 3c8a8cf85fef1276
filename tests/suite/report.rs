//! `minimind report`: one self-contained page comparing runs — their figures, one line per run in
//! every chart, evaluation results and greedy sample answers.

use crate::common::{fixture, micro_v2_folder, minimind, ok, p};

#[test]
fn a_report_compares_runs_with_charts_evals_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let base = micro_v2_folder(dir.path());
    let data = fixture("sft_zh_en_32.jsonl");
    let (fast, slow) = (dir.path().join("fast"), dir.path().join("slow"));
    for (out, lr) in [(&fast, "3e-3"), (&slow, "1e-4")] {
        let args = ["sft", "--model", p(&base), "--data", p(&data), "--out", p(out), "--batch-size", "4"];
        ok(minimind(&[&args[..], &["--max-seq-len", "64", "--max-steps", "6", "--lr", lr]].concat()));
    }
    let eval = fast.join("eval_choice.json");
    ok(minimind(&["eval", "--model", p(&fast), "--task", p(&fixture("choice")), "--json", p(&eval)]));
    let page = dir.path().join("report.html");
    let args = ["report", p(&fast), p(&slow), "--out", p(&page), "--prompt", "你好 <b>", "--max-new-tokens", "4"];
    let out = ok(minimind(&args));
    assert!(out.contains("2 run(s)"), "{out}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Every chart of a metric both runs log has a line per run: loss and lr at least.
    let charts = html.matches("<svg class=\"chart\"").count();
    assert!(charts >= 2 && html.matches("<polyline").count() >= 2 * charts - 1, "{charts} charts");
    assert!(html.contains(">fast<") && html.contains(">slow<") && html.contains("loss (first → last)"));
    // The trainer's record of each run: its stage, data and settings.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fast.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        (record["stage"].as_str(), record["rows"].as_u64(), record["lr"].as_f64()),
        (Some("sft"), Some(32), Some(3e-3))
    );
    assert!(html.contains("sft_zh_en_32.jsonl (32 rows)") && html.contains("0.0001 (minimind2)"), "the run records");
    assert!(html.contains("accuracy") && html.contains("chance 25.0 %") && html.contains("colors"));
    // The prompt is shown escaped, with each model's answer.
    assert_eq!(html.matches("你好 &lt;b&gt;").count(), 2);
    // Self-contained: nothing to fetch.
    for fetch in ["<script", "src=", "href=", "<link", "@import"] {
        assert!(!html.contains(fetch), "{fetch}");
    }
    let err = crate::common::fails(minimind(&["report", p(&base), "--out", p(&page)]));
    assert!(err.contains("no metrics.jsonl"), "{err}");
}
