//! `minimind bench serve`: aggregate decoding throughput of the server's engine (continuous
//! batching) with 1, 4, 16, 64 concurrent clients, each streaming one request after another: tokens/s
//! over all clients, time to first token (p50/p95), peak RSS. The engine is the one `serve` runs,
//! driven in process (HTTP framing is left out: it costs microseconds per token).

use super::bench::{median, peak_rss_bytes, rss_bytes, BenchArgs};
use crate::infer::SamplingParams;
use crate::model::checkpoint::init_model;
use crate::model::params::InitScheme;
use crate::model::ModelConfig;
use crate::serve::engine::{Engine, EngineConfig, Event, Job, LoadedModel};
use crate::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::time::{Duration, Instant};

/// One run's figures.
struct RunFigures {
    tokens: usize,
    elapsed: f64,
    /// Seconds from sending each request to its first token (as `/metrics` counts it).
    first_token: Vec<f64>,
    /// Resident memory sampled each second of the run.
    rss: Vec<u64>,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.clients.is_empty() || a.clients.contains(&0) || a.new_tokens == 0 || a.prompt_len == 0 || a.rounds == 0 {
        bail!("--clients, --new-tokens, --prompt-len and --rounds must be at least 1");
    }
    let config = ModelConfig::preset(&a.preset)?;
    let tokenizer = Tokenizer::load(&a.tokenizer).with_context(|| format!("--tokenizer {}", a.tokenizer.display()))?;
    let seconds = a.seconds.filter(|s| *s > 0.0).unwrap_or(30.0);
    let (mut model, _) = init_model(&config, InitScheme::Minimind2, 0, &Device::Cpu)?;
    if a.int8 {
        model.quantize_int8()?;
    } else if !a.unpacked {
        model.pack_panels()?;
    }
    model.set_kv_format(a.kv_format()?)?;
    let slot = a.prompt_len + a.new_tokens + 1;
    let engine_config = EngineConfig {
        queue: 1024,
        max_batch: a.max_batch,
        kv_cache_tokens: a.max_batch * slot,
        request_timeout: None,
    };
    let engine =
        Engine::start(vec![LoadedModel { id: a.preset.clone(), aliases: vec![], model, tokenizer }], engine_config);
    println!(
        "bench serve: {} ({}{}), prompt {} + {} new tokens (greedy), {} KV slots, {} threads",
        a.preset,
        if a.int8 {
            "int8"
        } else if a.unpacked {
            "fp32, unpacked"
        } else {
            "fp32"
        },
        a.kv_label().map_or(String::new(), |l| format!(", {l}")),
        a.prompt_len,
        a.new_tokens,
        a.max_batch,
        candle_core::utils::get_num_threads()
    );
    // Per client count, each round's tokens/s and its ratio to that round's first count.
    let mut summary: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); a.clients.len()];
    for round in 0..a.rounds {
        if a.rounds > 1 {
            println!("round {} of {}", round + 1, a.rounds);
        }
        let mut single = None;
        for (&clients, (rates, ratios)) in a.clients.iter().zip(summary.iter_mut()) {
            let figures = measure(&engine, clients, seconds, a)?;
            let rate = figures.tokens as f64 / figures.elapsed;
            let base = *single.get_or_insert(rate);
            let (p50, p95) = (percentile(&figures.first_token, 0.5), percentile(&figures.first_token, 0.95));
            println!(
                "{clients:3} clients: {rate:8.1} tokens/s aggregate ({:.2}× one client, and {:.0} prompt tokens/s), first token p50 {:.0} ms p95 {:.0} ms, {} requests, peak RSS {:.0} MiB",
                rate / base,
                // Each request's prompt was prefilled inside the run (its first token came in it).
                (figures.first_token.len() * a.prompt_len) as f64 / figures.elapsed,
                p50 * 1e3,
                p95 * 1e3,
                figures.first_token.len(),
                peak_rss_bytes() as f64 / (1 << 20) as f64
            );
            println!("{}", rss_course(&figures.rss));
            rates.push(rate);
            ratios.push(rate / base);
        }
    }
    if a.rounds > 1 {
        println!("medians over {} rounds:", a.rounds);
        for (&clients, (rates, ratios)) in a.clients.iter().zip(&summary) {
            let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "{clients:3} clients: {:8.1} tokens/s, {:.2}× one client (rounds: {})",
                median(rates),
                median(ratios),
                listed.join(", ")
            );
        }
    }
    Ok(())
}

