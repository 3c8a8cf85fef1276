//! Rule rewards for reinforcement learning on a completion's text, as minimind-3 scores rollouts
//! (`trainer/train_grpo.py`), plus verifiable answers against a row's ground truth `gt`.
//!
//! MiniMind's rules, summed:
//! - length: `+0.5` when the stripped response has 20–800 characters, `−0.5` otherwise;
//! - thinking, when the response closes a `</think>`: `+1.0` when the stripped thinking has 20–300
//!   characters (else `−0.5`), `+0.25` for exactly one `</think>` (else `−0.25`); the answer is the
//!   text after the first `</think>`;
//! - repetition: minus `min(0.5, duplicated 3-grams · 0.5 · 2 / 3-grams)` of the answer's words
//!   (runs of word characters, or single other non-space characters, lower-cased) — small models
//!   fall into endless loops, and this term pays them to stop.
//!
//! Any other scorer — a larger reward model served elsewhere, a unit-test runner — plugs in over HTTP
//! ([`ExternalScorer`]).

/// The response's answer: the text after the first `</think>`, stripped (all of it without one).
pub fn answer_part(response: &str) -> &str {
    match response.split_once("</think>") {
        Some((_, answer)) => answer.trim(),
        None => response,
    }
}

/// Length and thinking-format terms of MiniMind's rule reward.
pub fn format_reward(response: &str) -> f64 {
    let chars = |s: &str| s.trim().chars().count();
    let mut reward = if (20..=800).contains(&chars(response)) { 0.5 } else { -0.5 };
    if let Some((thinking, _)) = response.split_once("</think>") {
        reward += if (20..=300).contains(&chars(thinking)) { 1.0 } else { -0.5 };
        reward += if response.matches("</think>").count() == 1 { 0.25 } else { -0.25 };
    }
    reward
}

/// `min(cap, duplicated n-grams · cap · 2 / n-grams)` over the text's words.
pub fn repetition_penalty(text: &str, n: usize, cap: f64) -> f64 {
    let words = words(&text.to_lowercase());
    if words.len() < n {
        return 0.0;
    }
    let grams: Vec<&[String]> = words.windows(n).collect();
    let distinct: std::collections::HashSet<&[String]> = grams.iter().copied().collect();
    let duplicated = (grams.len() - distinct.len()) as f64;
    cap.min(duplicated * cap * 2.0 / grams.len() as f64)
}

/// Python's `re.findall(r"\w+|[^\w\s]", text)`: runs of word characters (letters, digits, `_`,
/// any script), and every other non-space character alone.
fn words(text: &str) -> Vec<String> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut run = String::new();
    for c in text.chars() {
        if is_word(c) {
            run.push(c);
            continue;
        }
        if !run.is_empty() {
            out.push(std::mem::take(&mut run));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

/// MiniMind's rule reward of a response: format terms minus the answer's repetition penalty.
pub fn minimind_rule_reward(response: &str) -> f64 {
    format_reward(response) - repetition_penalty(answer_part(response), 3, 0.5)
}

/// 1 when the answer matches the ground truth, else 0: numerically when `gt` is a number (the last
/// number in the answer, within 1e-6 relative), otherwise as text after trimming and lower-casing
/// (the whole answer, or its last line).
pub fn gt_match(response: &str, gt: &str) -> f64 {
    let answer = answer_part(response);
    let gt = gt.trim();
    if let Ok(expected) = parse_number(gt) {
        return match last_number(answer) {
            Some(got) if (got - expected).abs() <= 1e-6 * expected.abs().max(1.0) => 1.0,
            _ => 0.0,
        };
    }
    let norm = |s: &str| s.trim().trim_end_matches(['.', '。']).to_lowercase();
    let last_line = answer.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    f64::from(norm(answer) == norm(gt) || norm(last_line) == norm(gt))
}

fn parse_number(text: &str) -> Result<f64, std::num::ParseFloatError> {
    text.replace(',', "").parse()
}

/// The last number written in `text` (digits with an optional sign, decimal point and thousands
/// commas), e.g. `42` in "6 × 7 = 42。".
pub fn last_number(text: &str) -> Option<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut end = chars.len();
    while end > 0 {
        if !chars[end - 1].is_ascii_digit() {
            end -= 1;
            continue;
        }
        let mut start = end;
        while start > 0 && (chars[start - 1].is_ascii_digit() || matches!(chars[start - 1], '.' | ',')) {
            start -= 1;
        }
        while start < end && matches!(chars[start], '.' | ',') {
            start += 1;
        }
        if start > 0 && chars[start - 1] == '-' {
            start -= 1;
        }
        let number: String = chars[start..end].iter().collect();
        if let Ok(v) = parse_number(&number) {
            return Some(v);
        }
        end = start;
    }
    None
}

/// What an external scorer is sent for each completion.
#[derive(Debug, serde::Serialize)]
pub struct ScoreItem<'a> {
    /// The user's prompt (the last user turn).
    pub prompt: &'a str,
    /// The sampled answer (special tokens removed).
    pub completion: &'a str,
    /// The row's ground truth, when it has one.
    pub gt: Option<&'a str>,
}

/// A reward from a service: `POST url` with `{"items": [{"prompt", "completion", "gt"}, …]}` (one
/// batch of completions), answered by `{"scores": [number, …]}` in the same order.
pub struct ExternalScorer {
    url: String,
    agent: ureq::Agent,
}

impl ExternalScorer {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        if !url.starts_with("http://") {
            anyhow::bail!("--reward-url must be an http:// URL, got {url:?}");
        }
        let config = ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(300))).build();
        Ok(Self { url: url.to_string(), agent: config.into() })
    }

    /// One score per item.
    pub fn score(&self, items: &[ScoreItem]) -> anyhow::Result<Vec<f64>> {
        use anyhow::Context;
        let context = || format!("reward scorer {}", self.url);
        let body = serde_json::json!({ "items": items });
        let mut response = self.agent.post(&self.url).send_json(&body).with_context(context)?;
        let answer: serde_json::Value = response.body_mut().read_json().with_context(context)?;
        let scores: Option<Vec<f64>> =
            answer.get("scores").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|v| v.as_f64()).collect());
        match scores {
            Some(scores) if scores.len() == items.len() && scores.iter().all(|s| s.is_finite()) => Ok(scores),
            _ => anyhow::bail!(
                "{}: expected {{\"scores\": [{} finite numbers]}}, got {}",
                context(),
                items.len(),
                answer.to_string().chars().take(200).collect::<String>()
            ),
        }
    }
}
