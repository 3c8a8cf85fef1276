#![allow(dead_code)]
pub mod pth;
use candle_core::{DType, Device, Tensor};
use minimind::model::checkpoint::init_model;
use minimind::model::params::{InitScheme, Params};
use minimind::{MiniMindForCausalLM, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `minimind` binary.
pub fn minimind(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minimind")).args(args).env("RAYON_NUM_THREADS", "2").output().unwrap()
}

/// Its stdout, after checking it succeeded.
pub fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "command failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Its stderr, after checking it failed cleanly (exit 1, no panic).
pub fn fails(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "expected a clean failure: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Trainer options for tests: one epoch, no accumulation, lr 1e-3, no checkpoints until the end, quiet.
pub fn train_options(out: &Path) -> minimind::train::TrainOptions {
    minimind::train::TrainOptions {
        epochs: 1,
        accumulation_steps: 1,
        lr: 1e-3,
        lr_schedule: Default::default(),
        grad_clip: 1.0,
        weight_decay: 0.0,
        save_every: 0,
        max_steps: None,
        seed: 1,
        out_dir: out.to_path_buf(),
        tokenizer_dir: None,
        show_progress: false,
        time_limit_s: None,
        resume: None,
        output: Default::default(),
        dist: Default::default(),
        tensorboard: None,
    }
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn tokenizer_dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tokenizers").join(version)
}

/// A very small config for fast tests (vocab kept small too).
pub fn micro_config(vocab: usize, heads: usize, kv_heads: usize, head_dim: usize) -> ModelConfig {
    ModelConfig {
        hidden_size: heads * head_dim,
        num_hidden_layers: 2,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        vocab_size: vocab,
        max_position_embeddings: 256,
        intermediate_size: None,
        ..ModelConfig::default()
    }
    .resolved()
    .unwrap()
}

/// A named preset (its architecture: MoE, q/k norm, …) shrunk to a few thousand parameters.
pub fn micro_preset(name: &str) -> ModelConfig {
    let base = ModelConfig::preset(name).unwrap();
    ModelConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        intermediate_size: Some(48),
        vocab_size: 97,
        max_position_embeddings: 64,
        ..base
    }
    .resolved()
    .unwrap()
}

pub fn micro_model(seed: u64) -> (MiniMindForCausalLM, Params) {
    init(&micro_config(97, 4, 2, 16), seed)
}

/// A random model of `config` (MiniMind2's init, `seed`) on the CPU, with its trainable parameters.
pub fn init(config: &ModelConfig, seed: u64) -> (MiniMindForCausalLM, Params) {
    init_model(config, InitScheme::Minimind2, seed, &Device::Cpu).unwrap()
}

/// A micro model over the 6,400-token v2 vocabulary (the bundled tokenizer's).
pub fn micro_v2_model(seed: u64) -> (MiniMindForCausalLM, Params) {
    init(&micro_config(6400, 4, 2, 16), seed)
}

/// A model folder under `dir` (`base/`) holding [`micro_v2_model`] and the v2 tokenizer.
pub fn micro_v2_folder(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    minimind::model::checkpoint::save_model(&base, &micro_v2_model(3).0).unwrap();
    let tokenizer = tokenizer_dir("v2");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(f), base.join(f)).unwrap();
    }
    base
}

/// Serves `router` on a free loopback port from a thread of its own; returns the port.
pub fn serve_router(router: axum::Router) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Deterministic pseudo-random ids in `0..vocab`, shape `[b, t]`.
pub fn random_ids(b: usize, t: usize, vocab: usize, seed: u64) -> Tensor {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect();
    Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Trains `opts` but stops right after the checkpoint at `stop_after` steps, as a killed run would.
pub fn train_until(
    model: &MiniMindForCausalLM,
    params: &minimind::model::params::Params,
    stage: &mut impl minimind::train::Stage,
    opts: &minimind::train::TrainOptions,
    stop_after: usize,
) {
    struct Stop<'a, S: minimind::train::Stage> {
        inner: &'a mut S,
        batches_left: usize,
    }
    impl<S: minimind::train::Stage> minimind::train::Stage for Stop<'_, S> {
        type Batch = S::Batch;
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn batches_per_epoch(&self) -> usize {
            self.inner.batches_per_epoch()
        }
        fn next_batch(&mut self) -> anyhow::Result<S::Batch> {
            if self.batches_left == 0 {
                anyhow::bail!("killed");
            }
            self.batches_left -= 1;
            self.inner.next_batch()
        }
        fn loss(
            &self,
            m: &MiniMindForCausalLM,
            b: &S::Batch,
            d: minimind::model::DropoutSeed,
        ) -> anyhow::Result<Tensor> {
            self.inner.loss(m, b, d)
        }
        fn tokens(&self, b: &S::Batch) -> usize {
            self.inner.tokens(b)
        }
        fn cursor(&self) -> minimind::data::DataCursor {
            self.inner.cursor()
        }
        fn seek(&mut self, c: minimind::data::DataCursor) {
            self.inner.seek(c)
        }
        fn batch_metrics(&self) -> Vec<(String, f64)> {
            self.inner.batch_metrics()
        }
        fn carried(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
            self.inner.carried()
        }
    }
    // Let it run into step stop_after + 1 and die there, after the checkpoint of step stop_after.
    let plan = minimind::train::StepPlan::new(opts, stage.batches_per_epoch());
    let batches = plan.micro_before(stop_after) + plan.micro_batches(stop_after) - 1;
    let mut stopping = Stop { inner: stage, batches_left: batches };
    let err = minimind::train::train(model, params, &mut stopping, opts).unwrap_err();
    assert!(err.to_string().contains("killed"));
}
