//! Multiple-choice accuracy, scored as the usual harnesses (lm-evaluation-harness, C-Eval's own
//! scripts) do: every choice's continuation is scored by its log-likelihood after the prompt and the
//! most likely one is the model's answer — nothing is generated, so a small model's formatting
//! cannot hide what it knows.
//!
//! The prompt (`K` = `--shots` examples from the subject's dev rows, first ones first):
//!
//! ```text
//! 以下是关于{subject}的单项选择题，请直接给出正确答案的选项。
//!
//! {dev question 1}
//! A. {choice A}
//! B. {choice B}
//! …
//! 答案：{right letter}
//!
//! … (K examples)
//! {question}
//! A. {choice A}
//! …
//! 答案：
//! ```
//!
//! `{subject}` is the file's subject name with `_` as spaces. Raw prompts start with the BOS token,
//! as pretraining rows do; `--chat` sends everything above `答案：` as the user's turn through the
//! model's chat template (thinking closed) and puts `答案：` at the start of the assistant's answer.
//! Scoring:
//! - [`ChoiceScoring::Letter`] (default): the continuation is the letter (`A`, `B`, …): Σ log p.
//! - [`ChoiceScoring::Text`]: the continuation is the choice's own text, its Σ log p divided by its
//!   UTF-8 bytes (the harness's `acc_norm`), so long choices are not penalized for their length.
//!
//! A prompt longer than `--max-seq-len` drops examples until it fits, then keeps its last tokens.

use super::benchmark::{letter, Question, Subject};
use crate::data::{EncodedRow, LmBatch};
use crate::train::dpo::{sequence_log_probs, SeqLogProb};
use crate::{MiniMindForCausalLM, Tokenizer};
use anyhow::{bail, Result};
use serde::Serialize;

/// What a choice's score is the likelihood of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChoiceScoring {
    #[default]
    Letter,
    Text,
}

named_enum!(ChoiceScoring { Letter => "letter", Text => "text" });

#[derive(Debug, Clone)]
pub struct ChoiceOptions {
    /// Few-shot examples per prompt, from the subject's dev rows.
    pub shots: usize,
    pub scoring: ChoiceScoring,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
    pub max_seq_len: usize,
    /// Questions scored per forward pass (each adds one row per choice).
    pub batch: usize,
    /// Score only the first N questions of each subject.
    pub max_questions: Option<usize>,
}

