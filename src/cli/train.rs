//! The training subcommands' flags, turned into the library's stage configs
//! ([`crate::train`]); the stages themselves live there.

use super::parse_device;
use crate::model::lora::LoraConfig;
use crate::model::params::InitScheme;
use crate::model::{ModelConfig, Precision};
use crate::train::dpo::SeqLogProb;
use crate::train::grpo::RolloutConfig;
use crate::train::optim::LrSchedule;
use crate::train::policy_loss::{PolicyLossConfig, PolicyLossKind};
use crate::train::ppo::PpoConfig;
use crate::train::{self, TrainConfig, TrainSummary};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Flags every training stage takes. Unset ones get the stage's MiniMind default.
#[derive(Args, Clone, Debug, Default)]
pub struct TrainerArgs {
    /// Output model folder (config, weights, tokenizer, metrics.jsonl, loss.png, trainer_state).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the data [pretrain 1, sft 1, dpo 2, lora 10, distill 6, reason 1, grpo/ppo 1].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Rows (pairs for dpo, prompts for grpo) per micro-batch [pretrain 32, sft 32, dpo 8, lora 32, distill 32,
    /// reason 8, grpo/ppo 2].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [pretrain 8, others 1]; an epoch's last step may have fewer.
    #[arg(long)]
    pub accumulation_steps: Option<usize>,
    /// Peak learning rate [pretrain 5e-4, sft 5e-5, dpo 1e-8, lora 1e-4, distill 5e-6, reason 1e-6, grpo/ppo 3e-7].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Cosine schedule per micro-step: minimind2 (lr/10 + lr/2·(1+cos), starts at 1.1·lr) or
    /// minimind3 (lr·(0.1 + 0.45·(1+cos)), 1-based) [minimind2, the recipes' version].
    #[arg(long)]
    pub lr_schedule: Option<LrSchedule>,
    /// Tokens per row [512; dpo and reason 1024; grpo/ppo: of the prompt, 768].
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
    /// Also log every metric as TensorBoard scalars into this folder (`tensorboard --logdir DIR`).
    #[arg(long)]
    pub tensorboard: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, exactly as if never interrupted.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the model or run --out already holds (without it such a folder is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Skip data lines that cannot train (and report how many) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// fp32, or bf16 mixed precision (fp32 master weights and AdamW moments, bf16 matmuls and
    /// activations; norms, softmax and the loss in f32).
    #[arg(long, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

impl TrainerArgs {
    /// The trainer settings; under `mpirun` or `torchrun` this process joins the other ranks.
    pub fn config(&self) -> Result<TrainConfig> {
        let launch = crate::dist::Launch::from_env()?;
        let device = parse_device(&launch.device_spec(&self.device))?;
        let dist = crate::dist::connect(launch, &device)?;
        Ok(TrainConfig {
            out: self.out.clone(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            accumulation_steps: self.accumulation_steps,
            lr: self.lr,
            lr_schedule: self.lr_schedule,
            max_seq_len: self.max_seq_len,
            grad_clip: self.grad_clip,
            weight_decay: self.weight_decay,
            save_every: self.save_every,
            seed: self.seed,
            max_steps: self.max_steps,
            max_minutes: self.max_minutes,
            resume: self.resume,
            overwrite: self.overwrite,
            skip_bad_lines: self.skip_bad_lines,
            device,
            precision: self.dtype,
            show_progress: true,
            dist,
            tensorboard: self.tensorboard.clone(),
        })
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
    #[arg(long, default_value_t = InitScheme::Minimind2)]
    pub init: InitScheme,
    /// Do not wrap texts as [bos] + text + [eos] (for data that already carries the markers).
    #[arg(long)]
    pub no_wrap: bool,
    #[command(flatten)]
    pub train: TrainerArgs,
}

impl PretrainArgs {
    pub fn config(&self) -> Result<train::PretrainConfig> {
        let model = match &self.config {
            Some(path) => ModelConfig::load(path)?,
            None => ModelConfig::preset(&self.preset)
                .with_context(|| format!("presets: {}", crate::model::config::PRESETS.join(", ")))?,
        };
        Ok(train::PretrainConfig {
            data: self.data.clone(),
            tokenizer: self.tokenizer.clone(),
            model,
            init: self.init,
            wrap: !self.no_wrap,
            train: self.train.config()?,
        })
    }
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

impl SftArgs {
    pub fn config(&self) -> Result<train::SftConfig> {
        Ok(train::SftConfig { model: self.model.clone(), data: self.data.clone(), train: self.train.config()? })
    }
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
    #[arg(long, default_value_t = SeqLogProb::Mean)]
    pub seq_logp: SeqLogProb,
    #[command(flatten)]
    pub train: TrainerArgs,
}

pub fn dpo(a: &DpoArgs) -> Result<TrainSummary> {
    let (model, data, train) = (a.model.clone(), a.data.clone(), a.train.config()?);
    train::dpo(&train::DpoConfig { model, data, beta: a.beta, seq_logp: a.seq_logp, train })
}

#[derive(Args, Clone)]
pub struct GrpoArgs {
    /// The model folder to start from (an SFT model); also the frozen reference.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines of prompts: RLAIF rows {"conversations": [...], "gt": …} or {"prompt": …, "gt": …}.
    #[arg(long)]
    pub data: PathBuf,
    /// Policy loss: cispo (minimind-3's default) or grpo (clipped ratio).
    #[arg(long, default_value_t = PolicyLossConfig::default().kind)]
    pub loss_type: PolicyLossKind,
    /// Completions sampled per prompt (advantages are normalized within each group).
    #[arg(long, default_value_t = RolloutConfig::default().group)]
    pub group: usize,
    /// β: weight of the KL to the frozen reference.
    #[arg(long, default_value_t = PolicyLossConfig::default().beta)]
    pub beta: f64,
    /// GRPO's clip range ε (ratio clipped to [1 − ε, 1 + ε]).
    #[arg(long, default_value_t = PolicyLossConfig::default().epsilon)]
    pub epsilon: f64,
    /// CISPO's cap on the ratio that weighs each token's gradient.
    #[arg(long, default_value_t = PolicyLossConfig::default().epsilon_high)]
    pub epsilon_high: f64,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub train: TrainerArgs,
}

/// How RL stages sample and score completions.
#[derive(Args, Clone)]
pub struct RolloutArgs {
    /// Longest completion, in tokens.
    #[arg(long, default_value_t = RolloutConfig::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts.
    #[arg(long, default_value_t = RolloutConfig::default().temperature)]
    pub temperature: f64,
    /// Weight of MiniMind's rule reward (length, thinking format, repetition).
    #[arg(long, default_value_t = RolloutConfig::default().rule_weight)]
    pub reward_rules: f64,
    /// Weight of the exact/numeric match with a row's "gt".
    #[arg(long, default_value_t = RolloutConfig::default().gt_weight)]
    pub reward_gt: f64,
    /// An external scorer: POST {"items": [{"prompt", "completion", "gt"}]}, answered {"scores": [...]}.
    #[arg(long)]
    pub reward_url: Option<String>,
    /// Weight of the external scorer's score.
    #[arg(long, default_value_t = 1.0)]
    pub reward_url_weight: f64,
    /// A reward model folder written by `minimind reward-model`.
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
    /// Weight of the reward model's score.
    #[arg(long, default_value_t = 1.0)]
    pub reward_model_weight: f64,
    /// Tool-use rollouts with these built-in tools (comma-separated: calculator, current_time).
    #[arg(long, value_delimiter = ',')]
    pub tools: Vec<String>,
    /// A user tool for tool-use rollouts, NAME=COMMAND: the call's arguments (JSON) on the command's
    /// stdin, its stdout the result (repeatable).
    #[arg(long = "tool")]
    pub tool_commands: Vec<String>,
    /// Most tool rounds per rollout.
    #[arg(long, default_value_t = RolloutConfig::default().max_tool_turns)]
    pub max_tool_turns: usize,
    /// Weight of the tool reward (+1 working calls, −1 a call that fails, 0 none).
    #[arg(long, default_value_t = RolloutConfig::default().tool_weight)]
    pub reward_tools: f64,
}

impl RolloutArgs {
    pub fn config(&self, group: usize) -> Result<RolloutConfig> {
        let tools = match self.tools.is_empty() && self.tool_commands.is_empty() {
            true => None,
            false => Some(crate::train::agent::ToolSet::new(&self.tools, &self.tool_commands)?),
        };
        Ok(RolloutConfig {
            group,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            rule_weight: self.reward_rules,
            gt_weight: self.reward_gt,
            reward_url: self.reward_url.clone().map(|url| (url, self.reward_url_weight)),
            reward_model: self.reward_model.clone().map(|dir| (dir, self.reward_model_weight)),
            tools,
            max_tool_turns: self.max_tool_turns,
            tool_weight: self.reward_tools,
        })
    }
}

pub fn grpo(a: &GrpoArgs) -> Result<TrainSummary> {
    let rollout = a.rollout.config(a.group)?;
    let loss = PolicyLossConfig { kind: a.loss_type, beta: a.beta, epsilon: a.epsilon, epsilon_high: a.epsilon_high };
    let (model, data, train) = (a.model.clone(), a.data.clone(), a.train.config()?);
    train::grpo(&train::GrpoConfig { model, data, rollout, loss, train })
}

#[derive(Args, Clone)]
pub struct PpoArgs {
    /// The model folder to start from (an SFT model); also the frozen reference.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines of prompts: RLAIF rows {"conversations": [...], "gt": …} or {"prompt": …, "gt": …}.
    #[arg(long)]
    pub data: PathBuf,
    /// Completions sampled per prompt.
    #[arg(long, default_value_t = 1)]
    pub group: usize,
    /// Updates (optimizer steps) per rollout.
    #[arg(long, default_value_t = PpoConfig::default().epochs)]
    pub ppo_epochs: usize,
    /// Skip a rollout's remaining updates once ½·mean((logπ − logπ_old)²) passes this.
    #[arg(long, default_value_t = PpoConfig::default().target_kl)]
    pub target_kl: f64,
    /// Policy ratio clip ε.
    #[arg(long, default_value_t = PpoConfig::default().clip)]
    pub clip: f64,
    /// Value clip around the rollout's values.
    #[arg(long, default_value_t = PpoConfig::default().value_clip)]
    pub value_clip: f64,
    /// Weight of the value loss.
    #[arg(long, default_value_t = PpoConfig::default().vf_coef)]
    pub vf_coef: f64,
    /// Weight of the KL to the frozen reference.
    #[arg(long, default_value_t = PpoConfig::default().kl_coef)]
    pub kl_coef: f64,
    /// GAE discount γ.
    #[arg(long, default_value_t = PpoConfig::default().gamma)]
    pub gamma: f64,
    /// GAE λ.
    #[arg(long, default_value_t = PpoConfig::default().lambda)]
    pub lambda: f64,
    #[command(flatten)]
    pub rollout: RolloutArgs,
    #[command(flatten)]
    pub train: TrainerArgs,
}

pub fn ppo(a: &PpoArgs) -> Result<TrainSummary> {
    let ppo = PpoConfig {
        clip: a.clip,
        value_clip: a.value_clip,
        vf_coef: a.vf_coef,
        kl_coef: a.kl_coef,
        gamma: a.gamma,
        lambda: a.lambda,
        epochs: a.ppo_epochs,
        target_kl: a.target_kl,
    };
    let (model, data, rollout, train) =
        (a.model.clone(), a.data.clone(), a.rollout.config(a.group)?, a.train.config()?);
    train::ppo(&train::PpoTrainConfig { model, data, rollout, ppo, train })
}

#[derive(Args, Clone)]
pub struct RewardModelArgs {
    /// The model folder to start from (an SFT model: its backbone and tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON Lines of {"chosen": [...], "rejected": [...]} conversations.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out pairs (same format): the trained model's accuracy on them is printed and saved as
    /// eval_pairs.json in --out (the run report shows it).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    #[command(flatten)]
    pub train: TrainerArgs,
}

pub fn reward_model(a: &RewardModelArgs) -> Result<TrainSummary> {
    let (model, data, train) = (a.model.clone(), a.data.clone(), a.train.config()?);
    let max_seq_len = train.max_seq_len.unwrap_or(crate::train::run::REWARD_MODEL.max_seq_len);
    let summary = train::reward_model(&train::RewardModelConfig { model, data, train })?;
    if let Some(pairs) = &a.eval_data {
        let r = crate::train::reward_model::held_out_accuracy(&a.train.out, pairs, max_seq_len)?;
        println!("held-out pairs: accuracy {:.4} ({} of {} chosen above rejected)", r.accuracy(), r.correct, r.pairs);
        let json = serde_json::json!({"kind": "pairs", "data": pairs, "accuracy": r.accuracy(), "correct": r.correct,
            "rows": r.pairs});
        super::eval::write_json(&a.train.out.join("eval_pairs.json"), &json)?;
    }
    Ok(summary)
}

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

pub fn lora(a: &LoraArgs) -> Result<TrainSummary> {
    let (Some(model), Some(data)) = (&a.model, &a.data) else { bail!("minimind lora needs --model and --data") };
    let adapter = LoraConfig { rank: a.rank, alpha: a.alpha.unwrap_or(a.rank as f64), targets: a.targets.clone() };
    let train = a.train.config()?;
    train::lora(&train::LoraTrainConfig { model: model.clone(), data: data.clone(), adapter, train })
}

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

pub fn distill(a: &DistillArgs) -> Result<TrainSummary> {
    train::distill(&train::DistillConfig {
        student: a.student.clone(),
        teacher: a.teacher.clone(),
        data: a.data.clone(),
        alpha: a.alpha,
        temperature: a.temperature,
        train: a.train.config()?,
    })
}

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

pub fn reason(a: &ReasonArgs) -> Result<TrainSummary> {
    let (model, data, train) = (a.model.clone(), a.data.clone(), a.train.config()?);
    train::reason(&train::ReasonConfig { model, data, tag_weight: a.tag_weight, train })
}
