//! `minimind bench train|forward|generate`: throughput of the real model code on synthetic tokens,
//! reported against this machine's measured matmul ceiling. `bench/torch_reference.py` runs the same
//! model and steps in PyTorch, so the two can be compared in one go.

use crate::infer::{generate, Sampler, SamplingParams};
use crate::model::checkpoint::init_model;
use crate::model::config::ModelConfig;
use crate::model::lora::{self, LoraConfig};
use crate::model::params::InitScheme;
use crate::model::Precision;
use crate::ops;
use crate::train::optim::{clip_factor, grad_norm, AdamW, AdamWConfig, GradAccumulator};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Forward + backward + AdamW step (fp32), batch × seq-len tokens per step.
    Train,
    /// Forward only (no gradients), batch × seq-len tokens per step.
    Forward,
    /// Batch-1 decoding with the KV cache: a prompt, then one token per step.
    Generate,
    /// One training step on --device in --dtype against the CPU in fp32: loss and every gradient.
    Parity,
    /// The server's engine (continuous batching) under 1, 4, 16, 64 concurrent streaming clients.
    Serve,
    /// Continuous batching's decode attention alone: batch-size rows, each over seq-len cached
    /// positions of its own KV slot, through every layer (f32, --kv-f16 or --kv-int8 cache).
    Attention,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub mode: BenchMode,
    #[arg(long, default_value = "minimind2-small")]
    pub preset: String,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Measured steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// generate: prompt length.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// generate: tokens to decode.
    #[arg(long, default_value_t = 256)]
    pub new_tokens: usize,
    /// forward/generate with int8 weights (inference only).
    #[arg(long)]
    pub int8: bool,
    /// generate/serve with keys and values cached in f16 (CPU, fp32 activations).
    #[arg(long, conflicts_with = "kv_int8")]
    pub kv_f16: bool,
    /// generate/serve with keys and values cached as int8 rows with a scale each (CPU, fp32
    /// activations).
    #[arg(long)]
    pub kv_int8: bool,
    /// forward/generate/serve with f32 weights in PyTorch's `[out, in]` layout instead of the
    /// panels inference loads them into (to measure one against the other).
    #[arg(long)]
    pub unpacked: bool,
    /// forward/generate with a rank-R LoRA adapter on q_proj and o_proj, merged once at load as
    /// `generate`, `chat` and `serve` do.
    #[arg(long, value_name = "R")]
    pub lora: Option<usize>,
    /// cpu, or cuda / cuda:N with a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// fp32, or bf16 (mixed precision for train, bf16 weights for forward/generate).
    #[arg(long, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// serve: concurrent clients to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub clients: Vec<usize>,
    /// serve: seconds per run (default 30).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// serve: how many times the list of client counts is run, back to back; each ratio is taken
    /// against its own round's run of the first count (one client by default), so a drift of the
    /// machine between rounds cancels, and a summary gives each count's median.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// serve: KV slots, i.e. requests decoded together.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// attention: evict the caches before each step (64 MiB written), as a serving step's weights
    /// evict the KV cache it reads.
    #[arg(long)]
    pub cold: bool,
    /// serve: tokenizer folder (its stop tokens end answers).
    #[arg(long, default_value = "assets/tokenizers/v2")]
    pub tokenizer: std::path::PathBuf,
}

impl BenchArgs {
    /// The KV cache format asked for.
    pub fn kv_format(&self) -> Result<crate::model::KvFormat> {
        crate::model::KvFormat::from_flags(self.kv_f16, self.kv_int8)
    }

    /// How the report names that format, if not the default.
    pub fn kv_label(&self) -> Option<&'static str> {
        match self.kv_format() {
            Ok(crate::model::KvFormat::F16) => Some("f16 KV cache"),
            Ok(crate::model::KvFormat::Int8) => Some("int8 KV cache"),
            _ => None,
        }
    }
}

