//! `GET /metrics` in the Prometheus text format: requests by outcome, tokens in and out, queue
//! depth and active batch, and histograms of time to first token and time per output token.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram over fixed bucket bounds (seconds).
struct Histogram {
    bounds: &'static [f64],
    /// Observations ≤ each bound (cumulative, as Prometheus wants them), then the total count.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    fn observe(&mut self, v: f64) {
        for (count, &bound) in self.counts.iter_mut().zip(self.bounds) {
            if v <= bound {
                *count += 1;
            }
        }
        *self.counts.last_mut().expect("the +Inf bucket") += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (count, bound) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let total = self.counts.last().copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {}\n{name}_count {total}", self.sum);
    }
}

const FIRST_TOKEN_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const PER_TOKEN_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The server's counters, shared by the HTTP handlers and the generation worker.
pub struct Metrics {
    requests_stop: AtomicU64,
    requests_length: AtomicU64,
    requests_cancelled: AtomicU64,
    requests_error: AtomicU64,
    requests_rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    first_token: Mutex<Histogram>,
    per_token: Mutex<Histogram>,
}

/// How a request ended, for `minimind_requests_total{outcome=…}`.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Stop,
    Length,
    /// The client went away.
    Cancelled,
    Error,
    /// Refused before running: the queue was full.
    Rejected,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests_stop: AtomicU64::new(0),
            requests_length: AtomicU64::new(0),
            requests_cancelled: AtomicU64::new(0),
            requests_error: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            first_token: Mutex::new(Histogram::new(FIRST_TOKEN_BOUNDS)),
            per_token: Mutex::new(Histogram::new(PER_TOKEN_BOUNDS)),
        }
    }
}

impl Metrics {
    pub fn request_done(&self, outcome: Outcome, prompt_tokens: usize, generated: usize) {
        let counter = match outcome {
            Outcome::Stop => &self.requests_stop,
            Outcome::Length => &self.requests_length,
            Outcome::Cancelled => &self.requests_cancelled,
            Outcome::Error => &self.requests_error,
            Outcome::Rejected => &self.requests_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.generation_tokens.fetch_add(generated as u64, Ordering::Relaxed);
    }

    pub fn first_token(&self, seconds: f64) {
        if let Ok(mut h) = self.first_token.lock() {
            h.observe(seconds);
        }
    }

    pub fn next_token(&self, seconds: f64) {
        if let Ok(mut h) = self.per_token.lock() {
            h.observe(seconds);
        }
    }

    /// The Prometheus text exposition, with the queue depth and active batch as gauges.
    pub fn render(&self, waiting: usize, running: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP minimind_requests_total Requests by how they ended.");
        let _ = writeln!(out, "# TYPE minimind_requests_total counter");
        for (outcome, counter) in [
            ("stop", &self.requests_stop),
            ("length", &self.requests_length),
            ("cancelled", &self.requests_cancelled),
            ("error", &self.requests_error),
            ("rejected", &self.requests_rejected),
        ] {
            let _ =
                writeln!(out, "minimind_requests_total{{outcome=\"{outcome}\"}} {}", counter.load(Ordering::Relaxed));
        }
        for (name, help, counter) in [
            ("minimind_prompt_tokens_total", "Prompt tokens of finished requests.", &self.prompt_tokens),
            ("minimind_generation_tokens_total", "Tokens generated for finished requests.", &self.generation_tokens),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in [
            ("minimind_requests_waiting", "Requests queued for a KV slot.", waiting),
            ("minimind_requests_running", "Requests decoding in the batch.", running),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        if let Ok(h) = self.first_token.lock() {
            h.render(&mut out, "minimind_time_to_first_token_seconds", "Time from request to its first token.");
        }
        if let Ok(h) = self.per_token.lock() {
            h.render(&mut out, "minimind_time_per_output_token_seconds", "Time between a request's tokens.");
        }
        out
    }
}
