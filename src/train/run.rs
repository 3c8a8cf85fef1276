//! What every stage's entry point shares: the trainer settings ([`TrainConfig`]), each stage's
//! MiniMind defaults for the ones left unset ([`StageDefaults`]), and [`run_stage`] — start fresh or
//! resume, report the data, run the [`train`] loop.

use super::optim::LrSchedule;
use super::resume::{self, Resume};
use super::trainer::{train, ModelOutput, Stage, TrainOptions, TrainSummary};
use crate::dist::Dist;
use crate::model::params::WeightBuilder;
use crate::model::{MiniMindForCausalLM, ModelConfig, Precision};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use std::path::PathBuf;

/// Trainer settings every stage takes. `None` fields get the stage's MiniMind default.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Output folder: config, weights (or adapter), tokenizer, metrics.jsonl, loss.png, trainer state.
    pub out: PathBuf,
    pub epochs: Option<usize>,
    /// Rows (pairs for DPO) per micro-batch.
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    pub accumulation_steps: Option<usize>,
    /// Peak learning rate of the cosine schedule.
    pub lr: Option<f64>,
    pub lr_schedule: Option<LrSchedule>,
    /// Tokens per row.
    pub max_seq_len: Option<usize>,
    pub grad_clip: f64,
    pub weight_decay: f64,
    /// Checkpoint every N optimizer steps (0: only at the end).
    pub save_every: usize,
    pub seed: u64,
    /// Exactly N optimizer steps (overrides `epochs`; the data wraps around).
    pub max_steps: Option<usize>,
    /// Stop early, saving everything, once this many minutes have passed.
    pub max_minutes: Option<f64>,
    /// Continue the run in `out` from its last checkpoint, exactly as if never interrupted.
    pub resume: bool,
    /// Replace what `out` holds (without it, a folder holding a model or a run is refused).
    pub overwrite: bool,
    /// Skip (and count) data lines that cannot train instead of stopping at the first.
    pub skip_bad_lines: bool,
    pub device: Device,
    /// fp32, or bf16 mixed precision (fp32 master weights and optimizer state).
    pub precision: Precision,
    /// A progress bar (or log lines when stderr is not a terminal).
    pub show_progress: bool,
    /// Data parallelism: the ranks this process trains with (`crate::dist::connect`); `batch_size`
    /// is per rank, so a global batch is `batch_size × ranks`.
    pub dist: Dist,
    /// Also write TensorBoard event files (every metric of `metrics.jsonl`) into this folder.
    pub tensorboard: Option<PathBuf>,
}

impl TrainConfig {
    /// MiniMind's trainer defaults (clip 1.0, weight decay 0.01, seed 42), writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            epochs: None,
            batch_size: None,
            accumulation_steps: None,
            lr: None,
            lr_schedule: None,
            max_seq_len: None,
            grad_clip: 1.0,
            weight_decay: 0.01,
            save_every: 100,
            seed: 42,
            max_steps: None,
            max_minutes: None,
            resume: false,
            overwrite: false,
            skip_bad_lines: false,
            device: Device::Cpu,
            precision: Precision::F32,
            show_progress: true,
            dist: Dist::default(),
            tensorboard: None,
        }
    }

    /// Checks the settings and the output folder before any work: numbers that make sense, a folder
    /// that holds nothing to lose (unless resuming or overwriting), no temp files of a killed run.
    pub fn check(&self) -> Result<()> {
        let positive = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => bail!("--{name} must be a positive number, got {v}"),
            _ => Ok(()),
        };
        positive("lr", self.lr)?;
        positive("max-minutes", self.max_minutes)?;
        for (name, v) in [("grad-clip", self.grad_clip), ("weight-decay", self.weight_decay)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("--{name} must be a number ≥ 0, got {v}");
            }
        }
        for (name, v) in
            [("epochs", self.epochs), ("accumulation-steps", self.accumulation_steps), ("max-steps", self.max_steps)]
        {
            if v == Some(0) {
                bail!("--{name} must be at least 1");
            }
        }
        let removed = crate::model::checkpoint::remove_stale_temp_files(&self.out)?;
        if removed > 0 {
            eprintln!("removed {removed} temporary files a killed run left in {}", self.out.display());
        }
        if self.resume {
            resume::require(&self.out)?;
        } else if !self.overwrite {
            refuse_to_replace(&self.out)?;
        }
        // No rank starts writing before every rank has looked at the folder.
        self.dist.barrier()
    }

    pub(crate) fn batch_size(&self, d: &StageDefaults) -> Result<usize> {
        let b = self.batch_size.unwrap_or(d.batch_size);
        if b == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(b)
    }

    pub(crate) fn max_seq_len(&self, d: &StageDefaults, config: &ModelConfig) -> Result<usize> {
        let n = self.max_seq_len.unwrap_or(d.max_seq_len);
        if n < 2 || n > config.max_position_embeddings {
            bail!("--max-seq-len must be in 2..={}", config.max_position_embeddings);
        }
        Ok(n)
    }

    fn options(&self, d: &StageDefaults, tokenizer_dir: Option<PathBuf>, output: ModelOutput) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs.unwrap_or(d.epochs),
            accumulation_steps: self.accumulation_steps.unwrap_or(d.accumulation_steps),
            lr: self.lr.unwrap_or(d.lr),
            lr_schedule: self.lr_schedule.unwrap_or(d.lr_schedule),
            grad_clip: self.grad_clip,
            weight_decay: self.weight_decay,
            save_every: self.save_every,
            max_steps: self.max_steps,
            seed: self.seed,
            out_dir: self.out.clone(),
            tokenizer_dir,
            show_progress: self.show_progress,
            time_limit_s: self.max_minutes.map(|m| m * 60.0),
            resume: None,
            output,
            dist: self.dist.clone(),
            tensorboard: self.tensorboard.clone(),
        }
    }
}

