//! Training loop, optimizer, checkpoints, sampling.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::data::LmBatch;
use minimind::infer::{generate, sampler::apply_repetition_penalty, Sampler, SamplingParams};
use minimind::model::checkpoint::{atomic_write, load_model, save_model};
use minimind::model::{DropoutSeed, MiniMindForCausalLM};
use minimind::train::lm::lm_loss;
use minimind::train::optim::{clip_factor, grad_norm, LrSchedule};
use minimind::train::{train, Stage, StepPlan, TrainOptions};

/// The same batch over and over: the loss must fall.
struct RepeatedBatch(LmBatch);

impl Stage for RepeatedBatch {
    type Batch = ();
    fn name(&self) -> &str {
        "repeat"
    }
    fn batches_per_epoch(&self) -> usize {
        1
    }
    fn next_batch(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    fn loss(&self, model: &MiniMindForCausalLM, _: &(), dropout: DropoutSeed) -> anyhow::Result<Tensor> {
        lm_loss(model, &self.0, dropout)
    }
    fn tokens(&self, _: &()) -> usize {
        self.0.tokens()
    }
    fn cursor(&self) -> minimind::data::DataCursor {
        Default::default()
    }
    fn seek(&mut self, _: minimind::data::DataCursor) {}
}

fn options(out: &std::path::Path, steps: usize) -> TrainOptions {
    TrainOptions {
        accumulation_steps: 2,
        lr: 3e-3,
        lr_schedule: LrSchedule::Minimind3,
        weight_decay: 0.01,
        max_steps: Some(steps),
        ..train_options(out)
    }
}

#[test]
fn loss_falls_on_a_repeated_batch_and_metrics_are_written() {
    let (model, params) = micro_model(2);
    let ids = random_ids(2, 17, 97, 3);
    let rows: Vec<(Vec<u32>, usize)> = ids.to_vec2::<u32>().unwrap().into_iter().map(|r| (r, 17)).collect();
    let mut stage = RepeatedBatch(LmBatch::from_rows(&rows, &Device::Cpu).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let summary = train(&model, &params, &mut stage, &options(dir.path(), 30)).unwrap();
    assert!(summary.final_loss < summary.first_loss - 1.0, "{summary:?}");
    let metrics = minimind::train::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 30);
    assert!((metrics[0].lr - 3e-3).abs() < 1e-5, "minimind-3's first step is just under lr");
    assert!(dir.path().join("loss.png").exists() && dir.path().join("model.safetensors").exists());
}

/// MiniMind2: `lr/10 + 0.5·lr·(1 + cos(π·t/T))`, t = 0…T−1 (spec §6.1).
fn minimind2_lr(lr: f64, t: usize, total: usize) -> f64 {
    lr / 10.0 + 0.5 * lr * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos())
}

/// minimind-3: `lr·(0.1 + 0.45·(1 + cos(π·t/T)))`, t = 1…T.
fn minimind3_lr(lr: f64, t: usize, total: usize) -> f64 {
    lr * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * t as f64 / total as f64).cos()))
}

#[test]
fn lr_schedules_follow_minimind_formulas() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
    // MiniMind2 starts at 1.1·lr; minimind-3's first (1-based) step is just under lr, its last 0.1·lr.
    assert!(close(LrSchedule::Minimind2.at(1e-3, 0, 100), 1.1e-3));
    assert!(close(LrSchedule::Minimind3.at(1e-3, 99, 100), 1e-4));
    for t in [0, 1, 50, 99] {
        assert!(close(LrSchedule::Minimind2.at(5e-4, t, 100), minimind2_lr(5e-4, t, 100)));
        assert!(close(LrSchedule::Minimind3.at(5e-4, t, 100), minimind3_lr(5e-4, t + 1, 100)));
    }
    assert_eq!("minimind3".parse::<LrSchedule>().unwrap(), LrSchedule::Minimind3);
    assert!("cosine".parse::<LrSchedule>().unwrap_err().contains("minimind2, minimind3"));
}

/// A stage of `n` identical micro-batches per epoch that counts the batches it hands out.
struct CountingStage {
    batch: LmBatch,
    per_epoch: usize,
    handed_out: usize,
}

