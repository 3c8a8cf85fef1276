//! The generation worker behind the server: continuous batching. One thread holds a [`Batcher`] per
//! model; requests wait in a bounded queue, join a model's running batch as soon as it has a free
//! KV slot (prefilled on joining), and every step decodes one token for all running requests of a
//! model in one batched forward. A request leaves the batch the moment it finishes or its client
//! goes away (its sends fail), freeing its slot for the next one. A full queue is refused (503).
//!
//! A panic while serving a request fails that request (and, inside a batched step, the requests of
//! that step, whose model gets a fresh slot pool); the worker goes on. Should the worker ever stop,
//! `alive` says so (and `/health` reports it).

use crate::data::tokenizer::Tokenizer;
use crate::infer::batch::{Batcher, Decoded, SeqId, SeqOptions};
use crate::infer::grammar::Grammars;
use crate::infer::{FinishReason, Sampler, SamplingParams};
use crate::serve::metrics::{Metrics, Outcome};
use crate::serve::running::Running;
use crate::MiniMindForCausalLM;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// A model's tokenizer indexed for constrained decoding (or why it could not be), built once.
type GrammarSlot = std::sync::OnceLock<Result<Arc<Grammars>, String>>;

/// A model the server can run.
pub struct LoadedModel {
    /// The id `/v1/models` lists.
    pub id: String,
    /// Further names requests may use for it (`--served-model-name`).
    pub aliases: Vec<String>,
    pub model: MiniMindForCausalLM,
    pub tokenizer: Tokenizer,
}

impl LoadedModel {
    pub fn answers_to(&self, name: &str) -> bool {
        self.id == name || self.aliases.iter().any(|a| a == name)
    }
}

/// What the worker reports about a job.
#[derive(Debug)]
pub enum Event {
    /// Newly decoded text.
    Text(String),
    /// A token's log probability in OpenAI's chat shape (`{"token", "logprob", "bytes",
    /// "top_logprobs"}`), sent before the text it adds when the job asked for `logprobs`.
    Logprobs(serde_json::Value),
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// From the request's arrival to its first token (what `/metrics` records; the first text
        /// can come later, while a token's bytes wait for the rest of their character).
        first_token: Option<std::time::Duration>,
    },
    Error(String),
}

pub struct Job {
    pub model: usize,
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Strings that end the answer (not included in it).
    pub stop: Vec<String>,
    pub events: UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub submitted: std::time::Instant,
    /// Report each token's log probability with this many alternatives (`top_logprobs`).
    pub logprobs: Option<usize>,
    /// Structured output: decode only what this grammar allows (`response_format`).
    pub constraint: Option<crate::infer::grammar::Constraint>,
}

/// How much the worker takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Requests that may wait for a slot before new ones are refused.
    pub queue: usize,
    /// Requests decoded together per model (KV slots).
    pub max_batch: usize,
    /// KV cache positions per model, shared evenly by its slots (each slot holds prompt + answer).
    pub kv_cache_tokens: usize,
    /// A request still waiting or generating this long after it arrived ends: a waiting one with an
    /// error, a generating one with what it has (`finish_reason: "length"`).
    pub request_timeout: Option<std::time::Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { queue: 64, max_batch: 16, kv_cache_tokens: 16 * 2048, request_timeout: None }
    }
}

impl EngineConfig {
    /// Positions per slot for `model`: an even share of the KV budget, at most its context.
    pub fn slot_capacity(&self, model: &MiniMindForCausalLM) -> usize {
        (self.kv_cache_tokens / self.max_batch.max(1)).min(model.config.max_position_embeddings)
    }
}

/// Handle to the worker: submit jobs, read the load.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    pub models: Arc<Vec<LoadedModel>>,
    pub config: EngineConfig,
    /// Jobs waiting or running.
    pub pending: Arc<AtomicUsize>,
    /// Jobs decoding now (in a batch).
    pub running: Arc<AtomicUsize>,
    /// Tokens generated since start (a cancelled request stops adding to it).
    pub generated: Arc<AtomicUsize>,
    /// False once the worker thread has ended.
    pub alive: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Each model's tokenizer indexed for constrained decoding, built on first use.
    grammars: Arc<Vec<GrammarSlot>>,
}

/// Called with each job as it joins a batch: the seam through which tests make serving fail in
/// ways a healthy model never does.
pub type JoinHook = Box<dyn Fn(&Job) + Send>;

