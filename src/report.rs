//! `minimind report`: one self-contained HTML page about one or several training runs — what a person
//! screenshots to share a run. Per run: the stage, its data and settings (`run.json`, written by the
//! trainer), the model's shape, training figures (steps, time,
//! tokens, tokens/s, first and last loss), `eval --json` results found in the run folder (`eval*.json`),
//! and greedy answers to fixed prompts; charts (loss, learning rate, and every stage figure such as a
//! reward) drawn as inline SVG with one line per run, so several runs compare on the same axes. No
//! scripts, styles or images are fetched: the file opens anywhere.

use crate::train::metrics::{read_metrics, StepMetrics};
use crate::{MiniMindForCausalLM, Tokenizer};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// The prompts a report (and TensorBoard, at checkpoints) shows answers to unless told others.
pub const SAMPLE_PROMPTS: [&str; 3] = ["你好，请介绍一下你自己。", "What is 7 times 8?", "浣溪沙（"];

/// Greedy answers of `model` to `prompts` (through the chat template with `chat`, else continued as
/// plain text), decoded together.
pub fn sample_answers(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    prompts: &[String],
    chat: bool,
    max_new_tokens: usize,
) -> Result<Vec<(String, String)>> {
    let ids = prompts
        .iter()
        .map(|p| crate::infer::generate::encode_prompt(tokenizer, p, chat, None))
        .collect::<Result<Vec<_>>>()?;
    let texts = crate::infer::generate::greedy_answers(model, tokenizer, &ids, max_new_tokens, prompts.len())?;
    Ok(prompts.iter().cloned().zip(texts).collect())
}

/// What the page shows of one run folder.
pub struct RunReport {
    pub dir: PathBuf,
    pub metrics: Vec<StepMetrics>,
    /// `config.json`, when the folder is a model folder.
    pub config: Option<serde_json::Value>,
    /// `run.json`: the stage, its data and settings, as the trainer recorded them.
    pub run: Option<serde_json::Value>,
    /// Each `eval*.json`: its file name and content.
    pub evals: Vec<(String, serde_json::Value)>,
    /// (prompt, greedy answer) pairs.
    pub samples: Vec<(String, String)>,
}

impl RunReport {
    /// Reads a run folder (its `metrics.jsonl` is required); samples are added by the caller.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if !path.exists() {
            bail!("{}: not a run folder (no metrics.jsonl)", dir.display());
        }
        let metrics = read_metrics(&path)?;
        let json = |name: &str| -> Result<Option<serde_json::Value>> {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}/{name}", dir.display()))?)),
                Err(_) => Ok(None),
            }
        };
        let (config, run) = (json("config.json")?, json("run.json")?);
        let mut evals = Vec::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name.starts_with("eval") && name.ends_with(".json")
            })
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p)?;
            let value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
            evals.push((p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), value));
        }
        Ok(Self { dir: dir.to_path_buf(), metrics, config, run, evals, samples: Vec::new() })
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map_or_else(|| self.dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }
}

const COLORS: [&str; 6] = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

/// The whole page.
pub fn render(runs: &[RunReport], title: &str) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    html += &summary_table(runs);
    let mut charts = vec![("loss", "loss".to_string()), ("lr", "learning rate".to_string())];
    let extra: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.iter().flat_map(|m| m.extra.keys())).collect();
    charts.extend(extra.into_iter().map(|k| (k.as_str(), k.replace('_', " "))));
    html += "<h2>Curves</h2><div class=\"charts\">";
    for (key, label) in &charts {
        let series: Vec<Series> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (r.name(), COLORS[i % COLORS.len()], r.metrics.iter().filter_map(|m| point(m, key)).collect())
            })
            .collect();
        html += &line_chart(label, &series);
    }
    html += "</div>";
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(html, "<h2 style=\"color:{}\">{}</h2>", COLORS[i % COLORS.len()], escape(&run.name()));
        html += &evals_section(run);
        if !run.samples.is_empty() {
            html += "<h3>Sample answers (greedy)</h3><table><tr><th>prompt</th><th>answer</th></tr>";
            for (prompt, answer) in &run.samples {
                let _ =
                    write!(html, "<tr><td>{}</td><td class=\"answer\">{}</td></tr>", escape(prompt), escape(answer));
            }
            html += "</table>";
        }
    }
    html + "</body></html>\n"
}

