//! `minimind pretrain` and `minimind sft`: the shared trainer flags and what each stage adds.

use super::parse_device;
use crate::checkpoint;
use crate::config::{ModelConfig, PRESETS};
use crate::data::{pretrain_data, JsonlIndex, PretrainEncoding};
use crate::distill::DistillStage;
use crate::dpo::{DpoData, DpoStage, SeqLogProb};
use crate::lm_stage::LmStage;
use crate::lora::LoraConfig;
use crate::params::InitScheme;
use crate::params::WeightBuilder;
use crate::reason::{reason_data, ReasonEncoding};
use crate::resume::Resume;
use crate::sft::{sft_data, SftEncoding};
use crate::tokenizer::Tokenizer;
use crate::train::{train, ModelOutput, Stage, TrainOptions, TrainSummary};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;

/// Flags every training stage takes. Unset ones get the stage's MiniMind default.
#[derive(Args, Clone, Debug, Default)]
pub struct TrainerArgs {
    /// Output model folder (config, weights, tokenizer, metrics.jsonl, loss.png, trainer_state).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the data [pretrain 1, sft 1, dpo 2].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rows (pairs for dpo) per micro-batch [pretrain 32, sft 32, dpo 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [pretrain 8, sft 1, dpo 1].
    #[arg(long)]
    pub accumulation_steps: Option<usize>,
    /// Peak learning rate of the cosine schedule [pretrain 5e-4, sft 5e-5, dpo 1e-8].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Tokens per row [pretrain 512, sft 512, dpo 1024].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train exactly N optimizer steps (overrides --epochs; the data wraps around).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Stop early (saving everything) once this many minutes have passed.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the run in --out from its last checkpoint, exactly as if never interrupted.
    #[arg(long)]
    pub resume: bool,
    /// Skip malformed data lines (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A stage's MiniMind defaults for the optional trainer flags.
pub struct StageDefaults {
    pub epochs: usize,
    pub batch_size: usize,
    pub accumulation_steps: usize,
    pub lr: f64,
    pub max_seq_len: usize,
}

pub const PRETRAIN: StageDefaults =
    StageDefaults { epochs: 1, batch_size: 32, accumulation_steps: 8, lr: 5e-4, max_seq_len: 512 };
pub const SFT: StageDefaults =
    StageDefaults { epochs: 1, batch_size: 32, accumulation_steps: 1, lr: 5e-5, max_seq_len: 512 };
/// MiniMind2's DPO recipe: a tiny learning rate (larger ones make the model "forget"), long rows.
pub const DPO: StageDefaults =
    StageDefaults { epochs: 2, batch_size: 8, accumulation_steps: 1, lr: 1e-8, max_seq_len: 1024 };

impl TrainerArgs {
    fn batch_size(&self, d: &StageDefaults) -> Result<usize> {
        let b = self.batch_size.unwrap_or(d.batch_size);
        if b == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(b)
    }

    fn max_seq_len(&self, d: &StageDefaults, config: &ModelConfig) -> Result<usize> {
        let n = self.max_seq_len.unwrap_or(d.max_seq_len);
        if n < 2 || n > config.max_position_embeddings {
            bail!("--max-seq-len must be in 2..={}", config.max_position_embeddings);
        }
        Ok(n)
    }

    fn options(&self, d: &StageDefaults, tokenizer_dir: PathBuf) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs.unwrap_or(d.epochs),
            accumulation_steps: self.accumulation_steps.unwrap_or(d.accumulation_steps),
            lr: self.lr.unwrap_or(d.lr),
            grad_clip: self.grad_clip,
            weight_decay: self.weight_decay,
            save_every: self.save_every,
            max_steps: self.max_steps,
            seed: self.seed,
            out_dir: self.out.clone(),
            tokenizer_dir: Some(tokenizer_dir),
            show_progress: true,
            time_limit_s: self.max_minutes.map(|m| m * 60.0),
            resume: None,
            output: Default::default(),
        }
    }
}