/// Files whose presence means `dir` holds a model, an adapter or a run's history.
const PRECIOUS: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "adapter.safetensors",
    "adapter_config.json",
    resume::STATE_FILE,
    "metrics.jsonl",
];

fn refuse_to_replace(dir: &std::path::Path) -> Result<()> {
    if let Some(file) = PRECIOUS.iter().find(|f| dir.join(f).exists()) {
        bail!(
            "{} already holds a model or a run ({file}); pass --resume to continue that run, or --overwrite \
             to replace it",
            dir.display()
        );
    }
    Ok(())
}

/// A stage's MiniMind defaults for the optional trainer settings.
#[derive(Debug, Clone, Copy)]
pub struct StageDefaults {
    pub epochs: usize,
    pub batch_size: usize,
    pub accumulation_steps: usize,
    pub lr: f64,
    pub max_seq_len: usize,
    /// Every stage's defaults are MiniMind2's recipes, so is the schedule.
    pub lr_schedule: LrSchedule,
}

const fn recipe(
    epochs: usize,
    batch_size: usize,
    accumulation_steps: usize,
    lr: f64,
    max_seq_len: usize,
) -> StageDefaults {
    StageDefaults { epochs, batch_size, accumulation_steps, lr, max_seq_len, lr_schedule: LrSchedule::Minimind2 }
}

pub const PRETRAIN: StageDefaults = recipe(1, 32, 8, 5e-4, 512);
pub const SFT: StageDefaults = recipe(1, 32, 1, 5e-5, 512);
/// A tiny learning rate (larger ones make the model "forget" its SFT), long rows.
pub const DPO: StageDefaults = recipe(2, 8, 1, 1e-8, 1024);
/// MiniMind2's (HF-style) LoRA recipe.
pub const LORA: StageDefaults = recipe(10, 32, 1, 1e-4, 512);
pub const DISTILL: StageDefaults = recipe(6, 32, 1, 5e-6, 512);
pub const REASON: StageDefaults = recipe(1, 8, 1, 1e-6, 1024);
/// minimind-3's GRPO: two prompts a step, a tiny learning rate; `max_seq_len` bounds the prompt.
pub const GRPO: StageDefaults = recipe(1, 2, 1, 3e-7, 768);
/// minimind-3's PPO: the actor's rate, 2 prompts, prompts up to 768 tokens.
pub const PPO: StageDefaults = recipe(1, 2, 1, 3e-7, 768);
/// A reward model on preference pairs (not a MiniMind recipe): DPO's batch, a small rate.
pub const REWARD_MODEL: StageDefaults = recipe(1, 8, 1, 1e-5, 512);

/// Where a stage's trainable weights come from: `fresh` (an initial checkpoint or a random init)
/// or, with `resume`, the run's own checkpoint; `build` turns either into the model.
pub struct Start<F: FnOnce(&WeightBuilder) -> Result<MiniMindForCausalLM>> {
    pub fresh: WeightBuilder,
    pub build: F,
    /// What a checkpoint writes: the whole model folder or only an adapter.
    pub output: ModelOutput,
    /// Tokenizer files copied into the output folder.
    pub tokenizer_dir: Option<PathBuf>,
}

