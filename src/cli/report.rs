//! `minimind report RUN_DIR… --out report.html`: a self-contained page about one or several runs.

use crate::infer::LoadOptions;
use crate::report::{render, sample_answers, RunReport, SAMPLE_PROMPTS};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReportArgs {
    /// Run folders (each with metrics.jsonl; a model folder also gets sample answers).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// A prompt every model answers on the page (repeatable).
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Continue the prompts as plain text instead of through the chat template (pretrained models).
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// No sample answers (no model is loaded).
    #[arg(long)]
    pub no_samples: bool,
    #[arg(long, default_value = "minimind training report")]
    pub title: String,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let prompts: Vec<String> =
        if a.prompts.is_empty() { SAMPLE_PROMPTS.iter().map(|s| s.to_string()).collect() } else { a.prompts.clone() };
    let mut runs = Vec::new();
    for dir in &a.runs {
        let mut run = RunReport::read(dir)?;
        if !a.no_samples && dir.join("model.safetensors").exists() {
            // A folder that is not a plain language model (a reward model's extra head) gets no answers.
            match answers(dir, &prompts, !a.raw, a.max_new_tokens) {
                Ok(samples) => run.samples = samples,
                Err(e) => eprintln!("note: no sample answers for {}: {e:#}", dir.display()),
            }
        }
        runs.push(run);
    }
    if runs.is_empty() {
        bail!("minimind report needs at least one run folder");
    }
    std::fs::write(&a.out, render(&runs, &a.title)).with_context(|| format!("writing {}", a.out.display()))?;
    println!("report on {} run(s) written to {}", runs.len(), a.out.display());
    Ok(())
}

/// Greedy answers of the model in `dir` to `prompts`.
fn answers(
    dir: &std::path::Path,
    prompts: &[String],
    chat: bool,
    max_new_tokens: usize,
) -> Result<Vec<(String, String)>> {
    let (model, tokenizer) = crate::infer::load(dir, &candle_core::Device::Cpu, &LoadOptions::default())?;
    sample_answers(&model, &tokenizer, prompts, chat, max_new_tokens)
}