#[derive(Args, Clone)]
pub struct PretrainArgs {
    /// JSON Lines with a "text" field per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder with tokenizer.json (+ tokenizer_config.json).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Model preset: tiny, minimind2-small, minimind2.
    #[arg(long, default_value = "minimind2-small", conflicts_with = "config")]
    pub preset: String,
    /// A config.json to use instead of a preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Weight initialization: minimind2 (U(±1/√fan_in)) or normal (N(0, 0.02), minimind-3).
    #[arg(long, value_enum, default_value_t = InitScheme::Minimind2)]
    pub init: InitScheme,
    /// Do not wrap texts as [bos] + text + [eos] (for data that already carries the markers).
    #[arg(long)]
    pub no_wrap: bool,
    #[command(flatten)]
    pub train: TrainerArgs,
}

#[derive(Args, Clone)]
pub struct SftArgs {
    /// The model folder to start from (a pretrained model).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines of {"conversations": [{"role", "content"}, …]}.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub train: TrainerArgs,
}

fn model_config(a: &PretrainArgs, vocab_size: usize) -> Result<ModelConfig> {
    let config = match &a.config {
        Some(path) => ModelConfig::load(path)?,
        None => ModelConfig::preset(&a.preset).with_context(|| format!("presets: {}", PRESETS.join(", ")))?,
    };
    if vocab_size > config.vocab_size {
        bail!("the tokenizer has {vocab_size} tokens but the model's vocab_size is {}", config.vocab_size);
    }
    Ok(config)
}

/// Trains `stage` from `model`/`params` (or, with --resume, from the checkpoint in --out).
fn fit<S: Stage>(
    t: &TrainerArgs,
    mut opts: TrainOptions,
    device: &Device,
    stage: &mut S,
    index: impl Fn(&S) -> &JsonlIndex,
    fresh: impl FnOnce() -> Result<(crate::MiniMindForCausalLM, crate::params::Params)>,
) -> Result<TrainSummary> {
    let (model, params) = if t.resume {
        let (model, params, resume) = crate::resume::load_run(&t.out, device)?;
        eprintln!("resuming {} at step {}", t.out.display(), resume.state.step);
        opts.resume = Some(resume);
        (model, params)
    } else {
        fresh()?
    };
    let data = index(stage);
    eprintln!("model: {} parameters, {} rows of data", params.num_elements(), data.len());
    if data.skipped > 0 {
        eprintln!("skipping {} malformed lines of {}", data.skipped, data.path.display());
    }
    train(&model, &params, stage, &opts)
}

/// `minimind pretrain`.
pub fn pretrain(a: &PretrainArgs) -> Result<TrainSummary> {
    let t = &a.train;
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(&a.tokenizer)?;
    let config = model_config(a, tokenizer.vocab_size())?;
    let encoding = PretrainEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&PRETRAIN, &config)?, !a.no_wrap)?;
    let data = pretrain_data(&a.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&PRETRAIN)?, t.seed)?;
    let mut stage = LmStage { name: "pretrain", data, device: device.clone() };
    let opts = t.options(&PRETRAIN, a.tokenizer.clone());
    fit(t, opts, &device, &mut stage, |s| &s.data.index, || checkpoint::init_model(&config, a.init, t.seed, &device))
}

/// `minimind sft`: starts from `--model`, whose tokenizer (and chat template) it uses.
pub fn sft(a: &SftArgs) -> Result<TrainSummary> {
    let t = &a.train;
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(&a.model)?;
    let config = ModelConfig::load(&a.model.join(checkpoint::CONFIG_FILE))?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&SFT, &config)?)?;
    let data = sft_data(&a.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&SFT)?, t.seed)?;
    let mut stage = LmStage { name: "sft", data, device: device.clone() };
    let opts = t.options(&SFT, a.model.clone());
    fit(t, opts, &device, &mut stage, |s| &s.data.index, || checkpoint::load_model(&a.model, &device, DType::F32, true))
}