/// `clients` streaming clients, each sending one request after another until the run's deadline;
/// the engine's token counter at the deadline gives the aggregate rate. The clients are tasks on one
/// thread, as `serve`'s connections are tasks of its runtime: a step's events wake that thread once,
/// where a thread per client would have the engine wake each client's thread for every token.
fn measure(engine: &Engine, clients: usize, seconds: f64, a: &BenchArgs) -> Result<RunFigures> {
    use std::sync::atomic::Ordering;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let before = engine.generated.load(Ordering::SeqCst);
    let vocab = engine.models[0].model.config.vocab_size as u32;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (tokens, firsts, rss) = std::thread::scope(|scope| {
        let runtime = &runtime;
        let clients = scope.spawn(move || {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..clients)
                    .map(|c| async move {
                        let mut first = Vec::new();
                        let mut request = 0u32;
                        while Instant::now() < deadline {
                            // Distinct prompts (ids above the special tokens), one per client and request.
                            let seed = (c as u32) * 7919 + request * 104_729;
                            let prompt =
                                (0..a.prompt_len as u32).map(|i| 10 + (seed + i * 31) % (vocab - 10)).collect();
                            first.extend(one_request(engine, prompt, a.new_tokens).await?);
                            request += 1;
                        }
                        Ok::<_, anyhow::Error>(first)
                    })
                    .collect();
                futures_util::future::join_all(tasks).await
            })
        });
        let mut rss = Vec::new();
        while Instant::now() < deadline {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
            rss.push(rss_bytes());
        }
        let tokens = engine.generated.load(Ordering::SeqCst) - before;
        let firsts = clients.join().unwrap_or_else(|_| vec![Err(anyhow::anyhow!("the clients panicked"))]);
        (tokens, firsts, rss)
    });
    let mut first_token = Vec::new();
    for f in firsts {
        first_token.extend(f?);
    }
    Ok(RunFigures { tokens, elapsed: seconds, first_token, rss })
}

/// Streams one greedy request to its end; returns its time to first token (the engine's count: a
/// randomly initialized model's first text can wait many tokens for a character's remaining bytes).
async fn one_request(engine: &Engine, prompt: Vec<u32>, new_tokens: usize) -> Result<Option<f64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sampling = SamplingParams { temperature: 0.0, ..Default::default() };
    let sent = Instant::now();
    let job = Job {
        model: 0,
        prompt,
        max_new_tokens: new_tokens,
        sampling,
        stop: Vec::new(),
        events: tx,
        submitted: sent,
        logprobs: None,
        constraint: None,
    };
    engine.submit(job).map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        match rx.recv().await {
            Some(Event::Text(_)) | Some(Event::Logprobs(_)) => {}
            Some(Event::Done { first_token, .. }) => return Ok(first_token.map(|t| t.as_secs_f64())),
            Some(Event::Error(e)) => bail!("request failed: {e}"),
            None => bail!("the engine stopped"),
        }
    }
}

/// Whether memory stayed flat: resident memory once warm (a tenth into the run) against its end and
/// its highest.
fn rss_course(samples: &[u64]) -> String {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (Some(&end), Some(&max)) = (samples.last(), samples.iter().max()) else {
        return "             RSS not sampled (run shorter than a second)".into();
    };
    let warm = samples[samples.len() / 10];
    format!(
        "             RSS {:.0} MiB a tenth into the run, {:.0} MiB at its end ({:+.1} %), highest {:.0} MiB, {} samples",
        mib(warm),
        mib(end),
        (end as f64 / warm as f64 - 1.0) * 100.0,
        mib(max),
        samples.len()
    )
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if q == 0.5 {
        return median(&v);
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}
