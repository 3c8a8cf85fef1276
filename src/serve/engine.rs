//! The generation worker behind the server: one thread runs requests from a bounded FIFO queue, one
//! at a time, streaming text pieces back over a channel. A client that goes away makes its sends fail,
//! which cancels its generation at the next token, so its slot frees at once. A request whose
//! generation panics is answered with an error and the worker goes on; should the worker ever stop,
//! `alive` says so (and `/health` reports it).

use crate::data::tokenizer::{TextStream, Tokenizer};
use crate::infer::{generate, FinishReason, Sampler, SamplingParams};
use crate::MiniMindForCausalLM;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

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
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
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
}

/// Handle to the worker: submit jobs, read the load.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    pub models: Arc<Vec<LoadedModel>>,
    /// Jobs waiting or running.
    pub pending: Arc<AtomicUsize>,
    /// Tokens generated since start (a cancelled request stops adding to it).
    pub generated: Arc<AtomicUsize>,
    /// False once the worker thread has ended.
    pub alive: Arc<AtomicBool>,
}

/// Marks the worker dead when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Engine {
    /// Starts the worker thread with room for `queue` waiting jobs.
    pub fn start(models: Vec<LoadedModel>, queue: usize) -> Self {
        Self::with_runner(models, queue, run)
    }

    /// The worker with another job runner in place of [`run`] (the seam through which tests make a
    /// generation fail in ways a healthy model never does).
    pub fn with_runner(
        models: Vec<LoadedModel>,
        queue: usize,
        runner: impl Fn(&LoadedModel, Job, &AtomicUsize) + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(queue);
        let models = Arc::new(models);
        let pending = Arc::new(AtomicUsize::new(0));
        let generated = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let (worker_models, worker_pending, worker_generated) = (models.clone(), pending.clone(), generated.clone());
        let guard = AliveGuard(alive.clone());
        std::thread::spawn(move || {
            let _guard = guard;
            for job in rx {
                let events = job.events.clone();
                let model = &worker_models[job.model];
                // A panic inside one generation fails that request only.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| runner(model, job, &worker_generated))) {
                    let what = panic_message(panic.as_ref());
                    let _ = events.send(Event::Error(format!("internal error during generation: {what}")));
                }
                worker_pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self { queue: tx, models, pending, generated, alive }
    }

    /// Queues a job; `Err` when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), &'static str> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                Err("the server is at capacity; retry later")
            }
        }
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic".into(),
    }
}

/// Runs one job, sending its text as it is decoded.
pub fn run(m: &LoadedModel, job: Job, generated: &AtomicUsize) {
    let result = (|| -> anyhow::Result<(FinishReason, usize)> {
        let mut sampler = Sampler::new(job.sampling.clone())?;
        let mut stream = TextStream::new(&m.tokenizer);
        let stops = m.tokenizer.stop_ids()?;
        let mut text = String::new();
        let mut sent = 0usize;
        let mut hit_stop = false;
        let generation = generate(&m.model, &job.prompt, job.max_new_tokens, &stops, &mut sampler, |id| {
            generated.fetch_add(1, Ordering::SeqCst);
            if let Some(piece) = stream.push(id)? {
                text.push_str(&piece);
            }
            // Hold back a tail that could still grow into a stop string.
            let (end, stop) = match job.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                Some(at) => (at, true),
                None => {
                    let hold = job.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
                    let mut end = text.len().saturating_sub(hold).max(sent);
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    (end, false)
                }
            };
            if end > sent {
                if job.events.send(Event::Text(text[sent..end].to_string())).is_err() {
                    return Ok(false); // the client went away
                }
                sent = end;
            }
            hit_stop = stop;
            Ok(!stop)
        })?;
        if !hit_stop {
            if let Some(rest) = stream.finish()? {
                text.push_str(&rest);
            }
            if text.len() > sent {
                let _ = job.events.send(Event::Text(text[sent..].to_string()));
            }
        }
        let finish = if hit_stop { FinishReason::Stop } else { generation.finish_reason };
        Ok((finish, generation.tokens.len()))
    })();
    let event = match result {
        Ok((finish, completion_tokens)) => Event::Done { finish, prompt_tokens: job.prompt.len(), completion_tokens },
        Err(e) => Event::Error(format!("{e:#}")),
    };
    let _ = job.events.send(event);
}