impl Stage for CountingStage {
    type Batch = ();
    fn name(&self) -> &str {
        "count"
    }
    fn batches_per_epoch(&self) -> usize {
        self.per_epoch
    }
    fn next_batch(&mut self) -> anyhow::Result<()> {
        self.handed_out += 1;
        Ok(())
    }
    fn loss(&self, model: &MiniMindForCausalLM, _: &(), dropout: DropoutSeed) -> anyhow::Result<Tensor> {
        lm_loss(model, &self.batch, dropout)
    }
    fn tokens(&self, _: &()) -> usize {
        self.batch.tokens()
    }
    fn cursor(&self) -> minimind::data::DataCursor {
        minimind::data::DataCursor { epoch: self.handed_out / self.per_epoch, row: self.handed_out % self.per_epoch }
    }
    fn seek(&mut self, _: minimind::data::DataCursor) {}
}

fn counting_stage(per_epoch: usize) -> CountingStage {
    let rows: Vec<(Vec<u32>, usize)> =
        random_ids(1, 9, 97, 5).to_vec2::<u32>().unwrap().into_iter().map(|r| (r, 9)).collect();
    CountingStage { batch: LmBatch::from_rows(&rows, &Device::Cpu).unwrap(), per_epoch, handed_out: 0 }
}

/// Runs `stage` and returns the per-step (lr, tokens) of metrics.jsonl.
fn run_steps(stage: &mut CountingStage, opts: TrainOptions) -> Vec<(f64, usize)> {
    let (model, params) = micro_model(8);
    train(&model, &params, stage, &opts).unwrap();
    let metrics = minimind::train::metrics::read_metrics(&opts.out_dir.join("metrics.jsonl")).unwrap();
    metrics.iter().map(|m| (m.lr, m.tokens)).collect()
}

#[test]
fn lr_is_set_per_micro_step_first_second_and_last() {
    let dir = tempfile::tempdir().unwrap();
    let base = TrainOptions { accumulation_steps: 1, max_steps: None, epochs: 1, lr: 1e-3, ..options(dir.path(), 0) };
    for (schedule, formula, offset) in [
        (LrSchedule::Minimind2, minimind2_lr as fn(f64, usize, usize) -> f64, 0),
        (LrSchedule::Minimind3, minimind3_lr, 1),
    ] {
        let steps = run_steps(&mut counting_stage(6), TrainOptions { lr_schedule: schedule, ..base.clone() });
        assert_eq!(steps.len(), 6);
        for (i, t) in [(0, 0), (1, 1), (5, 5)] {
            assert!((steps[i].0 - formula(1e-3, t + offset, 6)).abs() < 1e-15, "{schedule} step {i}: {}", steps[i].0);
        }
    }
    // With accumulation the optimizer takes the rate of its window's last micro-step: 6 micro-steps
    // in windows of 2 → micro-steps 1, 3, 5.
    let opts = TrainOptions { accumulation_steps: 2, lr_schedule: LrSchedule::Minimind2, ..base.clone() };
    let steps = run_steps(&mut counting_stage(6), opts);
    for (step, t) in [(0, 1), (1, 3), (2, 5)] {
        assert!((steps[step].0 - minimind2_lr(1e-3, t, 6)).abs() < 1e-15, "step {step}: {steps:?}");
    }
}

#[test]
fn an_epochs_last_window_is_short_and_never_takes_the_next_epochs_batches() {
    let dir = tempfile::tempdir().unwrap();
    // 10 batches per epoch, accumulation 8, one epoch: steps of 8 and 2 micro-batches — 10 in all.
    let opts = TrainOptions { accumulation_steps: 8, max_steps: None, epochs: 1, ..options(dir.path(), 0) };
    let mut stage = counting_stage(10);
    let steps = run_steps(&mut stage, opts.clone());
    assert_eq!(stage.handed_out, 10);
    let per_batch = stage.batch.tokens();
    assert_eq!(steps.iter().map(|s| s.1).collect::<Vec<_>>(), [8 * per_batch, 2 * per_batch]);
    // Two epochs: 8, 2, 8, 2; the schedule spans 20 micro-steps.
    let mut stage = counting_stage(10);
    let steps = run_steps(&mut stage, TrainOptions { epochs: 2, ..opts });
    assert_eq!(stage.handed_out, 20);
    assert_eq!(steps.len(), 4);
    let plan = StepPlan { batches_per_epoch: 10, accumulation: 8, total_steps: 4 };
    assert_eq!((0..4).map(|s| plan.micro_batches(s)).collect::<Vec<_>>(), [8, 2, 8, 2]);
    assert_eq!(plan.total_micro(), 20);
}

