//! The whole path through the library alone, as a program that embeds minimind would run it:
//! train a tokenizer, pretrain a tiny model, fine-tune it on dialogues, then chat with it.
//!
//! ```bash
//! cargo run --release --example train_and_chat            # ≈ 2 minutes on a laptop CPU
//! cargo run --release --example train_and_chat -- /tmp/mm 300 100   # out dir, pretrain and SFT steps
//! ```

use anyhow::Result;
use candle_core::Device;
use minimind::data::tokenizer::ChatMessage;
use minimind::data::train_tokenizer::train_tokenizer;
use minimind::infer::{self, Sampler, SamplingParams};
use minimind::model::params::InitScheme;
use minimind::train::{self, PretrainConfig, SftConfig, TrainConfig};
use minimind::ModelConfig;
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(args.first().map_or("runs/example", String::as_str));
    let pretrain_steps: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let sft_steps: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let (poems, dialogues) = (data.join("songci_demo.jsonl"), data.join("chat_zh_en.jsonl"));

    // 1. A 6,400-token byte-level BPE tokenizer (MiniMind's recipe) on both corpora.
    let tokenizer_dir = out.join("tokenizer");
    train_tokenizer(&[poems.clone(), dialogues.clone()], 6400, &tokenizer_dir, false)?;

    // 2. Pretraining: the `tiny` preset from a random init, 16 rows of 128 tokens per step.
    let steps = |out: PathBuf, steps: usize, lr: f64| TrainConfig {
        max_steps: Some(steps),
        batch_size: Some(16),
        accumulation_steps: Some(1),
        max_seq_len: Some(128),
        lr: Some(lr),
        overwrite: true, // this example's own folders, replaced on every run
        ..TrainConfig::new(out)
    };
    let base = out.join("base");
    let s = train::pretrain(&PretrainConfig {
        data: poems,
        tokenizer: tokenizer_dir,
        model: ModelConfig::preset("tiny")?,
        init: InitScheme::Minimind2,
        wrap: true,
        train: steps(base.clone(), pretrain_steps, 3e-3),
    })?;
    println!("pretrained: loss {:.3} → {:.3} in {:.0} s", s.first_loss, s.final_loss, s.elapsed_s);

    // 3. SFT on the dialogues: chat template, loss on the assistant's answers only.
    let chat_dir = out.join("chat");
    let s = train::sft(&SftConfig { model: base, data: dialogues, train: steps(chat_dir.clone(), sft_steps, 1e-3) })?;
    println!("fine-tuned: loss {:.3} → {:.3} in {:.0} s", s.first_loss, s.final_loss, s.elapsed_s);

    // 4. A two-turn chat: the history goes back through the chat template each turn.
    let (model, tokenizer) = infer::load(&chat_dir, &Device::Cpu, &Default::default())?;
    let stops = tokenizer.stop_ids()?;
    let mut history = Vec::new();
    for question in ["你好", "What is AI?"] {
        history.push(ChatMessage::new("user", question));
        let prompt = tokenizer.encode(&tokenizer.render_chat(&history, true)?)?;
        let mut sampler = Sampler::new(SamplingParams { seed: 7, ..Default::default() })?;
        let answer = infer::generate(&model, &prompt, 60, &stops, &mut sampler, |_| Ok(true))?;
        let text = tokenizer.decode(&answer.tokens, true)?;
        println!("> {question}\n{text}");
        history.push(ChatMessage::new("assistant", &text));
    }
    Ok(())
}
