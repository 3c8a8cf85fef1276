//! The one training loop every stage uses. A stage supplies batches and a loss; the loop does
//! gradient accumulation, global-norm clipping, AdamW with the cosine schedule, progress display,
//! `metrics.jsonl`, the loss/lr chart and atomic checkpoints.
//!
//! Accumulation windows never cross an epoch: when an epoch's batches are not a multiple of
//! `accumulation_steps`, its last optimizer step is a short window of the remaining micro-batches
//! (as minimind-3 flushes at the epoch's end), its loss the mean over the micro-batches it has.

use crate::data::DataCursor;
use crate::dist::Dist;
use crate::model::checkpoint;
use crate::model::params::Params;
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::train::metrics::{write_chart, MetricsWriter, StepMetrics};
use crate::train::optim::{clip_factor, grad_norm, AdamW, AdamWConfig, GradAccumulator, LrSchedule};
use crate::train::resume::{self, Resume, RunState};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a training stage contributes: its data and its loss.
pub trait Stage {
    type Batch;
    /// Display name (progress bar, chart title).
    fn name(&self) -> &str;
    fn batches_per_epoch(&self) -> usize;
    /// The next micro-batch; the stage wraps around epochs itself.
    fn next_batch(&mut self) -> Result<Self::Batch>;
    /// Scalar loss of one micro-batch (dropout active when `dropout` is set).
    fn loss(&self, model: &MiniMindForCausalLM, batch: &Self::Batch, dropout: DropoutSeed) -> Result<Tensor>;
    /// Positions the model processed for this batch (for tokens/s).
    fn tokens(&self, batch: &Self::Batch) -> usize;
    /// Where the data stands (epoch and row), saved for resuming.
    fn cursor(&self) -> DataCursor;
    /// Continues the data from a saved cursor.
    fn seek(&mut self, cursor: DataCursor);
    /// Extra figures of the last `loss` call (e.g. DPO's reward margin), averaged per step and
    /// logged beside the loss.
    fn batch_metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// The data file's index, for the report before training (rows, skipped lines).
    fn index(&self) -> Option<&crate::data::JsonlIndex> {
        None
    }
    /// What `loss` is a mean over (supervised tokens, pairs): data parallelism weighs each rank's
    /// loss by its share of the global total, so the step equals one process on the whole batch.
    fn weight(&self, _batch: &Self::Batch) -> f64 {
        1.0
    }
    /// Tensors the stage carries from one step to the next (PPO's rollout while it is replayed),
    /// saved with every checkpoint so that a resumed run continues exactly.
    fn carried(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Takes back what [`Stage::carried`] saved (called after `seek` when a run resumes).
    fn restore_carried(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let _ = tensors;
        Ok(())
    }
    /// Data parallelism: read only rank `rank`'s part of every global batch.
    fn shard(&mut self, rank: usize, world: usize) -> Result<()> {
        if world > 1 {
            bail!("the {} stage cannot be split across {world} processes", self.name());
        }
        let _ = rank;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub accumulation_steps: usize,
    pub lr: f64,
    /// The cosine schedule's formula (MiniMind2 or minimind-3).
    pub lr_schedule: LrSchedule,
    pub grad_clip: f64,
    pub weight_decay: f64,
    /// Checkpoint every this many optimizer steps (0 = only at the end).
    pub save_every: usize,
    /// Train exactly this many optimizer steps, overriding `epochs` (the schedule spans them).
    pub max_steps: Option<usize>,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Where the tokenizer files come from, copied into `out_dir` so it is a complete model folder.
    pub tokenizer_dir: Option<PathBuf>,
    pub show_progress: bool,
    /// Stop after the step that crosses this many seconds, saving as at the end.
    pub time_limit_s: Option<f64>,
    /// Continue a run: its state and optimizer tensors from `resume::load` (whose parameters the
    /// model was built from).
    pub resume: Option<Resume>,
    /// What a checkpoint writes besides the resume state: the whole model folder, or only a LoRA adapter.
    pub output: ModelOutput,
    /// The ranks of a data-parallel run (a world of one by default).
    pub dist: Dist,
    /// Also write every step's metrics as TensorBoard scalars into this folder.
    pub tensorboard: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub enum ModelOutput {
    /// `config.json` + `model.safetensors` (+ tokenizer files).
    #[default]
    Full,
    /// `adapter.safetensors` + `adapter_config.json` for a frozen base model.
    Adapter(crate::model::lora::LoraConfig),
    /// [`Full`](Self::Full) plus these trained parameters the model does not hold (a reward head).
    FullWith(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
}

/// How a run's micro-batches group into optimizer steps: windows of `accumulation` micro-batches
/// that never cross an epoch boundary, so an epoch's last window may be short. Everything follows
/// from the step number, which is what makes resuming exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    pub batches_per_epoch: usize,
    pub accumulation: usize,
    /// Optimizer steps of the run.
    pub total_steps: usize,
}

impl StepPlan {
    /// `--max-steps` when given (as in HF, it overrides the epoch count and the data wraps around),
    /// else `epochs · ceil(batches per epoch / accumulation)`.
    pub fn new(opts: &TrainOptions, batches_per_epoch: usize) -> Self {
        let (batches_per_epoch, accumulation) = (batches_per_epoch.max(1), opts.accumulation_steps.max(1));
        let per_epoch = batches_per_epoch.div_ceil(accumulation);
        Self { batches_per_epoch, accumulation, total_steps: opts.max_steps.unwrap_or(per_epoch * opts.epochs) }
    }

    fn steps_per_epoch(&self) -> usize {
        self.batches_per_epoch.div_ceil(self.accumulation)
    }

    /// Micro-batches consumed before optimizer step `step` (0-based).
    pub fn micro_before(&self, step: usize) -> usize {
        let (epoch, window) = (step / self.steps_per_epoch(), step % self.steps_per_epoch());
        epoch * self.batches_per_epoch + (window * self.accumulation).min(self.batches_per_epoch)
    }

    /// Micro-batches in the window of optimizer step `step`.
    pub fn micro_batches(&self, step: usize) -> usize {
        self.micro_before(step + 1) - self.micro_before(step)
    }

    /// Micro-steps of the whole run (the schedule's T).
    pub fn total_micro(&self) -> usize {
        self.micro_before(self.total_steps)
    }

    /// The learning rate of optimizer step `step`: the schedule at its window's last micro-step.
    pub fn lr(&self, schedule: LrSchedule, base_lr: f64, step: usize) -> f64 {
        schedule.at(base_lr, self.micro_before(step + 1) - 1, self.total_micro())
    }
}

pub fn train<S: Stage>(
    model: &MiniMindForCausalLM,
    params: &Params,
    stage: &mut S,
    opts: &TrainOptions,
) -> Result<TrainSummary> {
    if opts.epochs == 0 || opts.accumulation_steps == 0 || opts.max_steps == Some(0) {
        bail!("--epochs, --accumulation-steps and --max-steps must be at least 1");
    }
    let dist = &opts.dist;
    stage.shard(dist.rank(), dist.world_size())?;
    let plan = StepPlan::new(opts, stage.batches_per_epoch());
    let total = plan.total_steps;
    let main = dist.is_main(); // rank 0 writes; every rank computes
    let metrics_path = opts.out_dir.join("metrics.jsonl");
    // TensorBoard also shows greedy answers to fixed prompts at each checkpoint.
    let samples_tokenizer = match (&opts.tensorboard, &opts.tokenizer_dir, main) {
        (Some(_), Some(dir), true) => Some(crate::Tokenizer::load(dir)?),
        _ => None,
    };
    let mut events = match (&opts.tensorboard, main) {
        (Some(dir), true) => Some(super::tensorboard::EventWriter::create(dir)?),
        _ => None,
    };
    if main {
        std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
        if let Some(dir) = &opts.tokenizer_dir {
            checkpoint::copy_tokenizer_files(dir, &opts.out_dir)?;
        }
    }
    let mut optimizer = AdamW::new(params, AdamWConfig { weight_decay: opts.weight_decay, ..Default::default() })?;
    let first_step = match opts.resume.as_ref().map(|r| &r.state) {
        Some(state) => {
            if state.total_steps != total || state.seed != opts.seed {
                bail!(
                    "cannot resume: the checkpoint is step {} of {} with seed {}, this run has {total} steps and seed {}; \
                     use the same --epochs/--max-steps/--accumulation-steps/--seed and global batch \
                     (--batch-size × processes)",
                    state.step, state.total_steps, state.seed, opts.seed
                );
            }
            stage.seek(state.cursor);
            if let Some(r) = &opts.resume {
                stage.restore_carried(&r.stage)?;
            }
            if main {
                keep_metrics_up_to(&metrics_path, state.step)?;
            }
            state.step
        }
        None => 0,
    };
    if let Some(r) = &opts.resume {
        optimizer.load_state(params, &r.optimizer, r.state.step)?;
    }
    // Every rank starts from rank 0's weights.
    if dist.world_size() > 1 {
        let tensors: Vec<Tensor> = params.vars().map(|v| v.as_tensor().clone()).collect();
        for (var, value) in params.vars().zip(dist.broadcast_tensors(&tensors)?) {
            var.set(&value)?;
        }
    }
    let mut metrics = if main { Some(MetricsWriter::open(&metrics_path, opts.resume.is_none())?) } else { None };
    let mut accumulator = GradAccumulator::new(params);
    let progress = Progress::new(stage.name(), total, first_step, opts.show_progress && main);
    let start = Instant::now();
    let (mut first_loss, mut last_loss, mut tokens_total) = (f64::NAN, f64::NAN, 0usize);
    let mut steps_done = total;
    for step in first_step..total {
        let step_start = Instant::now();
        let lr = plan.lr(opts.lr_schedule, opts.lr, step);
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        let mut extra = std::collections::BTreeMap::new();
        let (first_micro, micro_batches) = (plan.micro_before(step), plan.micro_batches(step));
        for micro in first_micro..first_micro + micro_batches {
            let batch = stage.next_batch()?;
            let dropout = Some(opts.seed ^ (micro as u64).wrapping_mul(0x9E37_79B9) ^ (dist.rank() as u64) << 48);
            let mut loss = stage.loss(model, &batch, dropout)?;
            if dist.world_size() > 1 {
                // This rank's share of the global mean: Σ_rank loss·w_rank/W = the mean over all ranks'
                // supervised tokens (or pairs), whatever the split.
                let weight = stage.weight(&batch);
                let global = dist.all_reduce_f64(&[weight])?[0];
                loss = (loss * if global > 0.0 { weight / global } else { 0.0 })?;
            }
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                bail!("loss became {value} at step {step}; lower --lr or check the data");
            }
            // Mean over the window's micro-batches: each contributes loss/n to the gradient.
            let grads = (loss / micro_batches as f64)?.backward()?;
            accumulator.add(params, &grads)?;
            loss_sum += value;
            tokens += stage.tokens(&batch);
            for (key, v) in stage.batch_metrics() {
                *extra.entry(key).or_insert(0.0) += v / micro_batches as f64;
            }
        }
        // Gradients summed over ranks before clipping: every rank takes the same step.
        let grads = dist.all_reduce_tensors(&accumulator.take(params)?)?;
        let grad_norm = grad_norm(&grads)?;
        optimizer.step(&grads, lr, clip_factor(grad_norm, opts.grad_clip))?;
        let (loss_sum, tokens) = global_figures(dist, loss_sum, tokens, &mut extra)?;
        let loss = loss_sum / micro_batches as f64;
        if first_loss.is_nan() {
            first_loss = loss;
        }
        last_loss = loss;
        tokens_total += tokens;
        let step_secs = step_start.elapsed().as_secs_f64();
        let row = StepMetrics {
            step: step + 1,
            epoch: stage.cursor().epoch,
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_sec: tokens as f64 / step_secs.max(1e-9),
            elapsed_s: start.elapsed().as_secs_f64(),
            extra,
        };
        if let Some(metrics) = metrics.as_mut() {
            metrics.write(&row)?;
        }
        if let Some(events) = events.as_mut() {
            let mut scalars = vec![
                ("loss", row.loss),
                ("lr", row.lr),
                ("grad_norm", row.grad_norm),
                ("tokens_per_sec", row.tokens_per_sec),
            ];
            scalars.extend(row.extra.iter().map(|(k, v)| (k.as_str(), *v)));
            events.scalars(row.step as u64, &scalars)?;
        }
        progress.update(&row);
        // Rank 0's clock decides, so every rank stops after the same step.
        let out_of_time = opts.time_limit_s.is_some_and(|limit| start.elapsed().as_secs_f64() >= limit);
        let out_of_time = dist.all_reduce_f64(&[if out_of_time && main { 1.0 } else { 0.0 }])?[0] > 0.0;
        let done = step + 1 == total || out_of_time;
        if main && (done || (opts.save_every > 0 && (step + 1) % opts.save_every == 0)) {
            let state = RunState { step: step + 1, total_steps: total, cursor: stage.cursor(), seed: opts.seed };
            save(model, params, &optimizer, &state, opts, stage.name(), stage.carried()?)?;
            if let (Some(events), Some(tokenizer)) = (events.as_mut(), samples_tokenizer.as_ref()) {
                log_samples(events, model, tokenizer, step + 1, stage.name() != "pretrain")?;
            }
        }
        if out_of_time {
            steps_done = step + 1;
            break;
        }
    }
    progress.finish();
    dist.barrier()?; // the last checkpoint is written when any rank returns
    let elapsed = start.elapsed().as_secs_f64();
    Ok(TrainSummary {
        steps: steps_done,
        first_loss,
        final_loss: last_loss,
        tokens_per_sec: tokens_total as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
    })
}

/// The step's logged figures over all ranks: the loss (already each rank's share of the global
/// mean) and tokens summed, the stage's extra figures averaged. One all-reduce.
fn global_figures(
    dist: &Dist,
    loss_sum: f64,
    tokens: usize,
    extra: &mut std::collections::BTreeMap<String, f64>,
) -> Result<(f64, usize)> {
    if dist.world_size() == 1 {
        return Ok((loss_sum, tokens));
    }
    let mut values = vec![loss_sum, tokens as f64];
    values.extend(extra.values());
    let summed = dist.all_reduce_f64(&values)?;
    for (v, s) in extra.values_mut().zip(&summed[2..]) {
        *v = s / dist.world_size() as f64;
    }
    Ok((summed[0], summed[1].round() as usize))
}

/// Drops metrics lines past `step` (written after the checkpoint a resumed run continues from),
/// keeping the others byte for byte.
fn keep_metrics_up_to(path: &Path, step: usize) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: StepMetrics = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: expected a metrics object", path.display(), i + 1))?;
        if row.step <= step {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    checkpoint::atomic_write(path, |w| Ok(w.write_all(kept.as_bytes())?))
}

/// Greedy answers to [`crate::report::SAMPLE_PROMPTS`] as a TensorBoard text at `step`.
fn log_samples(
    events: &mut super::tensorboard::EventWriter,
    model: &MiniMindForCausalLM,
    tokenizer: &crate::Tokenizer,
    step: usize,
    chat: bool,
) -> Result<()> {
    let prompts: Vec<String> = crate::report::SAMPLE_PROMPTS.iter().map(|s| s.to_string()).collect();
    let answers = crate::report::sample_answers(model, tokenizer, &prompts, chat, 32)?;
    let text: Vec<String> = answers.iter().map(|(p, a)| format!("**{p}** → {a}")).collect();
    events.text(step as u64, "samples", &text.join("\n\n"))
}

/// Writes the model folder, the resume state and the chart.
fn save(
    model: &MiniMindForCausalLM,
    params: &Params,
    optimizer: &AdamW,
    state: &RunState,
    opts: &TrainOptions,
    title: &str,
    carried: Vec<(String, Tensor)>,
) -> Result<()> {
    let out = opts.out_dir.as_path();
    match &opts.output {
        ModelOutput::Full => checkpoint::save_model(out, model)?,
        ModelOutput::Adapter(config) => crate::model::lora::save(out, model, config)?,
        ModelOutput::FullWith(names) => {
            let extra = params.entries.iter().filter(|(n, _)| names.contains(n));
            let extra = extra.map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            checkpoint::save_model_with(out, model, extra)?
        }
    }
    resume::save(out, state, params, optimizer.state_tensors(params)?, carried)?;
    let rows = crate::train::metrics::read_metrics(&out.join("metrics.jsonl"))?;
    write_chart(&rows, title, &out.join("loss.png"))
}

/// A progress bar on a terminal; a plain log line every ~5% otherwise (CI, pipes).
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    first: usize,
}

impl Progress {
    fn new(name: &str, total: usize, first_step: usize, show: bool) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_position(first_step as u64);
            let style = ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(name.to_string());
            bar
        });
        if show && bar.is_none() {
            match first_step {
                0 => eprintln!("{name}: {total} steps"),
                s => eprintln!("{name}: resuming at step {s} of {total}"),
            }
        }
        Self { bar: if show { bar } else { None }, total: if show { total } else { 0 }, first: first_step }
    }

    fn update(&self, m: &StepMetrics) {
        let msg = format!("loss {:.4} lr {:.2e} {:.0} tok/s", m.loss, m.lr, m.tokens_per_sec);
        if let Some(bar) = &self.bar {
            bar.set_position(m.step as u64);
            bar.set_message(msg);
        } else if self.total > 0 && (m.step.is_multiple_of((self.total / 20).max(1)) || m.step == self.total) {
            let eta = m.elapsed_s / (m.step - self.first) as f64 * (self.total - m.step) as f64;
            eprintln!("step {}/{} {msg} ({:.0}s, eta {:.0}s)", m.step, self.total, m.elapsed_s, eta);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