#[test]
fn gradient_clipping() {
    let grads = vec![Tensor::new(&[3f32, 0.], &Device::Cpu).unwrap(), Tensor::new(&[4f32], &Device::Cpu).unwrap()];
    // PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when the global norm exceeds it.
    let norm = grad_norm(&grads).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let scaled = (&grads[0] * clip_factor(norm, 1.0)).unwrap();
    assert!((scaled.to_vec1::<f32>().unwrap()[0] - 0.6).abs() < 1e-5);
    assert_eq!(clip_factor(0.3, 1.0), 1.0, "a small gradient is left alone");
    assert_eq!(clip_factor(5.0, 0.0), 1.0, "max_norm 0 disables clipping");
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let (model, _) = micro_model(4);
    let dir = tempfile::tempdir().unwrap();
    save_model(dir.path(), &model).unwrap();
    let (loaded, _) = load_model(dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    let ids = random_ids(1, 10, 97, 9);
    let a = model.forward(&ids, None).unwrap();
    let b = loaded.forward(&ids, None).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // A tied checkpoint may also carry lm_head.weight (MiniMind .pth style) if it equals the embedding.
    let mut tensors =
        minimind::model::checkpoint::load_tensors(&dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), embed.clone());
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    minimind::model::checkpoint::save_tensors(&dir.path().join("model.safetensors"), &list).unwrap();
    assert!(load_model(dir.path(), &Device::Cpu, DType::F32, false).is_ok());
}

#[test]
fn checkpoint_mismatches_are_listed() {
    let (model, _) = micro_model(4);
    let dir = tempfile::tempdir().unwrap();
    save_model(dir.path(), &model).unwrap();
    let mut tensors =
        minimind::model::checkpoint::load_tensors(&dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("model.norm.weight");
    tensors
        .insert("model.layers.0.mlp.up_proj.weight".into(), Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap());
    tensors.insert("model.extra.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
    let list: Vec<(String, Tensor)> = tensors.into_iter().collect();
    minimind::model::checkpoint::save_tensors(&dir.path().join("model.safetensors"), &list).unwrap();
    let err = format!("{:#}", load_model(dir.path(), &Device::Cpu, DType::F32, false).err().unwrap());
    assert!(err.contains("model.norm.weight: missing"), "{err}");
    assert!(err.contains("model.layers.0.mlp.up_proj.weight: shape [3, 3], expected [192, 64]"), "{err}");
    assert!(err.contains("model.extra.weight: unexpected tensor"), "{err}");
}

#[test]
fn interrupted_write_leaves_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    atomic_write(&path, |w| Ok(w.write_all(b"complete version 1")?)).unwrap();
    // The writer dies halfway (as a kill would): the target keeps version 1 and no temp file remains.
    let result = atomic_write(&path, |w| {
        w.write_all(b"half of vers")?;
        anyhow::bail!("killed")
    });
    assert!(result.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"complete version 1");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn sampling_follows_hf_semantics() {
    let logits = [1.0f32, 3.0, 2.0, -1.0];
    let mut greedy = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    assert_eq!(greedy.sample(&logits, &[]).unwrap(), 1);
    // top-k 1 and a tiny top-p both reduce to the most likely token.
    let mut top1 =
        Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0, ..Default::default() }).unwrap();
    let mut topp =
        Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.01, ..Default::default() }).unwrap();
    for _ in 0..20 {
        assert_eq!(top1.sample(&logits, &[]).unwrap(), 1);
        assert_eq!(topp.sample(&logits, &[]).unwrap(), 1);
    }
    // top-p keeps the token that crosses p: p = 0.7 keeps {1, 2} (0.66 + 0.24 > 0.7).
    let mut p07 =
        Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.7, seed: 3, ..Default::default() }).unwrap();
    let picks: std::collections::HashSet<u32> = (0..200).map(|_| p07.sample(&logits, &[]).unwrap()).collect();
    assert_eq!(picks, [1, 2].into_iter().collect());
    // Sign-aware repetition penalty: positive ÷ p, negative × p, once per distinct token.
    let mut l = logits.to_vec();
    apply_repetition_penalty(&mut l, &[1, 3, 1], 2.0);
    assert_eq!(l, [1.0, 1.5, 2.0, -2.0]);
    // Same seed, same draws.
    let draw = |seed| {
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed, ..Default::default() })
            .unwrap();
        (0..10).map(|_| s.sample(&logits, &[]).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
}