/// Marks the worker dead when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Starts the worker thread.
    pub fn start(models: Vec<LoadedModel>, config: EngineConfig) -> Self {
        Self::with_hook(models, config, Box::new(|_| {}))
    }

    /// The worker with a hook called as each job joins (see [`JoinHook`]).
    pub fn with_hook(models: Vec<LoadedModel>, config: EngineConfig, hook: JoinHook) -> Self {
        let (tx, rx) = sync_channel::<Job>(config.queue.max(1));
        let grammars = Arc::new((0..models.len()).map(|_| std::sync::OnceLock::new()).collect());
        let engine = Self {
            queue: tx,
            models: Arc::new(models),
            config,
            pending: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            generated: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(AtomicBool::new(true)),
            metrics: Arc::new(Metrics::default()),
            grammars,
        };
        let worker = engine.clone();
        let guard = AliveGuard(engine.alive.clone());
        std::thread::spawn(move || {
            let _guard = guard;
            Worker::new(&worker, hook).serve(&rx);
        });
        engine
    }

    /// Model `model`'s grammars (structured output), built the first time they are asked for.
    pub fn grammars(&self, model: usize) -> Result<Arc<Grammars>, String> {
        self.grammars[model]
            .get_or_init(|| {
                let tokenizer = &self.models[model].tokenizer;
                let stop = tokenizer.token_to_id("<|im_end|>").map_or_else(|| tokenizer.eos_id(), Ok);
                stop.and_then(|stop| Grammars::new(tokenizer, stop)).map(Arc::new).map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    /// Queues a job; `Err` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), &'static str> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                self.metrics.request_done(Outcome::Rejected, 0, 0);
                Err("the server is at capacity; retry later")
            }
        }
    }
}

/// The worker thread's state: a batcher per model and the requests running in each.
struct Worker<'e> {
    engine: &'e Engine,
    hook: JoinHook,
    batchers: Vec<Batcher<'e>>,
    running: Vec<HashMap<SeqId, Running<'e>>>,
}

impl<'e> Worker<'e> {
    fn new(engine: &'e Engine, hook: JoinHook) -> Self {
        let batchers = engine.models.iter().map(|m| fresh_batcher(m, &engine.config)).collect();
        let running = engine.models.iter().map(|_| HashMap::new()).collect();
        Self { engine, hook, batchers, running }
    }

    /// Admits waiting jobs while slots are free, decodes a step for every model with running
    /// requests; sleeps on the queue when nothing runs.
    fn serve(mut self, queue: &Receiver<Job>) {
        loop {
            let busy = self.running.iter().any(|r| !r.is_empty());
            let job = if busy {
                match queue.try_recv() {
                    Ok(job) => Some(job),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match queue.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return, // the server is gone
                }
            };
            if let Some(job) = job {
                self.join(job);
                if self.batchers.iter().all(Batcher::has_free_slot) {
                    continue; // admit more before the next step
                }
            }
            for model in 0..self.batchers.len() {
                self.step(model);
            }
            self.publish_load();
        }
    }

    fn publish_load(&self) {
        let running = self.running.iter().map(HashMap::len).sum();
        self.engine.running.store(running, Ordering::SeqCst);
    }

    /// Prefills a job into its model's batch (waiting for a slot by stepping that batch first).
    fn join(&mut self, job: Job) {
        let model = job.model;
        while !self.batchers[model].has_free_slot() {
            self.step(model);
        }
        let m = &self.engine.models[model];
        if self.timed_out(&job) {
            let waited = job.submitted.elapsed().as_secs_f64();
            self.reject(
                Running::new(job, &m.tokenizer),
                format!("timed out after {waited:.1} s waiting for a KV slot"),
            );
            return;
        }
        let (hook, batcher) = (&self.hook, &mut self.batchers[model]);
        let joined = catch_unwind(AssertUnwindSafe(|| -> anyhow::Result<_> {
            hook(&job);
            let sampler = Sampler::new(job.sampling.clone())?;
            let options = SeqOptions { logprobs: job.logprobs, constraint: job.constraint.clone() };
            batcher.join_with(&job.prompt, job.max_new_tokens, sampler, options)
        }));
        let request = Running::new(job, &m.tokenizer);
        match joined {
            Ok(Ok(Some((id, events)))) => {
                self.running[model].insert(id, request);
                self.deliver(model, id, events);
                self.flush(model);
            }
            Ok(Ok(None)) => self.reject(request, "no free KV slot".into()),
            Ok(Err(e)) => self.reject(request, format!("{e:#}")),
            Err(panic) => {
                self.reject(request, format!("internal error during generation: {}", panic_message(panic.as_ref())));
                self.batchers[model] = fresh_batcher(m, &self.engine.config);
                self.fail_all(model, "internal error during generation");
            }
        }
        self.publish_load();
    }

    fn timed_out(&self, job: &Job) -> bool {
        self.engine.config.request_timeout.is_some_and(|limit| job.submitted.elapsed() >= limit)
    }