/// Builds the model (fresh or resumed), reports the data, and trains `stage`.
pub fn run_stage<S: Stage, F: FnOnce(&WeightBuilder) -> Result<MiniMindForCausalLM>>(
    cfg: &TrainConfig,
    defaults: &StageDefaults,
    stage: &mut S,
    start: Start<F>,
) -> Result<TrainSummary> {
    let mut opts = cfg.options(defaults, start.tokenizer_dir, start.output);
    let weights = if cfg.resume {
        let (state, tensors, optimizer, stage) = resume::load(&cfg.out, &cfg.device)?;
        if cfg.dist.is_main() {
            eprintln!("resuming {} at step {}", cfg.out.display(), state.step);
        }
        opts.resume = Some(Resume { state, optimizer, stage });
        WeightBuilder::loaded(tensors, DType::F32, &cfg.device, true)
    } else {
        start.fresh
    };
    let mut model = (start.build)(&weights)?;
    model.set_compute_dtype(cfg.precision.dtype());
    let params = weights.finish().context("collecting the trainable weights")?;
    if cfg.dist.world_size() > 1 && cfg.dist.is_main() {
        eprintln!("data parallel over {} processes ({:?})", cfg.dist.world_size(), cfg.dist);
    }
    if let Some(index) = stage.index().filter(|_| cfg.dist.is_main()) {
        eprintln!("{}: {} trainable parameters, {} rows of data", stage.name(), params.num_elements(), index.len());
        if index.skipped > 0 {
            eprintln!("skipping {} lines of {} that cannot train", index.skipped, index.path.display());
        }
        if index.untrainable > 0 {
            eprintln!(
                "leaving out {} rows of {} with no token to train on within --max-seq-len (answers beyond it)",
                index.untrainable,
                index.path.display()
            );
        }
    }
    if cfg.dist.is_main() && !cfg.resume {
        write_run_record(cfg, defaults, stage, &model, params.num_elements(), &opts)?;
    }
    train(&model, &params, stage, &opts)
}

/// `run.json` in the output folder: what this run trains on and with which settings (the run report
/// shows it beside the curves).
fn write_run_record<S: Stage>(
    cfg: &TrainConfig,
    defaults: &StageDefaults,
    stage: &S,
    model: &MiniMindForCausalLM,
    parameters: usize,
    opts: &crate::train::TrainOptions,
) -> Result<()> {
    let index = stage.index();
    let record = serde_json::json!({
        "stage": stage.name(),
        "data": index.map(|i| i.path.display().to_string()),
        "rows": index.map(|i| i.len()),
        "skipped_lines": index.map(|i| i.skipped),
        "trainable_parameters": parameters,
        "epochs": opts.epochs,
        "max_steps": opts.max_steps,
        "batch_size": cfg.batch_size(defaults)?,
        "accumulation_steps": opts.accumulation_steps,
        "processes": cfg.dist.world_size(),
        "lr": opts.lr,
        "lr_schedule": opts.lr_schedule.to_string(),
        "max_seq_len": cfg.max_seq_len(defaults, &model.config).ok(),
        "precision": cfg.precision.to_string(),
        "seed": opts.seed,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let path = cfg.out.join("run.json");
    std::fs::write(&path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Builds a model from weights (a fresh start or a resumed run's).
pub trait BuildModel: FnOnce(&WeightBuilder) -> Result<MiniMindForCausalLM> {}
impl<F: FnOnce(&WeightBuilder) -> Result<MiniMindForCausalLM>> BuildModel for F {}

/// Starting from the trained model in folder `dir` (SFT, DPO, distillation, reasoning): its config,
/// its weights as the fresh start, and its tokenizer copied along.
pub fn from_model_folder(dir: &std::path::Path, device: &Device) -> Result<(ModelConfig, Start<impl BuildModel>)> {
    let (config, fresh) = crate::model::checkpoint::model_weights(dir, device, DType::F32, true)?;
    let shape = config.clone();
    let build =
        move |wb: &WeightBuilder| MiniMindForCausalLM::new(&shape, wb, crate::model::params::InitScheme::Minimind2);
    Ok((config, Start { fresh, build, output: ModelOutput::Full, tokenizer_dir: Some(dir.to_path_buf()) }))
}