/// Runs `f` `warmup + steps` times; returns the measured durations in seconds.
fn time_steps(warmup: usize, steps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        f()?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

/// The process's resident memory now (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Matmul throughput on the model's own FFN shape `[B·T × d]·[d × F]` on `device` in the bench's
/// precision, through the same matmul path the model uses: the ceiling achieved GFLOP/s is compared with.
pub fn matmul_ceiling_gflops(device: &Device, precision: Precision, m: usize, k: usize, n: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1., (m, k), device)?.to_dtype(precision.dtype())?;
    let b = Tensor::randn(0f32, 1., (n, k), device)?.to_dtype(precision.dtype())?;
    let times = time_steps(2, 5, || {
        ops::matmul_nt(&a, &b)?;
        Ok(device.synchronize()?)
    })?;
    Ok(2.0 * (m * k * n) as f64 / median(&times) / 1e9)
}

/// Matmul FLOPs of one forward pass over `tokens` positions: 2·N per token for the weights a token
/// passes through (the tied head counted once, as it is used once; a MoE layer's k routed experts)
/// plus `4·T·D` per token, head and layer for QKᵀ and PV.
fn forward_flops(c: &ModelConfig, batch: usize, seq: usize) -> f64 {
    let tokens = (batch * seq) as f64;
    let weights = 2.0 * c.num_active_parameters() as f64 * tokens;
    let attention = 4.0 * tokens * seq as f64 * c.hidden_size as f64 * c.num_hidden_layers as f64;
    weights + attention
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.steps == 0 || a.batch_size == 0 || a.seq_len < 2 {
        bail!("--steps, --batch-size must be ≥ 1 and --seq-len ≥ 2");
    }
    let device = super::parse_device(&a.device)?;
    match a.mode {
        BenchMode::Parity => return super::parity::run(&a.preset, &device, a.dtype),
        BenchMode::Serve => return super::bench_serve::run(a),
        BenchMode::Attention => return super::bench_attention::run(a),
        _ if a.cold => bail!("--cold is for `bench attention`"),
        _ => {}
    }
    let config = ModelConfig::preset(&a.preset)?;
    let threads = candle_core::utils::get_num_threads();
    let (mut model, mut params) = init_model(&config, InitScheme::Minimind2, 0, &device)?;
    if let Some(rank) = a.lora {
        if a.mode == BenchMode::Train {
            bail!("--lora is for inference (forward, generate); `minimind lora` trains adapters");
        }
        let adapter = LoraConfig { rank, alpha: rank as f64, targets: vec!["q_proj".into(), "o_proj".into()] };
        lora::attach_new(&mut model, &adapter, 1)?;
        lora::merge(&mut model)?;
    }
    if a.int8 {
        if a.mode == BenchMode::Train {
            bail!("--int8 is for inference (forward, generate), not training");
        }
        model.quantize_int8()?;
        params = Default::default(); // frees the f32 projection weights
    }
    match (a.mode, a.dtype) {
        (mode, Precision::F32) if mode != BenchMode::Train && !a.unpacked => {
            model.pack_panels()?;
            params = Default::default(); // frees the unpacked weights
        }
        (_, Precision::F32) => {}
        (BenchMode::Train, precision) => model.set_compute_dtype(precision.dtype()),
        (_, precision) => {
            model = model.with_weights_in(precision.dtype())?;
            params = Default::default();
        }
    }
    if (a.kv_f16 || a.kv_int8) && a.mode != BenchMode::Generate {
        bail!("--kv-f16 and --kv-int8 are for decoding (generate, serve, attention)");
    }
    model.set_kv_format(a.kv_format()?)?;
    let ceiling =
        matmul_ceiling_gflops(&device, a.dtype, a.batch_size * a.seq_len, config.hidden_size, config.ffn_size())?;
    let ids = Tensor::rand(0f32, config.vocab_size as f32, (a.batch_size, a.seq_len + 1), &Device::Cpu)?
        .to_dtype(DType::U32)?
        .to_device(&device)?;
    let x = ids.narrow(1, 0, a.seq_len)?;
    let y = ids.narrow(1, 1, a.seq_len)?.flatten_all()?;
    let mask = Tensor::ones(a.batch_size * a.seq_len, DType::F32, &device)?;
    let memory = DeviceMemory::watch(&device)?;
    println!(
        "bench {:?}{}{}{} on {:?} in {}: {} ({} parameters), batch {} × {}, {} threads, matmul ceiling {:.1} GFLOP/s",
        a.mode,
        if a.int8 { " (int8 weights)" } else { "" },
        a.kv_label().map_or(String::new(), |l| format!(" ({l})")),
        a.lora.map_or(String::new(), |r| format!(" (rank-{r} LoRA, merged)")),
        device,
        a.dtype,
        a.preset,
        config.num_parameters(),
        a.batch_size,
        a.seq_len,
        threads,
        ceiling
    );
    let (tokens_per_step, flops_per_step, times) = match a.mode {
        BenchMode::Train => {
            let mut optimizer = AdamW::new(&params, AdamWConfig::default())?;
            let mut acc = GradAccumulator::new(&params);
            let times = time_steps(a.warmup, a.steps, || {
                let out = model.forward_train(&x, None)?;
                let loss = out.moe.add_aux(ops::cross_entropy(&out.logits, &y, &mask)?)?;
                acc.add(&params, &loss.backward()?)?;
                let grads = acc.take(&params)?;
                let norm = grad_norm(&grads)?;
                optimizer.step(&grads, 1e-4, clip_factor(norm, 1.0))?;
                Ok(device.synchronize()?)
            })?;
            (a.batch_size * a.seq_len, 3.0 * forward_flops(&config, a.batch_size, a.seq_len), times)
        }
        BenchMode::Forward => {
            let times = time_steps(a.warmup, a.steps, || {
                model.forward(&x, None)?;
                Ok(device.synchronize()?)
            })?;
            (a.batch_size * a.seq_len, forward_flops(&config, a.batch_size, a.seq_len), times)
        }
        BenchMode::Generate => {
            let prompt: Vec<u32> =
                ids.narrow(1, 0, a.prompt_len.min(a.seq_len))?.get(0)?.to_device(&Device::Cpu)?.to_vec1()?;
            let times = time_steps(a.warmup, a.steps, || {
                let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() })?;
                let out = generate(&model, &prompt, a.new_tokens, &[], &mut sampler, |_| Ok(true))?;
                if out.tokens.len() != a.new_tokens {
                    bail!("generated {} tokens instead of {}", out.tokens.len(), a.new_tokens);
                }
                Ok(())
            })?;
            let flops = 2.0 * config.num_active_parameters() as f64 * (prompt.len() + a.new_tokens) as f64;
            (a.new_tokens, flops, times)
        }
        BenchMode::Parity | BenchMode::Serve | BenchMode::Attention => unreachable!("handled above"),
    };
    let step = median(&times);
    let gflops = flops_per_step / step / 1e9;
    println!("step time (median of {}): {:.3} s", times.len(), step);
    println!("peak RSS: {:.0} MiB", peak_rss_bytes() as f64 / (1 << 20) as f64);
    if let Some(peak) = memory.peak_bytes() {
        println!(
            "peak device memory in use: {:.0} MiB (whole device, CUDA context included)",
            peak as f64 / (1 << 20) as f64
        );
    }
    println!("achieved: {:.1} GFLOP/s = {:.0}% of the matmul ceiling", gflops, 100.0 * gflops / ceiling);
    println!("{:?} throughput: {:.1} tokens/s", a.mode, tokens_per_step as f64 / step);
    Ok(())
}

/// The most device memory in use while a benchmark runs, sampled every millisecond on a thread
/// (CUDA has no per-process peak counter outside a caching allocator; this counts the whole device).
pub struct DeviceMemory {
    #[cfg(feature = "cuda")]
    watch: Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<usize>)>,
}

impl DeviceMemory {
    #[cfg(feature = "cuda")]
    pub fn watch(device: &Device) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let Device::Cuda(cuda) = device else { return Ok(Self { watch: None }) };
        let context = cuda.cuda_stream().context().clone();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok((free, total)) = context.mem_get_info() {
                    peak = peak.max(total - free);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            peak
        });
        Ok(Self { watch: Some((stop, thread)) })
    }

    #[cfg(not(feature = "cuda"))]
    pub fn watch(_device: &Device) -> Result<Self> {
        Ok(Self {})
    }

    /// The peak so far (stops watching); `None` off CUDA.
    pub fn peak_bytes(self) -> Option<usize> {
        #[cfg(feature = "cuda")]
        if let Some((stop, thread)) = self.watch {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            return thread.join().ok();
        }
        None
    }
}
