//! `minimind generate`: one prompt streamed to the terminal, or a JSON Lines file of prompts decoded
//! together by continuous batching.

use super::{checkpoint, ModelArgs, SamplingArgs, ThinkArgs};
use crate::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// Many prompts, JSON Lines of {"prompt": "…"}, decoded together by continuous batching; prints
    /// one JSON line per prompt ({"prompt", "text", "finish_reason"}) in the file's order.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// With --prompts: sequences decoded together.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Render the prompt as a user turn with the chat template (plus the generation prompt).
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub think: ThinkArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Also write the prompt's logits to this safetensors file (`logits` f32 [tokens, vocab] and
    /// `input_ids`), for parity checks against other implementations.
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
}

pub fn run(a: &GenerateArgs) -> Result<()> {
    let (model, tokenizer) = a.model.load()?;
    if a.think.value().is_some() && !a.chat {
        bail!("--think / --no-think apply to the chat template: add --chat");
    }
    if let Some(path) = &a.prompts {
        return generate_many(a, path, &model, &tokenizer);
    }
    let text = a.prompt.as_deref().context("--prompt or --prompts")?;
    let prompt = crate::infer::generate::encode_prompt(&tokenizer, text, a.chat, a.think.value())?;
    if let Some(path) = &a.logits_out {
        let ids = Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?;
        let logits = model.forward(&ids, None)?.squeeze(0)?.to_dtype(DType::F32)?;
        checkpoint::save_tensors(path, &[("logits".into(), logits), ("input_ids".into(), ids.squeeze(0)?)])?;
    }
    let mut stdout = std::io::stdout().lock();
    if !a.chat {
        write!(stdout, "{text}")?;
    }
    let sampling = a.sampling.params(0);
    crate::infer::generate::stream_completion(
        &a.model.model,
        &model,
        &tokenizer,
        &prompt,
        a.sampling.max_new_tokens,
        sampling,
        &mut stdout,
    )?;
    writeln!(stdout)?;
    Ok(())
}

/// `generate --prompts FILE`: every prompt of a JSON Lines file through the batching engine.
fn generate_many(
    a: &GenerateArgs,
    path: &Path,
    model: &crate::MiniMindForCausalLM,
    tokenizer: &Tokenizer,
) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line.trim_start_matches('\u{feff}'))
            .ok()
            .filter(|v: &serde_json::Value| v.get("prompt").is_some_and(serde_json::Value::is_string))
            .with_context(|| format!("{}:{}: expected {{\"prompt\": \"…\"}}", path.display(), i + 1))?;
        prompts.push(value["prompt"].as_str().unwrap_or_default().to_string());
    }
    let ids = prompts
        .iter()
        .map(|p| crate::infer::generate::encode_prompt(tokenizer, p, a.chat, a.think.value()))
        .collect::<Result<Vec<_>>>()?;
    let samplers =
        (0..ids.len()).map(|i| crate::infer::Sampler::new(a.sampling.params(i as u64))).collect::<Result<Vec<_>>>()?;
    let stops = tokenizer.stop_ids()?;
    let outputs = crate::infer::generate_batch(model, &ids, a.sampling.max_new_tokens, &stops, samplers, a.max_batch)?;
    let mut stdout = std::io::stdout().lock();
    for (prompt, generation) in prompts.iter().zip(outputs) {
        let text = tokenizer.decode(&generation.tokens, true)?;
        let finish = match generation.finish_reason {
            crate::infer::FinishReason::Length => "length",
            _ => "stop",
        };
        writeln!(stdout, "{}", serde_json::json!({"prompt": prompt, "text": text, "finish_reason": finish}))?;
    }
    Ok(())
}
