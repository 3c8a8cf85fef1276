//! Command-line interface: one subcommand per job.

pub mod bench;
mod bench_attention;
mod bench_serve;
pub mod chat;
pub mod demo;
pub mod eval;
pub mod generate;
mod interop;
mod parity;
mod report;
pub mod train;

pub use interop::ExportFormat;
pub use train::{PretrainArgs, SftArgs, TrainerArgs};

use crate::data::tokenizer::Tokenizer;
use crate::data::train_tokenizer::TokenizerLayout;
use crate::infer::sampler::{SamplingParams, DEFAULT_MAX_NEW_TOKENS};
use crate::model::checkpoint;
use crate::model::config::ModelConfig;
use crate::model::Precision;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "minimind", version, about = "Train, fine-tune and run MiniMind-style small language models")]
pub struct Cli {
    /// CPU threads for tensor ops (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a tokenizer, pretrain a small model on the bundled Song ci corpus and sample from it.
    Demo(crate::cli::demo::DemoArgs),
    /// Train a byte-level BPE tokenizer on JSON Lines text (pretraining or SFT rows).
    TrainTokenizer(TrainTokenizerArgs),
    /// Pretrain a model from scratch on {"text": …} JSON Lines.
    Pretrain(PretrainArgs),
    /// Supervised fine-tuning on {"conversations": […]} JSON Lines, starting from a model folder.
    Sft(SftArgs),
    /// Direct preference optimization on {"chosen": […], "rejected": […]} pairs.
    Dpo(train::DpoArgs),
    /// Reinforcement learning with GRPO / CISPO: sampled answers to prompts, scored by rewards.
    Grpo(train::GrpoArgs),
    /// Reinforcement learning with PPO: a value head as the critic, GAE, clipped policy and value losses.
    Ppo(train::PpoArgs),
    /// Train a reward model (a scalar head on a model) from {"chosen", "rejected"} pairs.
    RewardModel(train::RewardModelArgs),
    /// Reasoning distillation: SFT on <think>…</think><answer>…</answer> answers, tags up-weighted.
    Reason(train::ReasonArgs),
    /// White-box distillation: the student learns the teacher's distributions on SFT data.
    Distill(train::DistillArgs),
    /// Black-box distillation data: a teacher answers prompts, written as SFT rows.
    GenerateDataset(GenerateDatasetArgs),
    /// Train LoRA adapters on a frozen model (SFT data); `lora merge --model --lora --out` folds an
    /// adapter into a plain model folder.
    Lora(train::LoraArgs),
    /// Generate text from a model folder, streaming tokens to stdout.
    Generate(generate::GenerateArgs),
    /// Chat in the terminal: streaming answers, history, /reset, /exit.
    Chat(chat::ChatArgs),
    /// Serve models over an OpenAI-compatible HTTP API, with a web chat page at /.
    Serve(ServeArgs),
    /// Export a model folder for other tools: hf (transformers' native architecture: Llama for
    /// MiniMind2, Qwen3 / Qwen3-MoE for minimind-3), hf-llama, or gguf for llama.cpp.
    Export {
        /// The model folder.
        model: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Hf)]
        format: ExportFormat,
        #[arg(long)]
        out: PathBuf,
        /// f32, f16, bf16 (hf-llama) or f32, f16, q8_0 (gguf).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// A LoRA adapter folder to merge into the model before exporting.
        #[arg(long)]
        lora: Option<PathBuf>,
    },
    /// Import a checkpoint as a model folder: a MiniMind `.pth` (MiniMind2 or MiniMind2-classic), an HF
    /// folder (MiniMind or Llama; safetensors or pytorch_model.bin), or a LoRA `.pth` (with --base).
    Import {
        /// The checkpoint file (`.pth`, `.bin`, `.safetensors`) or HF folder.
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Tokenizer folder, or a bundled one: minimind2, minimind2-classic. Default: the source's
        /// folder, else MiniMind's tokenizer of the checkpoint's generation.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// A config.json giving the shape (default: the folder's, else read off the tensors).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Query heads when the shape is read off the tensors (MiniMind's default: 8).
        #[arg(long)]
        heads: Option<usize>,
        /// Base model folder of a LoRA checkpoint; the adapter is written to --out.
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Perplexity and bits per byte on held-out rows, or accuracy on a multiple-choice benchmark
    /// (C-Eval / CMMLU CSV or JSONL) with --task.
    Eval(eval::EvalArgs),
    /// Measure training, forward or decoding throughput on synthetic tokens.
    Bench(crate::cli::bench::BenchArgs),
    /// One self-contained HTML page about one or several runs: figures, curves, evaluations, answers.
    Report(report::ReportArgs),
    /// Redraw the loss/lr chart of a run from its metrics.jsonl.
    Chart {
        /// A run folder (containing metrics.jsonl) or a metrics.jsonl file.
        path: PathBuf,
        /// Output PNG (default: loss.png next to metrics.jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a model config (preset, config.json or model folder) and its parameter count.
    Info {
        #[arg(long, conflicts_with = "config")]
        preset: Option<String>,
        /// config.json or a model folder.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct TrainTokenizerArgs {
    /// JSON Lines of {"text": …} or {"conversations": […]} rows; repeat for several files.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, default_value_t = 6400)]
    pub vocab_size: usize,
    #[arg(long)]
    pub out: PathBuf,
    /// Skip malformed lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Reserved tokens and chat template: minimind2 (3 specials) or minimind3 (36 reserved tokens,
    /// tool and think tags, the Qwen3-style template with tools and the thinking switch).
    #[arg(long, default_value_t = TokenizerLayout::Minimind2)]
    pub layout: TokenizerLayout,
}

#[derive(Args)]
pub struct GenerateDatasetArgs {
    /// The teacher model folder.
    #[arg(long)]
    pub teacher: PathBuf,
    /// JSON Lines of {"prompt": "…"} or {"conversations": […]} (answered after the last user turn).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output SFT JSON Lines.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn generate_dataset_cmd(a: &GenerateDatasetArgs) -> Result<()> {
    let (teacher, tokenizer) = crate::infer::load(&a.teacher, &parse_device(&a.device)?, &Default::default())?;
    let (sampling, max_new) = (a.sampling.params(0), a.sampling.max_new_tokens);
    let n = crate::train::distill::generate_dataset(&teacher, &tokenizer, &a.prompts, &a.out, max_new, sampling)?;
    println!("{n} teacher answers written to {}", a.out.display());
    Ok(())
}

fn merge_lora(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    let model = crate::model::lora::load_merged(base, Some(adapter), &Device::Cpu)?;
    checkpoint::save_model(out, &model)?;
    checkpoint::copy_tokenizer_files(base, out)?;
    println!("merged {} into {} → {}", adapter.display(), base.display(), out.display());
    Ok(())
}

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder(s) to serve; the folder name is the model id. Repeat for several.
    #[arg(long, required = true)]
    pub model: Vec<PathBuf>,
    /// A LoRA adapter applied to the first model.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8998)]
    pub port: u16,
    /// Requests that may wait for a free KV slot before new ones are refused (503).
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests decoded together (continuous batching): KV slots per model.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// KV cache positions per model, shared evenly by the slots (each holds a prompt and its answer;
    /// default: 2048 per slot, at most the model's context).
    #[arg(long)]
    pub kv_cache_tokens: Option<usize>,
    /// Serve with int8 weights (faster decoding on CPU).
    #[arg(long)]
    pub int8: bool,
    /// Cache keys and values in f16 (CPU, fp32 activations): half the KV memory per slot and half
    /// the bytes a decode step streams through attention (llama.cpp's default cache type).
    #[arg(long, conflicts_with = "kv_int8")]
    pub kv_f16: bool,
    /// Cache keys and values as int8 rows with a scale each (CPU, fp32 activations): half of f16's
    /// memory and traffic (as llama.cpp's q8_0 cache type).
    #[arg(long)]
    pub kv_int8: bool,
    /// Names clients may use for the first model (e.g. `minimind`), as vLLM's flag: the first is the
    /// id `/v1/models` lists. Default: the folder name.
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// YaRN RoPE scaling for long prompts (minimind-3's inference_rope_scaling).
    #[arg(long)]
    pub rope_scaling: bool,
    /// fp32, or bf16 weights and activations.
    #[arg(long, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// End a request this many seconds after it arrived: with an error while it waits for a slot,
    /// with its answer so far (finish_reason "length") while it generates.
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// Require `Authorization: Bearer KEY` on the API (default: $MINIMIND_API_KEY when set).
    #[arg(long, env = "MINIMIND_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Append the web page's side-by-side votes (compare mode) to this JSON Lines file as DPO pairs.
    #[arg(long)]
    pub votes: Option<PathBuf>,
}

fn serve_cmd(a: &ServeArgs) -> Result<()> {
    let mut models = Vec::new();
    for (i, dir) in a.model.iter().enumerate() {
        let lora = if i == 0 { a.lora.clone() } else { None };
        let args = ModelArgs {
            model: dir.clone(),
            lora,
            device: a.device.clone(),
            int8: a.int8,
            kv_f16: a.kv_f16,
            kv_int8: a.kv_int8,
            rope_scaling: a.rope_scaling,
            dtype: a.dtype,
        };
        let (model, tokenizer) = args.load()?;
        let folder = dir.file_name().map_or_else(|| format!("model-{i}"), |n| n.to_string_lossy().to_string());
        let (id, aliases) = match (i, a.served_model_name.split_first()) {
            (0, Some((first, rest))) => (first.clone(), rest.to_vec()),
            _ => (folder, Vec::new()),
        };
        if models.iter().any(|m: &crate::serve::engine::LoadedModel| m.id == id) {
            bail!("two models are named {id:?}; give the folders distinct names");
        }
        models.push(crate::serve::engine::LoadedModel { id, aliases, model, tokenizer });
    }
    if a.max_batch == 0 || a.queue == 0 {
        bail!("--max-batch and --queue must be at least 1");
    }
    let kv_cache_tokens = a.kv_cache_tokens.unwrap_or(a.max_batch * 2048);
    if kv_cache_tokens / a.max_batch < 2 {
        bail!("--kv-cache-tokens {kv_cache_tokens} leaves no room per slot for {} slots", a.max_batch);
    }
    let request_timeout = match a.request_timeout {
        Some(s) if !(s.is_finite() && s > 0.0) => bail!("--request-timeout must be a positive number of seconds"),
        s => s.map(std::time::Duration::from_secs_f64),
    };
    let config =
        crate::serve::engine::EngineConfig { queue: a.queue, max_batch: a.max_batch, kv_cache_tokens, request_timeout };
    crate::serve::run(models, &a.host, a.port, config, a.api_key.clone(), a.votes.clone())
}

/// The model to run: a folder, an optional LoRA adapter, the device.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model folder (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter folder to apply on top of the model.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Run with int8 weights (CPU; ≈ 3.6× fewer bytes read per token, faster decoding; the quality
    /// cost is measured in docs/PERFORMANCE.md).
    #[arg(long)]
    pub int8: bool,
    /// Cache keys and values in f16 (CPU, fp32 activations): half the KV memory and the bytes each
    /// decoded token streams through attention (llama.cpp's default cache type).
    #[arg(long, conflicts_with = "kv_int8")]
    pub kv_f16: bool,
    /// Cache keys and values as int8 rows with a scale each (CPU, fp32 activations): half of f16's
    /// memory and traffic (as llama.cpp's q8_0 cache type).
    #[arg(long)]
    pub kv_int8: bool,
    /// YaRN RoPE scaling for prompts beyond the trained context (minimind-3's
    /// inference_rope_scaling: factor 16 over the original 2048 positions).
    #[arg(long)]
    pub rope_scaling: bool,
    /// fp32, or bf16 weights and activations (half the bytes read per token; fastest on GPUs).
    #[arg(long, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

impl ModelArgs {
    /// The model (its adapter merged in, if any) and its tokenizer, ready for inference.
    pub fn load(&self) -> Result<(crate::MiniMindForCausalLM, Tokenizer)> {
        let options = crate::infer::LoadOptions {
            adapter: self.lora.clone(),
            int8: self.int8,
            rope_scaling: self.rope_scaling,
            precision: self.dtype,
            kv_f16: self.kv_f16,
            kv_int8: self.kv_int8,
        };
        crate::infer::load(&self.model, &parse_device(&self.device)?, &options)
    }
}

/// Decoding settings (HF semantics).
#[derive(Args, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    pub temperature: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    pub top_k: usize,
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    pub top_p: f64,
    #[arg(long, default_value_t = SamplingParams::default().repetition_penalty)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self, seed_offset: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed.wrapping_add(seed_offset),
        }
    }
}