#[derive(Args, Clone)]
pub struct DpoArgs {
    /// The model folder to start from (an SFT model); also the frozen reference.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines of {"chosen": [...], "rejected": [...]} conversations.
    #[arg(long)]
    pub data: PathBuf,
    /// β of the DPO loss.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Sequence score: mean (MiniMind2) or sum (minimind-3) of the supervised tokens' log-probs.
    #[arg(long, value_enum, default_value_t = SeqLogProb::Mean)]
    pub seq_logp: SeqLogProb,
    #[command(flatten)]
    pub train: TrainerArgs,
}

/// `minimind dpo`: policy and frozen reference both start from `--model`.
pub fn dpo(a: &DpoArgs) -> Result<TrainSummary> {
    let t = &a.train;
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(&a.model)?;
    let (reference, _) = checkpoint::load_model(&a.model, &device, DType::F32, false)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&DPO, &reference.config)?)?;
    let data = DpoData::open(&a.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&DPO)?, t.seed)?;
    let mut stage = DpoStage::new(data, reference, a.beta, a.seq_logp, device.clone());
    let opts = t.options(&DPO, a.model.clone());
    fit(t, opts, &device, &mut stage, |s| &s.data.index, || checkpoint::load_model(&a.model, &device, DType::F32, true))
}

/// MiniMind2 (HF-style) LoRA recipe: 10 epochs, batch 32, lr 1e-4.
pub const LORA: StageDefaults =
    StageDefaults { epochs: 10, batch_size: 32, accumulation_steps: 1, lr: 1e-4, max_seq_len: 512 };

/// `minimind lora merge …` instead of training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraAction {
    /// Write `W + (α/r)·B·A` for every adapter of --lora into a plain model folder --out.
    Merge,
}

#[derive(Args, Clone)]
pub struct LoraArgs {
    /// `merge`: fold the adapter --lora into --model and write a plain model folder to --out.
    #[arg(value_enum)]
    pub action: Option<LoraAction>,
    /// The frozen base model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// merge: the adapter folder (adapter.safetensors + adapter_config.json).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// JSON Lines of {"conversations": […]} (SFT format).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Adapter rank r.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Adapter α (scale α/r; MiniMind uses α = r) [default: the rank].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Projections to adapt, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',', default_value = "q_proj,o_proj")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub train: TrainerArgs,
}

/// `minimind lora`: trains adapters on a frozen `--model`; `--out` gets only the adapter.
pub fn lora(a: &LoraArgs) -> Result<TrainSummary> {
    let t = &a.train;
    let (Some(base), Some(data_path)) = (&a.model, &a.data) else { bail!("minimind lora needs --model and --data") };
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(base)?;
    let config = LoraConfig { rank: a.rank, alpha: a.alpha.unwrap_or(a.rank as f64), targets: a.targets.clone() };
    config.validate()?;
    let (mut model, _) = checkpoint::load_model(base, &device, DType::F32, false)?;
    let encoding = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&LORA, &model.config)?)?;
    let data = sft_data(data_path, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&LORA)?, t.seed)?;
    let mut stage = LmStage { name: "lora", data, device: device.clone() };
    let mut opts = t.options(&LORA, base.clone());
    opts.tokenizer_dir = None;
    opts.output = ModelOutput::Adapter(config.clone());
    let (params, resume) = if t.resume {
        let (state, tensors, optimizer) = crate::resume::load(&t.out, &device)?;
        let wb = WeightBuilder::loaded(tensors, DType::F32, &device, true);
        crate::lora::attach(&mut model, &config, &wb)?;
        (wb.finish()?, Some(Resume { state, optimizer }))
    } else {
        (crate::lora::attach_new(&mut model, &config, t.seed)?, None)
    };
    opts.resume = resume;
    let frozen = model.config.num_parameters();
    eprintln!("LoRA: {} trainable parameters on a frozen base of {frozen}", params.num_elements());
    train(&model, &params, &mut stage, &opts)
}

/// MiniMind2's white-box distillation recipe.
pub const DISTILL: StageDefaults =
    StageDefaults { epochs: 6, batch_size: 32, accumulation_steps: 1, lr: 5e-6, max_seq_len: 512 };

