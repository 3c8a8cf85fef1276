//! A running request on the server's side: the text its tokens have made so far, what has been sent
//! to its client (held back while it could still grow into a stop string), its timing for the
//! metrics, and the step's events queued for one send after the step.

use crate::data::tokenizer::{TextStream, Tokenizer};
use crate::infer::FinishReason;
use crate::serve::engine::{Event, Job};
use crate::serve::metrics::{Metrics, Outcome};
use std::time::Instant;

/// A running request: its job and the text streamed so far.
pub(super) struct Running<'t> {
    pub(super) job: Job,
    stream: TextStream<'t>,
    text: String,
    sent: usize,
    tokens: usize,
    stopped_by_string: bool,
    /// When the last token came (for the per-token latency).
    last_token: Option<Instant>,
    /// From the request's arrival to its first token.
    first_token: Option<std::time::Duration>,
    /// Events of this step, sent together once the step's tokens are all delivered.
    outbox: Vec<Event>,
}

impl<'t> Running<'t> {
    pub(super) fn new(job: Job, tokenizer: &'t Tokenizer) -> Self {
        let stream = TextStream::new(tokenizer);
        Self {
            job,
            stream,
            text: String::new(),
            sent: 0,
            tokens: 0,
            stopped_by_string: false,
            last_token: None,
            first_token: None,
            outbox: Vec::new(),
        }
    }

    /// Queues an event for the step's [`Running::flush`]; false when the client has gone away.
    pub(super) fn queue(&mut self, event: Event) -> bool {
        self.outbox.push(event);
        !self.job.events.is_closed()
    }

    /// Sends the queued events; false when the client has gone away. A step's events go out
    /// together, after its last token: each send to a client whose task sleeps wakes its thread
    /// through the kernel, and sends spread over a step's deliveries woke it again for each row
    /// (16 rows: several percent of the engine thread in system calls).
    pub(super) fn flush(&mut self) -> bool {
        self.outbox.drain(..).all(|event| self.job.events.send(event).is_ok())
    }

    /// Takes a decoded token; false when the request should end here (a stop string, or its client
    /// has gone away). Holds back a tail that could still grow into a stop string.
    pub(super) fn push(&mut self, id: u32) -> anyhow::Result<bool> {
        self.tokens += 1;
        if let Some(piece) = self.stream.push(id)? {
            self.text.push_str(&piece);
        }
        let stops = &self.job.stop;
        let (end, stop) = match stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            Some(at) => (at, true),
            None => {
                let hold = stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
                let mut end = self.text.len().saturating_sub(hold).max(self.sent);
                while !self.text.is_char_boundary(end) {
                    end -= 1;
                }
                (end, false)
            }
        };
        if end > self.sent {
            let text = Event::Text(self.text[self.sent..end].to_string());
            self.sent = end;
            if !self.queue(text) {
                return Ok(false); // the client went away
            }
        }
        self.stopped_by_string = stop;
        Ok(!stop)
    }

    /// Records a token's latency: from the request for the first, from the previous one after.
    pub(super) fn time_token(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        match self.last_token {
            None => {
                let first = now - self.job.submitted;
                metrics.first_token(first.as_secs_f64());
                self.first_token = Some(first);
            }
            Some(last) => metrics.next_token((now - last).as_secs_f64()),
        }
        self.last_token = Some(now);
    }

    /// Sends the queued events, the rest of the text and the final event.
    pub(super) fn finish(mut self, finish: FinishReason, metrics: &Metrics) {
        self.flush();
        let finish = if self.stopped_by_string {
            FinishReason::Stop
        } else {
            if let Ok(Some(rest)) = self.stream.finish() {
                self.text.push_str(&rest);
            }
            if self.text.len() > self.sent {
                let _ = self.job.events.send(Event::Text(self.text[self.sent..].to_string()));
            }
            finish
        };
        let prompt_tokens = self.job.prompt.len();
        let outcome = match finish {
            FinishReason::Stop => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
            FinishReason::Cancelled => Outcome::Cancelled,
        };
        metrics.request_done(outcome, prompt_tokens, self.tokens);
        let _ = self.job.events.send(Event::Done {
            finish,
            prompt_tokens,
            completion_tokens: self.tokens,
            first_token: self.first_token,
        });
    }

    pub(super) fn fail(mut self, message: String, metrics: &Metrics) {
        self.flush();
        metrics.request_done(Outcome::Error, self.job.prompt.len(), self.tokens);
        let _ = self.job.events.send(Event::Error(message));
    }
}