impl Default for ChoiceOptions {
    fn default() -> Self {
        Self { shots: 0, scoring: ChoiceScoring::Letter, chat: false, max_seq_len: 512, batch: 4, max_questions: None }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectResult {
    pub name: String,
    pub correct: usize,
    pub total: usize,
    /// Expected accuracy of a uniform guess: the mean of 1/choices.
    pub chance: f64,
}

impl SubjectResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChoiceResult {
    pub subjects: Vec<SubjectResult>,
    /// Prompts cut to fit `max_seq_len` (fewer examples, or their first tokens dropped).
    pub shortened: usize,
    pub shots: usize,
    pub scoring: String,
}

impl ChoiceResult {
    pub fn questions(&self) -> usize {
        self.subjects.iter().map(|s| s.total).sum()
    }

    /// Over all questions (micro average).
    pub fn accuracy(&self) -> f64 {
        self.subjects.iter().map(|s| s.correct).sum::<usize>() as f64 / self.questions().max(1) as f64
    }

    /// The mean of the subjects' accuracies (macro average, as C-Eval reports).
    pub fn subject_mean(&self) -> f64 {
        self.subjects.iter().map(SubjectResult::accuracy).sum::<f64>() / self.subjects.len().max(1) as f64
    }

    pub fn chance(&self) -> f64 {
        self.subjects.iter().map(|s| s.chance * s.total as f64).sum::<f64>() / self.questions().max(1) as f64
    }
}

/// The instruction line and the examples; `question`'s block is appended by [`question_block`].
pub fn render_prompt(subject: &str, shots: &[Question], question: &Question) -> String {
    let mut prompt = format!("以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n", subject.replace('_', " "));
    for shot in shots {
        prompt += &question_block(shot);
        prompt.push(letter(shot.answer));
        prompt += "\n\n";
    }
    prompt + &question_block(question)
}

/// [`render_prompt`] with the subject's first `shots` dev rows as the examples.
pub fn render_prompt_for(subject: &Subject, shots: usize, question: &Question) -> String {
    render_prompt(&subject.name, &subject.dev[..shots.min(subject.dev.len())], question)
}

/// `{question}\nA. {choice}\n…答案：`
pub fn question_block(q: &Question) -> String {
    let mut block = format!("{}\n", q.question);
    for (i, choice) in q.choices.iter().enumerate() {
        block += &format!("{}. {choice}\n", letter(i));
    }
    block + ANSWER
}

const ANSWER: &str = "答案：";

/// The prompt's token ids (see the module docs for `chat`).
fn prompt_ids(tokenizer: &Tokenizer, prompt: &str, chat: bool) -> Result<Vec<u32>> {
    if !chat {
        let mut ids = vec![tokenizer.bos_id()?];
        ids.extend(tokenizer.encode(prompt)?);
        return Ok(ids);
    }
    let user = prompt.strip_suffix(ANSWER).unwrap_or(prompt).trim_end();
    let messages = serde_json::json!([{"role": "user", "content": user}]);
    let rendered =
        tokenizer.apply_chat_template(&messages, true, &crate::data::tokenizer::thinking_kwargs(Some(false)))?;
    tokenizer.encode(&(rendered + ANSWER))
}

/// One question's rows (a prompt followed by each continuation) and what each score is divided by.
struct Scored {
    rows: Vec<(Vec<u32>, usize)>,
    norms: Vec<f64>,
    answer: usize,
    shortened: bool,
}

fn prepare(tokenizer: &Tokenizer, subject: &Subject, q: &Question, o: &ChoiceOptions) -> Result<Scored> {
    let continuations: Vec<String> = match o.scoring {
        ChoiceScoring::Letter => (0..q.choices.len()).map(|i| letter(i).to_string()).collect(),
        ChoiceScoring::Text => q.choices.clone(),
    };
    let encoded = continuations.iter().map(|c| tokenizer.encode(c)).collect::<Result<Vec<_>>>()?;
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
    if encoded.iter().any(Vec::is_empty) || longest + 1 >= o.max_seq_len {
        bail!("{}: a choice encodes to no tokens or to more than --max-seq-len {}", q.source, o.max_seq_len);
    }
    let mut shots = o.shots.min(subject.dev.len());
    let mut ctx = prompt_ids(tokenizer, &render_prompt_for(subject, shots, q), o.chat)?;
    let mut shortened = shots < o.shots;
    while ctx.len() + longest > o.max_seq_len {
        shortened = true;
        if shots == 0 {
            ctx.drain(..ctx.len() + longest - o.max_seq_len);
            break;
        }
        shots -= 1;
        ctx = prompt_ids(tokenizer, &render_prompt_for(subject, shots, q), o.chat)?;
    }
    let rows = encoded.iter().map(|c| ([ctx.as_slice(), c].concat(), c.len())).collect();
    let norms = match o.scoring {
        ChoiceScoring::Letter => vec![1.0; continuations.len()],
        ChoiceScoring::Text => continuations.iter().map(|c| c.len() as f64).collect(),
    };
    Ok(Scored { rows, norms, answer: q.answer, shortened })
}

/// Σ log p of each row's last `len` tokens, for rows of any lengths (right-padded into one batch).
fn continuation_log_probs(model: &MiniMindForCausalLM, rows: &[(Vec<u32>, usize)], pad: u32) -> Result<Vec<f64>> {
    let width = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let encoded: Vec<EncodedRow> = rows
        .iter()
        .map(|(ids, len)| {
            let mut padded = ids.clone();
            padded.resize(width, pad);
            let mask = (0..width).map(|j| if j >= ids.len() - len && j < ids.len() { 1.0 } else { 0.0 }).collect();
            EncodedRow { ids: padded, mask, norm: None }
        })
        .collect();
    let batch = LmBatch::from_encoded(&encoded, model.device())?;
    let scores: Vec<f32> =
        sequence_log_probs(model, &batch, SeqLogProb::Sum)?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    Ok(scores.into_iter().map(f64::from).collect())
}

/// Accuracy of `model` on `subjects`; `progress` is told how many questions are done after each batch.
pub fn score_choices(
    model: &MiniMindForCausalLM,
    tokenizer: &Tokenizer,
    subjects: &[Subject],
    o: &ChoiceOptions,
    mut progress: impl FnMut(usize),
) -> Result<ChoiceResult> {
    if o.batch == 0 || o.max_seq_len < 2 {
        bail!("--batch-size must be ≥ 1 and --max-seq-len ≥ 2");
    }
    if o.shots > 0 {
        if let Some(s) = subjects.iter().find(|s| s.dev.is_empty()) {
            bail!(
                "--shots {}: subject {} has no dev examples (expected a dev/ folder beside the questions)",
                o.shots,
                s.name
            );
        }
    }
    let pad = tokenizer.pad_id().unwrap_or(0);
    let (mut results, mut shortened, mut done) = (Vec::new(), 0, 0);
    for subject in subjects {
        let questions =
            &subject.questions[..o.max_questions.map_or(subject.questions.len(), |n| n.min(subject.questions.len()))];
        let mut correct = 0;
        for chunk in questions.chunks(o.batch) {
            let scored = chunk.iter().map(|q| prepare(tokenizer, subject, q, o)).collect::<Result<Vec<_>>>()?;
            let rows: Vec<_> = scored.iter().flat_map(|s| s.rows.iter().cloned()).collect();
            let mut log_probs = continuation_log_probs(model, &rows, pad)?.into_iter();
            for s in &scored {
                let values: Vec<f64> =
                    s.norms.iter().map(|n| log_probs.next().unwrap_or(f64::NEG_INFINITY) / n).collect();
                correct += usize::from(argmax(&values) == s.answer);
                shortened += usize::from(s.shortened);
            }
            done += chunk.len();
            progress(done);
        }
        let chance =
            questions.iter().map(|q| 1.0 / q.choices.len() as f64).sum::<f64>() / questions.len().max(1) as f64;
        results.push(SubjectResult { name: subject.name.clone(), correct, total: questions.len(), chance });
    }
    Ok(ChoiceResult { subjects: results, shortened, shots: o.shots, scoring: o.scoring.to_string() })
}

/// Index of the largest value, the first on ties.
fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}
