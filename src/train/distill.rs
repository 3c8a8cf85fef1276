//! Knowledge distillation. White-box: the student learns the teacher's token distributions,
//! `loss = α·CE + (1 − α)·T²·KL(teacher_T ‖ student_T)` over supervised tokens (softmaxes at
//! temperature T; MiniMind2's defaults α = 0, T = 1). The teacher's vocabulary is cut to the
//! student's, as MiniMind does. Black-box: a teacher writes answers in the SFT format
//! ([`generate_dataset`]), on which the student is fine-tuned with `sft`.

use super::run::{from_model_folder, run_stage, TrainConfig, DISTILL};
use super::stage::{DataStage, StageLoss};
use super::trainer::TrainSummary;
use crate::data::sft::{sft_data, SftEncoding};
use crate::data::tokenizer::{ChatMessage, TextStream, Tokenizer};
use crate::data::{JsonlIndex, LmBatch, LmData};
use crate::infer::{generate, Sampler, SamplingParams};
use crate::model::checkpoint;
use crate::model::{DropoutSeed, MiniMindForCausalLM};
use crate::ops::{self, log_softmax_last_dim, softmax_last_dim};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use std::path::{Path, PathBuf};

/// The distillation loss and its two parts `(total, ce, kd)`; see the module docs.
/// `student` `[N, V]`, `teacher` `[N, V_t ≥ V]` logits, `targets` `[N]`, `mask` `[N]` weights.
pub fn distill_loss(
    student: &Tensor,
    teacher: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    alpha: f64,
    temperature: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let v = student.dim(D::Minus1)?;
    if teacher.dim(D::Minus1)? < v {
        bail!("the teacher's vocabulary ({}) is smaller than the student's ({v})", teacher.dim(D::Minus1)?);
    }
    // Softmax statistics in f32 whatever the compute dtype.
    let teacher = teacher.narrow(D::Minus1, 0, v)?.detach().to_dtype(DType::F32)?;
    let ce = ops::cross_entropy(student, targets, mask)?;
    let student = &student.to_dtype(DType::F32)?;
    let log_student = log_softmax_last_dim(&(student / temperature)?)?;
    let p_teacher = softmax_last_dim(&(&teacher / temperature)?)?;
    let log_teacher = log_softmax_last_dim(&(&teacher / temperature)?)?;
    // KL per token = Σ_j p_t (log p_t − log p_s); masked mean over tokens; × T².
    let kl = (&p_teacher * (log_teacher - log_student)?)?.sum(D::Minus1)?;
    let weight = mask.sum_all()?.maximum(1e-12)?;
    let kd = ((kl * mask)?.sum_all()?.broadcast_div(&weight)? * (temperature * temperature))?;
    let total = ((&ce * alpha)? + (&kd * (1.0 - alpha))?)?;
    Ok((total, ce, kd))
}

/// White-box distillation's loss against a frozen teacher (plain tensors: no graph, no gradient);
/// logs its two parts.
pub struct DistillLoss {
    pub teacher: MiniMindForCausalLM,
    pub alpha: f64,
    pub temperature: f64,
}

impl StageLoss for DistillLoss {
    fn loss(
        &self,
        model: &MiniMindForCausalLM,
        batch: &LmBatch,
        dropout: DropoutSeed,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let student = model.forward_train(&batch.x, dropout)?;
        let teacher = self.teacher.forward_flat(&batch.x)?;
        let (y, mask) = (batch.y.flatten_all()?, batch.mask.flatten_all()?);
        let (total, ce, kd) = distill_loss(&student.logits, &teacher, &y, &mask, self.alpha, self.temperature)?;
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
        let mut logged = vec![("ce".into(), scalar(&ce)?), ("kd".into(), scalar(&kd)?)];
        logged.extend(student.moe.metrics()?);
        // A MoE student's aux loss joins the distillation loss.
        Ok((student.moe.add_aux(total)?, logged))
    }
}

/// SFT data and the distillation loss.
pub type DistillStage<'a> = DataStage<LmData<'a>, DistillLoss>;

impl<'a> DistillStage<'a> {
    pub fn new(data: LmData<'a>, teacher: MiniMindForCausalLM, alpha: f64, temperature: f64, device: Device) -> Self {
        DataStage::with_loss("distill", data, DistillLoss { teacher, alpha, temperature }, device)
    }
}