/// The thinking switch of a reasoning model's chat template (minimind-3: `open_thinking`).
#[derive(Args, Clone, Default)]
pub struct ThinkArgs {
    /// Open the reasoning block in the generation prompt: the model thinks before it answers.
    #[arg(long, conflicts_with = "no_think")]
    pub think: bool,
    /// Close it empty: the model answers without thinking.
    #[arg(long)]
    pub no_think: bool,
}

impl ThinkArgs {
    /// `Some(true)` / `Some(false)` when a flag was given, else the template's default.
    pub fn value(&self) -> Option<bool> {
        match (self.think, self.no_think) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal =
                s.strip_prefix("cuda:").map_or(Ok(0), |n| n.parse::<usize>()).context("cuda:N needs a number")?;
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this binary was built without CUDA (rebuild with --features cuda)");
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => bail!("unknown --device {other:?}; expected cpu, cuda or cuda:N"),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => crate::cli::demo::run(args),
        Command::Bench(args) => crate::cli::bench::run(&args),
        Command::TrainTokenizer(a) => {
            crate::data::train_tokenizer::train_tokenizer_with(
                &a.data,
                a.vocab_size,
                &a.out,
                a.skip_bad_lines,
                a.layout,
            )?;
            println!("tokenizer written to {}", a.out.display());
            Ok(())
        }
        Command::Pretrain(a) => report("pretrained", &crate::train::pretrain(&a.config()?)?, &a.train.out),
        Command::Sft(a) => report("fine-tuned", &crate::train::sft(&a.config()?)?, &a.train.out),
        Command::Dpo(a) => report("preference-tuned", &train::dpo(&a)?, &a.train.out),
        Command::Grpo(a) => report("RL-tuned", &train::grpo(&a)?, &a.train.out),
        Command::Ppo(a) => report("RL-tuned (PPO)", &train::ppo(&a)?, &a.train.out),
        Command::RewardModel(a) => report("reward model trained", &train::reward_model(&a)?, &a.train.out),
        Command::Distill(a) => report("distilled", &train::distill(&a)?, &a.train.out),
        Command::Reason(a) => report("reasoning-tuned", &train::reason(&a)?, &a.train.out),
        Command::GenerateDataset(a) => generate_dataset_cmd(&a),
        Command::Lora(a) => match (a.action, &a.model, &a.lora) {
            (Some(train::LoraAction::Merge), Some(model), Some(lora)) => merge_lora(model, lora, &a.train.out),
            (Some(train::LoraAction::Merge), _, _) => bail!("minimind lora merge needs --model, --lora and --out"),
            (None, _, _) => report("adapted", &train::lora(&a)?, &a.train.out),
        },
        Command::Generate(a) => generate::run(&a),
        Command::Chat(a) => chat::run(&a),
        Command::Serve(a) => serve_cmd(&a),
        Command::Export { model, format, out, dtype, lora } => {
            interop::export_cmd(&model, format, &out, &dtype, lora.as_deref())
        }
        Command::Import { src, out, tokenizer, config, heads, base } => {
            let opts = crate::interop::import::ImportOptions { tokenizer, config, heads, base };
            interop::import_cmd(&src, &out, &opts)
        }
        Command::Eval(a) => eval::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Chart { path, out } => {
            let metrics = if path.is_dir() { path.join("metrics.jsonl") } else { path.clone() };
            let out = out.unwrap_or_else(|| metrics.with_file_name("loss.png"));
            let rows = crate::train::metrics::read_metrics(&metrics)?;
            crate::train::metrics::write_chart(&rows, "training", &out)?;
            println!("chart written to {}", out.display());
            Ok(())
        }
        Command::Info { preset, config } => {
            let c = match (preset, config) {
                (_, Some(p)) => ModelConfig::load(&if p.is_dir() { p.join("config.json") } else { p })?,
                (p, None) => ModelConfig::preset(p.as_deref().unwrap_or("minimind2-small"))?,
            };
            println!("{}", c.to_json()?);
            match c.use_moe {
                false => println!("parameters: {}", c.num_parameters()),
                true => {
                    println!("parameters: {} total, {} active per token", c.num_parameters(), c.num_active_parameters())
                }
            }
            Ok(())
        }
    }
}

fn report(what: &str, s: &crate::train::TrainSummary, out: &Path) -> Result<()> {
    println!(
        "{what} {} steps in {:.1}s: loss {:.4} → {:.4}, {:.0} tokens/s; model in {}",
        s.steps,
        s.elapsed_s,
        s.first_loss,
        s.final_loss,
        s.tokens_per_sec,
        out.display()
    );
    Ok(())
}