#[test]
fn greedy_generation_matches_argmax_of_full_forward() {
    let (model, _) = micro_model(6);
    let prompt = [1u32, 5, 9];
    let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let out = generate(&model, &prompt, 6, &[], &mut sampler, |_| Ok(true)).unwrap();
    assert_eq!(out.tokens.len(), 6);
    assert_eq!(out.finish_reason, minimind::infer::FinishReason::Length);
    // Recompute each token without the cache.
    let mut seq = prompt.to_vec();
    for &tok in &out.tokens {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<f32> = model.forward_last(&ids, None).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        assert_eq!(minimind::infer::sampler::argmax(&logits), tok);
        seq.push(tok);
    }
    // A stop id ends generation without being emitted.
    let stop = out.tokens[2];
    let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap();
    let stopped = generate(&model, &prompt, 6, &[stop], &mut sampler, |_| Ok(true)).unwrap();
    assert_eq!(stopped.finish_reason, minimind::infer::FinishReason::Stop);
    assert!(!stopped.tokens.contains(&stop));
}

#[test]
fn resumed_run_matches_an_uninterrupted_one_exactly() {
    use minimind::data::pretrain::{pretrain_data, PretrainEncoding};
    use minimind::data::tokenizer::Tokenizer;
    use minimind::train::lm::LmStage;
    let tok = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let enc = PretrainEncoding { max_seq_len: 24, wrap: true, bos: 1, eos: 2, pad: 0 };
    let data = || pretrain_data(&fixture("pretrain_en_austen_16.jsonl"), false, enc, &tok, 3, 9).unwrap();
    let config = micro_config(6400, 4, 2, 16);
    let opts = |dir: &std::path::Path| TrainOptions {
        max_steps: Some(8),
        save_every: 4,
        accumulation_steps: 4,
        lr: 2e-3,
        ..options(dir, 8)
    };
    // Straight through: 8 steps over 6 batches per epoch in windows of 4 and 2, so the data wraps
    // into later epochs and every other step is a short window.
    let straight = tempfile::tempdir().unwrap();
    let (model, params) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let mut stage = LmStage::new("pretrain", data(), Device::Cpu);
    train(&model, &params, &mut stage, &opts(straight.path())).unwrap();
    // Interrupted: the same run stopped after its step-4 checkpoint (a later crash loses nothing
    // saved), then resumed from the folder.
    let resumed = tempfile::tempdir().unwrap();
    let (model, params) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let mut stage = LmStage::new("pretrain", data(), Device::Cpu);
    // Run 4 steps of the 8-step schedule, dying in step 5 after the step-4 checkpoint.
    train_until(&model, &params, &mut stage, &opts(resumed.path()), 4);
    let (model, params, resume) = minimind::train::resume::load_run(resumed.path(), &Device::Cpu).unwrap();
    assert_eq!(resume.state.step, 4);
    let mut stage = LmStage::new("pretrain", data(), Device::Cpu);
    train(&model, &params, &mut stage, &TrainOptions { resume: Some(resume), ..opts(resumed.path()) }).unwrap();
    let a = minimind::train::metrics::read_metrics(&straight.path().join("metrics.jsonl")).unwrap();
    let b = minimind::train::metrics::read_metrics(&resumed.path().join("metrics.jsonl")).unwrap();
    let losses = |m: &[minimind::train::metrics::StepMetrics]| {
        m.iter().map(|r| (r.step, r.loss, r.lr, r.grad_norm)).collect::<Vec<_>>()
    };
    assert_eq!(losses(&a), losses(&b), "loss, lr and grad-norm sequences must be identical");
    let wa =
        minimind::model::checkpoint::load_tensors(&straight.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let wb =
        minimind::model::checkpoint::load_tensors(&resumed.path().join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in &wa {
        assert_eq!(max_abs_diff(t, &wb[name]), 0.0, "{name} differs");
    }
}

/// `--tensorboard`: every step's metrics as TensorBoard scalars, in TFRecord-framed `Event` protos
/// read back here with an independent decoder (CRCs checked, fields walked by wire type).
#[test]
fn tensorboard_events_hold_every_metric_of_every_step() {
    use minimind::train::tensorboard::crc32c;
    assert_eq!(crc32c(b"123456789"), 0xE306_9283, "the CRC-32C check value");
    let (model, params) = micro_model(2);
    let ids = random_ids(2, 17, 97, 3);
    let rows: Vec<(Vec<u32>, usize)> = ids.to_vec2::<u32>().unwrap().into_iter().map(|r| (r, 17)).collect();
    let mut stage = RepeatedBatch(LmBatch::from_rows(&rows, &Device::Cpu).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let tb = dir.path().join("tb");
    train(&model, &params, &mut stage, &TrainOptions { tensorboard: Some(tb.clone()), ..options(dir.path(), 3) })
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&tb).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    let bytes = std::fs::read(&files[0]).unwrap();
    let masked = |d: &[u8]| crc32c(d).rotate_right(15).wrapping_add(0xa282_ead8);
    let (mut at, mut events) = (0, Vec::new());
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked(&bytes[at..at + 8]));
        let data = &bytes[at + 12..at + 12 + len];
        assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked(data));
        events.push(proto_fields(data));
        at += 16 + len;
    }
    assert_eq!(events[0].iter().find(|(f, _)| *f == 3).map(|(_, v)| v.clone()), Some(b"brain.Event:2".to_vec()));
    let metrics = minimind::train::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(events.len(), 1 + metrics.len());
    for (event, row) in events[1..].iter().zip(&metrics) {
        let step = event.iter().find(|(f, _)| *f == 2).map(|(_, v)| v[0] as usize);
        assert_eq!(step, Some(row.step));
        let summary = &event.iter().find(|(f, _)| *f == 5).unwrap().1;
        let scalars: Vec<(String, f32)> = proto_fields(summary)
            .into_iter()
            .map(|(_, value)| {
                let fields = proto_fields(&value);
                let tag = String::from_utf8(fields[0].1.clone()).unwrap();
                (tag, f32::from_le_bytes(fields[1].1[..4].try_into().unwrap()))
            })
            .collect();
        let expected =
            [("loss", row.loss), ("lr", row.lr), ("grad_norm", row.grad_norm), ("tokens_per_sec", row.tokens_per_sec)];
        for (tag, value) in expected {
            assert!(scalars.contains(&(tag.to_string(), value as f32)), "{tag} {value} in {scalars:?}");
        }
    }
}

