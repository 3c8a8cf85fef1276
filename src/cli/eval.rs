//! `minimind eval`: perplexity and bits per byte on held-out rows, or multiple-choice accuracy.

use super::ModelArgs;
use crate::eval::{self, ChoiceOptions, ChoiceResult, ChoiceScoring, EvalFormat};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON Lines file of `{"text": …}` rows (or of conversations, with --sft): perplexity.
    #[arg(long, conflicts_with_all = ["task", "answers"])]
    pub data: Option<PathBuf>,
    /// The rows are SFT conversations: score only the assistant turns (the SFT loss).
    #[arg(long)]
    pub sft: bool,
    /// A multiple-choice benchmark: a C-Eval/CMMLU CSV file, a JSONL file, or a folder of them (the
    /// official dev/ val/ test/ layout included): accuracy per subject and overall.
    #[arg(long, conflicts_with = "answers")]
    pub task: Option<PathBuf>,
    /// Prompts with a ground truth (`minimind grpo`'s rows, `"gt"`): the share of greedy answers that
    /// match it (the last number for a numeric gt).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Longest answer, with --answers.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// The benchmark folder's split to score: val (default when present) or test.
    #[arg(long, requires = "task")]
    pub split: Option<String>,
    /// Few-shot examples per prompt, from the subject's dev rows.
    #[arg(long, default_value_t = 0, requires = "task")]
    pub shots: usize,
    /// Score the choice letter (letter) or each choice's text, length-normalized (text).
    #[arg(long, default_value_t = ChoiceScoring::Letter, requires = "task")]
    pub scoring: ChoiceScoring,
    /// Wrap each question in the model's chat template (for SFT models).
    #[arg(long, requires = "task")]
    pub chat: bool,
    /// Print the first question's prompt as the model sees it, then score.
    #[arg(long, requires = "task")]
    pub show_prompt: bool,
    /// Also write the results as JSON (the run report reads `eval*.json` in a run folder).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub max_seq_len: usize,
    /// Rows (perplexity, default 4), questions (--task, default 4) or prompts decoded together
    /// (--answers, default 16) per pass.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Evaluate only the first N rows (of each subject, with --task).
    #[arg(long)]
    pub rows: Option<usize>,
}

pub fn run(a: &EvalArgs) -> Result<()> {
    match (&a.data, &a.task, &a.answers) {
        (Some(data), None, None) => perplexity(a, data),
        (None, Some(task), None) => benchmark(a, task),
        (None, None, Some(rows)) => answers(a, rows),
        _ => {
            bail!("minimind eval needs one of --data FILE (perplexity), --task BENCHMARK or --answers FILE (accuracy)")
        }
    }
}

fn answers(a: &EvalArgs, rows: &std::path::Path) -> Result<()> {
    let (model, tokenizer) = a.model.load()?;
    let r = eval::answer_accuracy(&model, &tokenizer, rows, a.max_new_tokens, a.batch_size.unwrap_or(16), a.rows)?;
    for shown in r.answers.iter().take(3) {
        println!(
            "{} → {:?} (gt {}, {})",
            shown.prompt,
            shown.answer,
            shown.gt,
            if shown.correct { "right" } else { "wrong" }
        );
    }
    println!(
        "answer accuracy {:.4} ({} of {} greedy answers match gt{})",
        r.accuracy(),
        r.correct(),
        r.answers.len(),
        if model.is_int8() { ", int8 weights" } else { "" }
    );
    if let Some(path) = &a.json {
        let json = serde_json::json!({"kind": "answers", "data": rows, "model": a.model.model,
            "accuracy": r.accuracy(), "correct": r.correct(), "rows": r.answers.len(), "answers": r.answers});
        write_json(path, &json)?;
    }
    Ok(())
}

fn perplexity(a: &EvalArgs, data: &std::path::Path) -> Result<()> {
    let (model, tokenizer) = a.model.load()?;
    let format = if a.sft { EvalFormat::Sft } else { EvalFormat::Text };
    let p = eval::evaluate(&model, &tokenizer, data, format, a.max_seq_len, a.batch_size.unwrap_or(4), a.rows)?;
    println!(
        "perplexity {:.4} (mean NLL {:.5} nats/token over {} tokens of {} rows{}), {:.4} bits per byte ({} bytes)",
        p.value(),
        p.nll,
        p.tokens,
        p.rows,
        if model.is_int8() { ", int8 weights" } else { "" },
        p.bits_per_byte(),
        p.bytes
    );
    if let Some(path) = &a.json {
        let json = serde_json::json!({"kind": "perplexity", "data": data, "perplexity": p.value(), "nll": p.nll,
            "bits_per_byte": p.bits_per_byte(), "tokens": p.tokens, "rows": p.rows, "model": a.model.model});
        write_json(path, &json)?;
    }
    Ok(())
}

fn benchmark(a: &EvalArgs, task: &std::path::Path) -> Result<()> {
    let subjects = eval::load_benchmark(task, a.split.as_deref())?;
    let (model, tokenizer) = a.model.load()?;
    let options = ChoiceOptions {
        shots: a.shots,
        scoring: a.scoring,
        chat: a.chat,
        max_seq_len: a.max_seq_len,
        batch: a.batch_size.unwrap_or(4),
        max_questions: a.rows,
    };
    if a.show_prompt {
        let subject = &subjects[0];
        let q = subject.questions.first().with_context(|| format!("subject {} has no questions", subject.name))?;
        println!("{}\n---", eval::render_prompt_for(subject, a.shots, q));
    }
    let total: usize = subjects.iter().map(|s| a.rows.map_or(s.questions.len(), |n| n.min(s.questions.len()))).sum();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("scoring {bar:30} {pos}/{len} questions eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let result = eval::score_choices(&model, &tokenizer, &subjects, &options, |done| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64)
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_result(&result, model.is_int8());
    if let Some(path) = &a.json {
        let mut json = serde_json::to_value(&result)?;
        json["kind"] = "choice".into();
        json["task"] = serde_json::json!(task);
        json["model"] = serde_json::json!(a.model.model);
        json["accuracy"] = result.accuracy().into();
        json["chance"] = result.chance().into();
        write_json(path, &json)?;
    }
    Ok(())
}

fn print_result(r: &ChoiceResult, int8: bool) {
    let width = r.subjects.iter().map(|s| s.name.chars().count()).max().unwrap_or(7).max(7);
    println!("{:<width$}  {:>9}  {:>8}  {:>6}", "subject", "questions", "accuracy", "chance");
    for s in &r.subjects {
        println!("{:<width$}  {:>9}  {:>8.4}  {:>6.4}", s.name, s.total, s.accuracy(), s.chance);
    }
    println!(
        "accuracy {:.4} over {} questions ({} subjects, mean over subjects {:.4}); chance {:.4}; {}-shot, {} scoring{}{}",
        r.accuracy(),
        r.questions(),
        r.subjects.len(),
        r.subject_mean(),
        r.chance(),
        r.shots,
        r.scoring,
        if r.shortened > 0 { format!("; {} prompts shortened to fit --max-seq-len", r.shortened) } else { String::new() },
        if int8 { "; int8 weights" } else { "" }
    );
}

pub(super) fn write_json(path: &std::path::Path, json: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(json)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}