/// The prompt of a prompts-file line: `{"prompt": "…"}`, or an SFT row whose messages up to the last
/// user turn are kept (a trailing assistant answer is dropped, to be rewritten by the teacher).
pub fn parse_prompt(line: &str) -> Result<Vec<ChatMessage>, String> {
    #[derive(serde::Deserialize)]
    struct Prompt {
        prompt: String,
    }
    if let Ok(p) = serde_json::from_str::<Prompt>(line) {
        return Ok(vec![ChatMessage::new("user", &p.prompt)]);
    }
    let expected = r#"expected {"prompt": "…"} or {"conversations": [{"role": "user", "content": "…"}, …]}"#;
    #[derive(serde::Deserialize)]
    struct Row {
        conversations: Vec<ChatMessage>,
    }
    let row: Row = serde_json::from_str(line).map_err(|e| format!("{expected} ({e})"))?;
    let last_user =
        row.conversations.iter().rposition(|m| m.role == "user").ok_or(format!("no user message; {expected}"))?;
    Ok(row.conversations[..=last_user].to_vec())
}

/// Black-box distillation data: the teacher answers every prompt; rows are written as SFT lines
/// `{"conversations": [..., {"role": "assistant", "content": answer}]}`. Returns the row count.
pub fn generate_dataset(
    teacher: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    prompts: &Path,
    out: &Path,
    max_new_tokens: usize,
    sampling: SamplingParams,
) -> Result<usize> {
    let index = JsonlIndex::build(prompts, false, |line| parse_prompt(line).map(|_| ()))?;
    let stops = tokenizer.stop_ids()?;
    let mut rows = String::new();
    for i in 0..index.len() {
        let mut messages = parse_prompt(&index.read(i)?).map_err(anyhow::Error::msg)?;
        let prompt = tokenizer.encode(&tokenizer.render_chat(&messages, true)?)?;
        let mut sampler = Sampler::new(SamplingParams { seed: sampling.seed + i as u64, ..sampling.clone() })?;
        let mut stream = TextStream::new(tokenizer);
        let mut answer = String::new();
        generate(teacher, &prompt, max_new_tokens, &stops, &mut sampler, |id| {
            answer.push_str(&stream.push(id)?.unwrap_or_default());
            Ok(true)
        })
        .with_context(|| format!("{}:{}", prompts.display(), index.line_number(i)))?;
        answer.push_str(&stream.finish()?.unwrap_or_default());
        messages.push(ChatMessage::new("assistant", answer.trim()));
        rows.push_str(&serde_json::json!({ "conversations": messages }).to_string());
        rows.push('\n');
        eprint!("\r{} / {} answers", i + 1, index.len());
    }
    eprintln!();
    crate::model::checkpoint::atomic_write(out, |w| Ok(w.write_all(rows.as_bytes())?))?;
    Ok(index.len())
}

/// `minimind distill`: white-box distillation settings.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// The student model folder (trained; its tokenizer is used).
    pub student: PathBuf,
    /// The teacher model folder (frozen; vocabulary at least the student's, cut to it).
    pub teacher: PathBuf,
    /// SFT-format data.
    pub data: PathBuf,
    /// Weight of the cross-entropy on the data; 1 − α goes to the KL to the teacher (0).
    pub alpha: f64,
    /// Softmax temperature of the KL term (1).
    pub temperature: f64,
    pub train: TrainConfig,
}

/// White-box distillation of `teacher` into `student`.
pub fn distill(c: &DistillConfig) -> Result<TrainSummary> {
    let t = &c.train;
    t.check()?;
    if !((0.0..=1.0).contains(&c.alpha) && c.temperature.is_finite() && c.temperature > 0.0) {
        bail!("--alpha must be in [0, 1] and --temperature > 0");
    }
    let tokenizer = Tokenizer::load(&c.student)?;
    let (teacher, _) = checkpoint::load_model(&c.teacher, &t.device, t.precision.dtype(), false)?;
    let (student_config, start) = from_model_folder(&c.student, &t.device)?;
    if teacher.config.vocab_size < student_config.vocab_size {
        bail!(
            "the teacher's vocab_size {} is smaller than the student's {}",
            teacher.config.vocab_size,
            student_config.vocab_size
        );
    }
    let max_len = t.max_seq_len(&DISTILL, &student_config)?.min(teacher.config.max_position_embeddings);
    let encoding = SftEncoding::for_tokenizer(&tokenizer, max_len)?;
    let data = sft_data(&c.data, t.skip_bad_lines, encoding, &tokenizer, t.batch_size(&DISTILL)?, t.seed)?;
    let mut stage = DistillStage::new(data, teacher, c.alpha, c.temperature, t.device.clone());
    run_stage(t, &DISTILL, &mut stage, start)
}