#[derive(Args, Clone)]
pub struct DistillArgs {
    /// The student model folder (trained; its tokenizer is used); `--model` works too.
    #[arg(long, visible_alias = "model")]
    pub student: PathBuf,
    /// The teacher model folder (frozen; vocabulary at least the student's, cut to it).
    #[arg(long)]
    pub teacher: PathBuf,
    /// SFT-format data ({"conversations": […]}).
    #[arg(long)]
    pub data: PathBuf,
    /// Weight of the cross-entropy on the data; 1 − α goes to the KL to the teacher.
    #[arg(long, default_value_t = 0.0)]
    pub alpha: f64,
    /// Softmax temperature of the KL term (scaled back by T²).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[command(flatten)]
    pub train: TrainerArgs,
}

/// `minimind distill`: white-box distillation of `--teacher` into `--student`.
pub fn distill(a: &DistillArgs) -> Result<TrainSummary> {
    let t = &a.train;
    if !(0.0..=1.0).contains(&a.alpha) || a.temperature <= 0.0 {
        bail!("--alpha must be in [0, 1] and --temperature > 0");
    }
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(&a.student)?;
    let (teacher, _) = checkpoint::load_model(&a.teacher, &device, DType::F32, false)?;
    let student_config = ModelConfig::load(&a.student.join(checkpoint::CONFIG_FILE))?;
    if teacher.config.vocab_size < student_config.vocab_size {
        bail!(
            "the teacher's vocab_size {} is smaller than the student's {}",
            teacher.config.vocab_size,
            student_config.vocab_size
        );
    }
    let max_len = t.max_seq_len(&DISTILL, &student_config)?.min(teacher.config.max_position_embeddings);
    let encoding = SftEncoding::for_tokenizer(&tokenizer, max_len)?;
    let data = sft_data(&a.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&DISTILL)?, t.seed)?;
    let mut stage = DistillStage::new(data, teacher, a.alpha, a.temperature, device.clone());
    let opts = t.options(&DISTILL, a.student.clone());
    fit(
        t,
        opts,
        &device,
        &mut stage,
        |s| &s.data.index,
        || checkpoint::load_model(&a.student, &device, DType::F32, true),
    )
}

/// MiniMind2's reasoning distillation recipe (1 epoch, batch 8, lr 1e-6, 1024 tokens).
pub const REASON: StageDefaults =
    StageDefaults { epochs: 1, batch_size: 8, accumulation_steps: 1, lr: 1e-6, max_seq_len: 1024 };

#[derive(Args, Clone)]
pub struct ReasonArgs {
    /// The model folder to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// SFT-format data whose answers read `<think>…</think><answer>…</answer>`.
    #[arg(long)]
    pub data: PathBuf,
    /// Loss weight of the tokens spelling the think/answer tags.
    #[arg(long, default_value_t = 10.0)]
    pub tag_weight: f32,
    #[command(flatten)]
    pub train: TrainerArgs,
}

/// `minimind reason`: reasoning distillation (SFT with up-weighted format tags).
pub fn reason(a: &ReasonArgs) -> Result<TrainSummary> {
    let t = &a.train;
    let device = parse_device(&t.device)?;
    let tokenizer = Tokenizer::load(&a.model)?;
    let config = ModelConfig::load(&a.model.join(checkpoint::CONFIG_FILE))?;
    let sft = SftEncoding::for_tokenizer(&tokenizer, t.max_seq_len(&REASON, &config)?)?;
    let encoding = ReasonEncoding::new(&tokenizer, sft, a.tag_weight)?;
    let data = reason_data(&a.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&REASON)?, t.seed)?;
    let mut stage = LmStage { name: "reason", data, device: device.clone() };
    let opts = t.options(&REASON, a.model.clone());
    fit(t, opts, &device, &mut stage, |s| &s.data.index, || checkpoint::load_model(&a.model, &device, DType::F32, true))
}