/// A text summary is an `Event` whose `Summary.Value` names the text plugin and holds one string.
#[test]
fn tensorboard_text_summaries_name_the_text_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let mut events = minimind::train::tensorboard::EventWriter::create(dir.path()).unwrap();
    events.text(7, "samples", "**你好** → hi").unwrap();
    let bytes = std::fs::read(&events.path).unwrap();
    let first = 16 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let len = u64::from_le_bytes(bytes[first..first + 8].try_into().unwrap()) as usize;
    let event = proto_fields(&bytes[first + 12..first + 12 + len]);
    assert_eq!(event.iter().find(|(f, _)| *f == 2).map(|(_, v)| v[0]), Some(7));
    let summary = proto_fields(&event.iter().find(|(f, _)| *f == 5).unwrap().1);
    let value = proto_fields(&summary[0].1);
    let field = |n: u64| value.iter().find(|(f, _)| *f == n).unwrap().1.clone();
    assert_eq!(field(1), b"samples");
    let plugin = proto_fields(&proto_fields(&field(9))[0].1);
    assert_eq!(plugin[0].1, b"text");
    let tensor = proto_fields(&field(8));
    assert_eq!(tensor[0].1[0], 7, "DT_STRING");
    assert_eq!(tensor.iter().find(|(f, _)| *f == 8).unwrap().1, "**你好** → hi".as_bytes());
}

/// A protobuf message's fields as (number, payload): varints as their value's low byte first bytes,
/// fixed64/fixed32 as their bytes, length-delimited as their contents.
fn proto_fields(mut data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    fn varint(data: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = data[0];
            *data = &data[1..];
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data);
        let payload = match key & 7 {
            0 => varint(&mut data).to_le_bytes().to_vec(),
            1 => {
                let (v, rest) = data.split_at(8);
                data = rest;
                v.to_vec()
            }
            2 => {
                let len = varint(&mut data) as usize;
                let (v, rest) = data.split_at(len);
                data = rest;
                v.to_vec()
            }
            5 => {
                let (v, rest) = data.split_at(4);
                data = rest;
                v.to_vec()
            }
            other => panic!("wire type {other}"),
        };
        out.push((key >> 3, payload));
    }
    out
}