fn point(m: &StepMetrics, key: &str) -> Option<(f64, f64)> {
    let y = match key {
        "loss" => m.loss,
        "lr" => m.lr,
        other => *m.extra.get(other)?,
    };
    y.is_finite().then_some((m.step as f64, y))
}

/// One column per run: shape, data and training figures.
fn summary_table(runs: &[RunReport]) -> String {
    let mut rows: Vec<(&str, Vec<String>)> = Vec::new();
    let cfg = |r: &RunReport, k: &str| r.config.as_ref().and_then(|c| c.get(k)).map_or("–".into(), |v| v.to_string());
    let last = |r: &RunReport| r.metrics.last().cloned();
    let run = |r: &RunReport, k: &str| {
        r.run.as_ref().and_then(|c| c.get(k)).filter(|v| !v.is_null()).map_or("–".into(), |v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    rows.push(("folder", runs.iter().map(|r| r.dir.display().to_string()).collect()));
    rows.push(("stage", runs.iter().map(|r| run(r, "stage")).collect()));
    rows.push(("data", runs.iter().map(|r| format!("{} ({} rows)", run(r, "data"), run(r, "rows"))).collect()));
    rows.push((
        "batch × accumulation × processes",
        runs.iter()
            .map(|r| format!("{} × {} × {}", run(r, "batch_size"), run(r, "accumulation_steps"), run(r, "processes")))
            .collect(),
    ));
    rows.push((
        "lr (schedule)",
        runs.iter().map(|r| format!("{} ({})", run(r, "lr"), run(r, "lr_schedule"))).collect(),
    ));
    rows.push((
        "max seq len, precision",
        runs.iter().map(|r| format!("{}, {}", run(r, "max_seq_len"), run(r, "precision"))).collect(),
    ));
    rows.push((
        "hidden × layers",
        runs.iter().map(|r| format!("{} × {}", cfg(r, "hidden_size"), cfg(r, "num_hidden_layers"))).collect(),
    ));
    rows.push(("vocabulary", runs.iter().map(|r| cfg(r, "vocab_size")).collect()));
    rows.push(("MoE", runs.iter().map(|r| cfg(r, "use_moe")).collect()));
    rows.push(("steps", runs.iter().map(|r| last(r).map_or("–".into(), |m| m.step.to_string())).collect()));
    rows.push(("epochs", runs.iter().map(|r| last(r).map_or("–".into(), |m| (m.epoch + 1).to_string())).collect()));
    // Training time as the sum of the steps' own durations, right across resumed sessions.
    let seconds = |r: &RunReport| r.metrics.iter().map(|m| m.tokens as f64 / m.tokens_per_sec.max(1e-9)).sum::<f64>();
    rows.push(("time", runs.iter().map(|r| format!("{:.1} s", seconds(r))).collect()));
    let tokens = |r: &RunReport| r.metrics.iter().map(|m| m.tokens).sum::<usize>();
    rows.push(("tokens", runs.iter().map(|r| tokens(r).to_string()).collect()));
    rows.push(("tokens/s", runs.iter().map(|r| format!("{:.0}", tokens(r) as f64 / seconds(r).max(1e-9))).collect()));
    let first_loss = |r: &RunReport| r.metrics.first().map_or("–".into(), |m| format!("{:.4}", m.loss));
    rows.push((
        "loss (first → last)",
        runs.iter()
            .map(|r| format!("{} → {}", first_loss(r), last(r).map_or("–".into(), |m| format!("{:.4}", m.loss))))
            .collect(),
    ));
    let mut html = String::from("<table><tr><th></th>");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(html, "<th style=\"color:{}\">{}</th>", COLORS[i % COLORS.len()], escape(&r.name()));
    }
    html += "</tr>";
    for (label, cells) in rows {
        let _ = write!(html, "<tr><th>{label}</th>");
        for c in cells {
            let _ = write!(html, "<td>{}</td>", escape(&c));
        }
        html += "</tr>";
    }
    html + "</table>"
}

/// The `eval --json` results of a run: accuracy (per subject for benchmarks) or perplexity.
fn evals_section(run: &RunReport) -> String {
    if run.evals.is_empty() {
        return String::new();
    }
    let mut html = String::from("<h3>Evaluation</h3><table><tr><th>file</th><th>what</th><th>result</th></tr>");
    for (file, v) in &run.evals {
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let what = v.get("task").or(v.get("data")).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
        let result = match v.get("kind").and_then(serde_json::Value::as_str) {
            Some("perplexity") => format!(
                "perplexity {:.3}, {:.4} bits per byte",
                num("perplexity").unwrap_or(f64::NAN),
                num("bits_per_byte").unwrap_or(f64::NAN)
            ),
            Some("choice") => {
                let subjects = v["subjects"].as_array().cloned().unwrap_or_default();
                let per: Vec<String> = subjects
                    .iter()
                    .map(|s| {
                        let (c, t) = (s["correct"].as_f64().unwrap_or(0.0), s["total"].as_f64().unwrap_or(0.0));
                        format!("{} {:.1} %", s["name"].as_str().unwrap_or("?"), 100.0 * c / t.max(1.0))
                    })
                    .collect();
                format!(
                    "accuracy {:.1} % (chance {:.1} %) — {}",
                    100.0 * num("accuracy").unwrap_or(f64::NAN),
                    100.0 * num("chance").unwrap_or(f64::NAN),
                    per.join(", ")
                )
            }
            Some("pairs") => format!(
                "preference accuracy {:.1} % ({} of {} pairs)",
                100.0 * num("accuracy").unwrap_or(f64::NAN),
                num("correct").unwrap_or(0.0),
                num("rows").unwrap_or(0.0)
            ),
            Some("answers") => format!(
                "answer accuracy {:.1} % ({} of {})",
                100.0 * num("accuracy").unwrap_or(f64::NAN),
                num("correct").unwrap_or(0.0),
                num("rows").unwrap_or(0.0)
            ),
            _ => "(unknown result kind)".into(),
        };
        let _ =
            write!(html, "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", escape(file), escape(&what), escape(&result));
    }
    html + "</table>"
}

/// One line of a chart: its name, its colour and its (x, y) points.
pub type Series<'a> = (String, &'a str, Vec<(f64, f64)>);

