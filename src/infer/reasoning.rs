//! A reasoning model's answer reads `<think>…</think>` then the reply. Two views of it while it
//! streams: [`ReasoningSplit`] separates thinking from reply (the API's `reasoning_content` and
//! `content`), [`ThinkDisplay`] marks the thinking for a terminal. Both hold back a tag split across
//! pieces until it is complete and flush what is held at the end, so a streamed answer comes out
//! exactly as the whole one.

/// A piece of a split answer: its thinking and its reply parts (either may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Split {
    pub fn append(&mut self, other: Split) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a prompt (or its tail) ends inside an opened `<think>` block, as minimind-3's template
/// leaves it with `open_thinking`: the answer then starts with its reasoning.
pub fn opens_thinking(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

/// Routes streamed text to reasoning or content. Text between `<think>` and `</think>` is reasoning
/// (its surrounding whitespace trimmed), the rest content (leading whitespace after `</think>`
/// trimmed); tags are removed. A prompt that already opened the block (minimind-3's
/// `open_thinking`) starts inside it, so its bare `</think>` ends the reasoning; elsewhere a stray
/// `</think>` is dropped. Whole or streamed in any pieces, the output is the same.
#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    in_think: bool,
    /// Text not yet routed: a possible partial tag, and (inside the block) trailing whitespace.
    pending: String,
    /// At the start of a block, where leading whitespace is dropped.
    at_block_start: bool,
}

impl ReasoningSplit {
    pub fn new(starts_in_think: bool) -> Self {
        Self { in_think: starts_in_think, pending: String::new(), at_block_start: starts_in_think }
    }

    /// Splits a whole answer.
    pub fn whole(text: &str, starts_in_think: bool) -> Split {
        let mut splitter = Self::new(starts_in_think);
        let mut out = splitter.push(text);
        out.append(splitter.finish());
        out
    }

    fn emit(&self, out: &mut Split, text: &str) {
        if self.in_think {
            out.reasoning.push_str(text)
        } else {
            out.content.push_str(text)
        }
    }

    /// The routable part of `piece` (plus anything held back before it).
    pub fn push(&mut self, piece: &str) -> Split {
        self.pending.push_str(piece);
        let mut out = Split::default();
        loop {
            if self.at_block_start {
                let trimmed = self.pending.trim_start().len();
                self.pending.drain(..self.pending.len() - trimmed);
                if self.pending.is_empty() {
                    return out;
                }
                self.at_block_start = false;
            }
            let found = [OPEN, CLOSE].iter().filter_map(|tag| self.pending.find(tag).map(|at| (at, *tag))).min();
            let Some((at, tag)) = found else { break };
            let before = self.pending[..at].to_string();
            self.pending.drain(..at + tag.len());
            let closing_block = tag == CLOSE && self.in_think;
            self.emit(&mut out, if closing_block { before.trim_end() } else { &before });
            self.in_think = tag == OPEN;
            self.at_block_start = tag == OPEN || closing_block;
        }
        // Hold back a suffix that may still become a tag, and inside the block the whitespace
        // before it (trimmed if the block closes next).
        let partial = (1..CLOSE.len())
            .rev()
            .find(|&n| [OPEN, CLOSE].iter().any(|t| n < t.len() && self.pending.ends_with(&t[..n])))
            .unwrap_or(0);
        let mut keep_from = self.pending.len() - partial;
        if self.in_think {
            keep_from = self.pending[..keep_from].trim_end().len();
        }
        let ready: String = self.pending.drain(..keep_from).collect();
        self.emit(&mut out, &ready);
        out
    }

    /// Whatever is still held back, routed where it stands.
    pub fn finish(&mut self) -> Split {
        let mut out = Split::default();
        let rest = std::mem::take(&mut self.pending);
        self.emit(&mut out, &rest);
        out
    }
}

/// Rewrites streamed text so the reasoning stands apart: `<think>` opens a `[think]` block,
/// `</think>` closes it with `[/think]`, and the `<answer>` tags are dropped. Tags split across
/// pieces are held back until they are complete.
#[derive(Default)]
pub struct ThinkDisplay {
    pending: String,
}

const REWRITES: [(&str, &str); 4] =
    [("<think>", "[think] "), ("</think>", " [/think]"), ("<answer>", ""), ("</answer>", "")];

impl ThinkDisplay {
    /// A display for an answer whose prompt already opened the reasoning block (`opened`) or not.
    pub fn new(opened: bool) -> Self {
        Self { pending: if opened { "<think>".into() } else { String::new() } }
    }

    /// The displayable part of `piece` (plus anything held back before it).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let mut out = String::new();
        loop {
            match self.pending.find('<') {
                None => {
                    out.push_str(&std::mem::take(&mut self.pending));
                    return out;
                }
                Some(at) => {
                    out.push_str(&self.pending[..at]);
                    self.pending.drain(..at);
                    if let Some((tag, shown)) = REWRITES.iter().find(|(tag, _)| self.pending.starts_with(tag)) {
                        out.push_str(shown);
                        self.pending.drain(..tag.len());
                    } else if REWRITES.iter().any(|(tag, _)| tag.starts_with(self.pending.as_str())) {
                        return out; // maybe the start of a tag: wait for more
                    } else {
                        out.push('<');
                        self.pending.drain(..1);
                    }
                }
            }
        }
    }

    /// Whatever is still held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}
