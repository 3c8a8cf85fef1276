//! `minimind demo`: the whole path on the bundled Song ci corpus in a few minutes on a laptop CPU —
//! train a tokenizer, pretrain the `tiny` model, then sample a few poems.

use crate::checkpoint;
use crate::cli::{encode_prompt, stream_completion, PretrainArgs, TrainerArgs};
use crate::generate::SamplingParams;
use crate::params::InitScheme;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

/// The bundled corpus, found next to the sources this binary was built from.
pub const DEMO_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/songci_demo.jsonl");

/// Prompts in the corpus's own form: a tune title (词牌), optionally with its author.
const PROMPTS: &[&str] = &["浣溪沙（", "水调歌头（苏轼）\n", "蝶恋花", "念奴娇（辛弃疾）\n"];

#[derive(Args)]
pub struct DemoArgs {
    /// Corpus: JSON Lines with a "text" field.
    #[arg(long, default_value = DEMO_DATA)]
    pub data: PathBuf,
    /// Where the tokenizer, model, metrics and chart go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Optimizer steps of pretraining.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Stop pretraining early (and keep the model) after this many minutes.
    #[arg(long, default_value_t = 6.5)]
    pub max_minutes: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    if !args.data.exists() {
        bail!("demo corpus {} not found (run from a checkout of the repository, or pass --data)", args.data.display());
    }
    let start = Instant::now();
    let tokenizer_dir = args.out.join("tokenizer");
    let model_dir = args.out.join("model");
    println!("[1/3] training a 6400-token byte-level BPE tokenizer on {}", args.data.display());
    crate::train_tokenizer::train_tokenizer(&args.data, 6400, &tokenizer_dir, false)?;
    println!("      done in {:.1}s → {}", start.elapsed().as_secs_f64(), tokenizer_dir.display());

    println!("[2/3] pretraining the `tiny` model for {} steps (≤ {} min)", args.steps, args.max_minutes);
    let pretrain_args = PretrainArgs {
        data: args.data.clone(),
        tokenizer: tokenizer_dir.clone(),
        preset: "tiny".into(),
        config: None,
        init: InitScheme::Minimind2,
        no_wrap: false,
        train: TrainerArgs {
            out: model_dir.clone(),
            epochs: Some(1),
            batch_size: Some(16),
            accumulation_steps: Some(1),
            lr: Some(3e-3),
            max_seq_len: Some(128),
            grad_clip: 1.0,
            weight_decay: 0.01,
            save_every: 100,
            seed: args.seed,
            max_steps: Some(args.steps),
            max_minutes: Some(args.max_minutes),
            device: "cpu".into(),
            ..Default::default()
        },
    };
    let summary = crate::cli::train::pretrain(&pretrain_args)?;
    println!(
        "      {} steps in {:.0}s, loss {:.3} → {:.3}, {:.0} tokens/s",
        summary.steps, summary.elapsed_s, summary.first_loss, summary.final_loss, summary.tokens_per_sec
    );

    println!("[3/3] sampling (temperature 0.8, top-p 0.9)");
    let (model, _) = checkpoint::load_model(&model_dir, &Device::Cpu, DType::F32, false)?;
    let tokenizer = Tokenizer::load(&model_dir)?;
    let mut stdout = std::io::stdout();
    for (i, prompt) in PROMPTS.iter().enumerate() {
        println!("\n--- sample {} ---", i + 1);
        print!("{prompt}");
        let ids = encode_prompt(&tokenizer, prompt, false)?;
        let sampling = SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.9,
            repetition_penalty: 1.0,
            seed: args.seed + i as u64,
        };
        stream_completion(&model_dir, &model, &tokenizer, &ids, 120, sampling, &mut stdout)?;
        println!();
    }
    println!("\nDemo finished in {:.0}s.", start.elapsed().as_secs_f64());
    println!("  model folder : {}", model_dir.display());
    println!("  metrics      : {}", model_dir.join("metrics.jsonl").display());
    println!("  loss chart   : {}", model_dir.join("loss.png").display());
    println!("Try: cargo run --release -- generate --model {} --prompt \"临江仙（\"", model_dir.display());
    Ok(())
}
