//! `minimind demo`: the whole path on bundled data in a few minutes on a laptop CPU — train a
//! tokenizer, pretrain the `tiny` model on Song ci and sample poems, then fine-tune it on short
//! dialogues and chat with it.

use crate::infer::generate::{encode_prompt, stream_completion};
use crate::infer::SamplingParams;
use crate::model::params::InitScheme;
use crate::model::ModelConfig;
use crate::train::optim::LrSchedule;
use crate::train::{pretrain, sft, PretrainConfig, SftConfig, TrainConfig};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The bundled corpora, found next to the sources this binary was built from.
pub const DEMO_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/songci_demo.jsonl");
pub const DEMO_CHAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/chat_zh_en.jsonl");

/// Prompts in the corpus's own form: a tune title (词牌), optionally with its author.
const POEM_PROMPTS: &[&str] = &["浣溪沙（", "水调歌头（苏轼）\n", "蝶恋花", "念奴娇（辛弃疾）\n"];
const CHAT_PROMPTS: &[&str] = &["你好", "你是谁?", "What is AI?", "Do you like music?"];

#[derive(Args)]
pub struct DemoArgs {
    /// Pretraining corpus: JSON Lines with a "text" field.
    #[arg(long, default_value = DEMO_DATA)]
    pub data: PathBuf,
    /// Fine-tuning dialogues: JSON Lines with "conversations".
    #[arg(long, default_value = DEMO_CHAT)]
    pub chat_data: PathBuf,
    /// Where the tokenizer, models, metrics and charts go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Optimizer steps of pretraining.
    #[arg(long, default_value_t = 1200)]
    pub steps: usize,
    /// Optimizer steps of fine-tuning.
    #[arg(long, default_value_t = 400)]
    pub sft_steps: usize,
    /// Stop pretraining early (keeping the model) after this many minutes; fine-tuning gets half.
    #[arg(long, default_value_t = 6.0)]
    pub max_minutes: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Trainer settings of both acts: 16 rows of 128 tokens per step, the cosine schedule that starts
/// at `lr` (the rates were tuned with it).
fn trainer(out: &Path, steps: usize, lr: f64, minutes: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: Some(1),
        batch_size: Some(16),
        accumulation_steps: Some(1),
        lr: Some(lr),
        lr_schedule: Some(LrSchedule::Minimind3),
        max_seq_len: Some(128),
        seed,
        max_steps: Some(steps),
        max_minutes: Some(minutes),
        overwrite: true, // the demo's own folder, replaced on every run
        ..TrainConfig::new(out)
    }
}

/// Loads `dir` and streams a completion of each prompt.
fn sample(dir: &Path, prompts: &[&str], chat: bool, seed: u64) -> Result<()> {
    let (model, tokenizer) = crate::infer::load(dir, &Device::Cpu, &Default::default())?;
    let mut stdout = std::io::stdout();
    for (i, prompt) in prompts.iter().enumerate() {
        if chat {
            print!("\n> {prompt}\n");
        } else {
            print!("\n--- sample {} ---\n{prompt}", i + 1);
        }
        let ids = encode_prompt(&tokenizer, prompt, chat, None)?;
        let sampling =
            SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.9, repetition_penalty: 1.0, seed: seed + i as u64 };
        let max_new = if chat { 60 } else { 120 };
        stream_completion(dir, &model, &tokenizer, &ids, max_new, sampling, &mut stdout)?;
        println!();
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> Result<()> {
    for path in [&args.data, &args.chat_data] {
        if !path.exists() {
            bail!(
                "demo data {} not found (run from a checkout of the repository, or pass --data/--chat-data)",
                path.display()
            );
        }
    }
    let start = Instant::now();
    let (tokenizer_dir, model_dir, chat_dir) =
        (args.out.join("tokenizer"), args.out.join("model"), args.out.join("chat"));
    println!("[1/4] training a 6400-token byte-level BPE tokenizer on the poems and the dialogues");
    crate::data::train_tokenizer::train_tokenizer(
        &[args.data.clone(), args.chat_data.clone()],
        6400,
        &tokenizer_dir,
        false,
    )?;
    println!("      done in {:.1}s → {}", start.elapsed().as_secs_f64(), tokenizer_dir.display());

    println!(
        "[2/4] pretraining the `tiny` model on {} for {} steps (≤ {} min)",
        args.data.display(),
        args.steps,
        args.max_minutes
    );
    let s = pretrain(&PretrainConfig {
        data: args.data.clone(),
        tokenizer: tokenizer_dir.clone(),
        model: ModelConfig::preset("tiny")?,
        init: InitScheme::Minimind2,
        wrap: true,
        train: trainer(&model_dir, args.steps, 3e-3, args.max_minutes, args.seed),
    })?;
    println!(
        "      {} steps in {:.0}s, loss {:.3} → {:.3}, {:.0} tokens/s",
        s.steps, s.elapsed_s, s.first_loss, s.final_loss, s.tokens_per_sec
    );

    println!("[3/4] sampling poems (temperature 0.8, top-p 0.9)");
    sample(&model_dir, POEM_PROMPTS, false, args.seed)?;

    println!("\n[4/4] fine-tuning on {} for {} steps, then chatting", args.chat_data.display(), args.sft_steps);
    let s = sft(&SftConfig {
        model: model_dir.clone(),
        data: args.chat_data.clone(),
        train: trainer(&chat_dir, args.sft_steps, 1e-3, args.max_minutes / 2.0, args.seed),
    })?;
    println!("      {} steps in {:.0}s, loss {:.3} → {:.3}", s.steps, s.elapsed_s, s.first_loss, s.final_loss);
    sample(&chat_dir, CHAT_PROMPTS, true, args.seed)?;

    println!("\nDemo finished in {:.0}s.", start.elapsed().as_secs_f64());
    println!("  pretrained model : {} (metrics.jsonl, loss.png inside)", model_dir.display());
    println!("  chat model       : {} (metrics.jsonl, loss.png inside)", chat_dir.display());
    println!("Try: cargo run --release -- generate --model {} --prompt \"临江仙（\"", model_dir.display());
    println!("     cargo run --release -- generate --model {} --chat --prompt \"你好\"", chat_dir.display());
    Ok(())
}