/// An SVG line chart: one polyline per series over shared axes, 5 ticks each way, a legend.
pub fn line_chart(title: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (440.0, 260.0, 62.0, 12.0, 28.0, 34.0);
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    if points.is_empty() {
        return String::new();
    }
    let span =
        |v: &mut dyn Iterator<Item = f64>| v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, mut x1) = span(&mut points.iter().map(|p| p.0));
    let (mut y0, mut y1) = span(&mut points.iter().map(|p| p.1));
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| top + (y1 - y) / (y1 - y0) * (h - top - bottom);
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\">\
         <text x=\"{}\" y=\"18\" class=\"title\">{}</text>",
        w / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let (fx, fy) = (x0 + (x1 - x0) * i as f64 / 4.0, y0 + (y1 - y0) * i as f64 / 4.0);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"ytick\">{}</text>\
             <text x=\"{x:.1}\" y=\"{}\" class=\"xtick\">{:.0}</text>",
            w - right,
            left - 4.0,
            sy(fy) + 4.0,
            tick(fy, y1 - y0),
            h - bottom + 16.0,
            fx,
            y = sy(fy),
            x = sx(fx)
        );
    }
    let _ = write!(svg, "<text x=\"{}\" y=\"{}\" class=\"xtick\">step</text>", w - right - 12.0, h - 4.0);
    for (i, (name, color, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" class=\"legend\" style=\"fill:{color}\">{}</text>",
            left + 6.0,
            top + 14.0 + 14.0 * i as f64,
            escape(name)
        );
    }
    svg + "</svg>"
}

/// A tick label with about three significant digits (0 for values tiny against the axis' `span`).
fn tick(v: f64, span: f64) -> String {
    let v = if v.abs() < span * 1e-6 { 0.0 } else { v };
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{:.3}", v).trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#111}h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:14px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}\
th{background:#f6f6f6}.answer{white-space:pre-wrap;max-width:640px}.charts{display:flex;flex-wrap:wrap;gap:12px}\
.chart{border:1px solid #eee;background:#fff}.chart text{font-size:11px;fill:#444}.chart .title{font-size:13px;text-anchor:middle;fill:#111}\
.chart .ytick{text-anchor:end}.chart .xtick{text-anchor:middle}.chart .grid{stroke:#eee}.chart .legend{font-size:12px}";