    /// One decode step of `model`'s batch; requests past their time limit end first.
    fn step(&mut self, model: usize) {
        let expired: Vec<SeqId> =
            self.running[model].iter().filter(|(_, r)| self.timed_out(&r.job)).map(|(&id, _)| id).collect();
        for id in expired {
            self.deliver(model, id, vec![Decoded::Finished(FinishReason::Length)]);
        }
        if self.running[model].is_empty() {
            return;
        }
        let batcher = &mut self.batchers[model];
        match catch_unwind(AssertUnwindSafe(|| batcher.step())) {
            Ok(Ok(decoded)) => {
                for (id, events) in decoded {
                    self.deliver(model, id, events);
                }
                self.flush(model);
            }
            Ok(Err(e)) => self.fail_all(model, &format!("{e:#}")),
            Err(panic) => {
                let m = &self.engine.models[model];
                self.batchers[model] = fresh_batcher(m, &self.engine.config);
                self.fail_all(model, &format!("internal error during generation: {}", panic_message(panic.as_ref())));
            }
        }
    }

    /// Hands a sequence's new tokens to its request; ends the request when the sequence finished,
    /// a stop string appeared or the client left (cancelling the sequence, which frees its slot).
    fn deliver(&mut self, model: usize, id: SeqId, events: Vec<Decoded>) {
        let Some(request) = self.running[model].get_mut(&id) else { return };
        let mut end = None;
        for event in events {
            match event {
                Decoded::Token(token) => {
                    self.engine.generated.fetch_add(1, Ordering::SeqCst);
                    request.time_token(&self.engine.metrics);
                    match request.push(token) {
                        Ok(true) => {}
                        Ok(false) => {
                            end = Some(Ok(FinishReason::Cancelled));
                            break;
                        }
                        Err(e) => {
                            end = Some(Err(format!("{e:#}")));
                            break;
                        }
                    }
                }
                Decoded::Finished(reason) => end = Some(Ok(reason)),
                Decoded::Stopped(_) => {}
                Decoded::Logprobs(lp) => {
                    let tokenizer = &self.engine.models[model].tokenizer;
                    if !request.queue(Event::Logprobs(logprob_entry(tokenizer, &lp))) {
                        end = Some(Ok(FinishReason::Cancelled));
                        break;
                    }
                }
            }
        }
        if let Some(end) = end {
            self.end(model, id, end);
        }
    }

    /// Sends the events `model`'s requests queued this step; a request whose client has gone away
    /// ends (cancelled).
    fn flush(&mut self, model: usize) {
        let gone: Vec<SeqId> =
            self.running[model].iter_mut().filter_map(|(&id, request)| (!request.flush()).then_some(id)).collect();
        for id in gone {
            self.end(model, id, Ok(FinishReason::Cancelled));
        }
    }

    /// Ends a request: its sequence leaves the batch (freeing its slot), its last events go out.
    fn end(&mut self, model: usize, id: SeqId, end: Result<FinishReason, String>) {
        self.batchers[model].cancel(id); // a no-op when the batch already let it go
        if let Some(request) = self.running[model].remove(&id) {
            // The load is updated before the last event: a client holding its answer never sees
            // itself still pending or running.
            self.publish_load();
            self.engine.pending.fetch_sub(1, Ordering::SeqCst);
            match end {
                Ok(reason) => request.finish(reason, &self.engine.metrics),
                Err(message) => request.fail(message, &self.engine.metrics),
            }
        }
    }

    fn fail_all(&mut self, model: usize, message: &str) {
        let failed: Vec<Running> = self.running[model].drain().map(|(_, r)| r).collect();
        self.publish_load();
        for request in failed {
            self.engine.pending.fetch_sub(1, Ordering::SeqCst);
            request.fail(message.to_string(), &self.engine.metrics);
        }
    }

    /// A request that could not join is answered with an error.
    fn reject(&self, request: Running, message: String) {
        self.engine.pending.fetch_sub(1, Ordering::SeqCst);
        request.fail(message, &self.engine.metrics);
    }
}

fn fresh_batcher<'m>(m: &'m LoadedModel, config: &EngineConfig) -> Batcher<'m> {
    let stops = m.tokenizer.stop_ids().unwrap_or_default();
    Batcher::new(&m.model, config.max_batch.max(1), config.slot_capacity(&m.model).max(2), &stops)
        .unwrap_or_else(|e| panic!("allocating the KV slots of {}: {e:#}", m.id))
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic".into(),
    }
}

/// A token's log probabilities as OpenAI's chat `logprobs.content` entry.
fn logprob_entry(tokenizer: &Tokenizer, lp: &crate::infer::batch::TokenLogprobs) -> serde_json::Value {
    let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    let entry = |id: u32, logprob: f32| {
        let token = text(id);
        serde_json::json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()})
    };
    let mut value = entry(lp.token, lp.logprob);
    value["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    value
}
