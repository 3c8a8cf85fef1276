//! Tool-use (agentic) rollouts, as minimind-3's `train_agent.py`: the prompt offers tools through
//! the chat template; an answer that calls them (`<tool_call>{"name", "arguments"}</tool_call>`, the
//! template's format) has its calls carried out by the trainer, their results rendered as the
//! template's tool turn (`<tool_response>…</tool_response>`) and the model continues — up to
//! `max_tool_turns` rounds. The loss counts the sampled turns only: the tool responses are what the
//! world said, not what the policy did, so their tokens are masked out. The reward adds
//! [`ToolUse::score`] (a call that cannot be read or that the tool refuses costs, working calls
//! earn) to the answer's ground-truth match and the other rewards, on the final answer.
//!
//! Tools: the built-in safe demo tools (`calculator`, which parses arithmetic itself — never an
//! `eval` — and `current_time`; [`crate::serve::demo_tools`]) and user tools given as commands: the
//! call's arguments (JSON) on the command's standard input, its standard output the result.

use super::rollout::{Completion, PromptBatch, Rollouts, ToolUse};
use crate::data::tokenizer::ChatMessage;
use crate::model::MiniMindForCausalLM;
use crate::serve::{demo_tools, tools::parse_tool_calls};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tools a rollout may call.
#[derive(Debug, Clone, Default)]
pub struct ToolSet {
    /// Built-in demo tools by name.
    builtin: Vec<String>,
    /// User tools: (name, shell command).
    commands: Vec<(String, String)>,
}

/// How long a user tool may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl ToolSet {
    /// `builtin` names demo tools (`calculator`, `current_time`); `commands` are `NAME=COMMAND`.
    pub fn new(builtin: &[String], commands: &[String]) -> Result<Self> {
        let known: Vec<String> = tool_names(&demo_tools::specs());
        for name in builtin {
            if !known.contains(name) {
                bail!("no built-in tool {name:?}; the built-in tools are {}", known.join(", "));
            }
        }
        let commands = commands
            .iter()
            .map(|spec| match spec.split_once('=') {
                Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
                    Ok((name.trim().to_string(), command.to_string()))
                }
                _ => bail!("--tool {spec:?}: expected NAME=COMMAND"),
            })
            .collect::<Result<Vec<_>>>()?;
        if builtin.is_empty() && commands.is_empty() {
            bail!("a tool set needs at least one tool");
        }
        Ok(Self { builtin: builtin.to_vec(), commands })
    }

    /// The OpenAI `tools` array the prompts offer.
    pub fn specs(&self) -> Value {
        let builtin = demo_tools::specs();
        let mut specs: Vec<Value> = builtin
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t.pointer("/function/name").and_then(Value::as_str).is_some_and(|n| self.builtin.iter().any(|b| b == n))
            })
            .cloned()
            .collect();
        for (name, _) in &self.commands {
            specs.push(json!({"type": "function", "function": {"name": name,
                "description": format!("The user tool {name}."), "parameters": {"type": "object"}}}));
        }
        Value::Array(specs)
    }

    /// Carries out a call: the result text, or why it failed.
    pub fn run(&self, name: &str, arguments: &Value) -> Result<String, String> {
        if let Some((_, command)) = self.commands.iter().find(|(n, _)| n == name) {
            return run_command(command, &arguments.to_string());
        }
        if self.builtin.iter().any(|b| b == name) {
            return demo_tools::run(name, arguments);
        }
        Err(format!("no tool named {name:?}"))
    }
}

fn tool_names(specs: &Value) -> Vec<String> {
    specs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/function/name")?.as_str().map(String::from))
        .collect()
}

/// `sh -c command` with `input` on stdin: its trimmed stdout, or its stderr when it fails or runs
/// past [`COMMAND_TIMEOUT`]. The pipes are drained while it runs (a large output cannot stall it);
/// a command that overstays is killed and reaped.
fn run_command(command: &str, input: &str) -> Result<String, String> {
    let mut child = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            let _ = tx.send(text);
        });
        rx
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status,
            None if start.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} ran longer than {} s", COMMAND_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    // A background process the command left holding the pipes does not hold up the rollout.
    let collect = |rx: std::sync::mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let out = collect(stdout).trim().to_string();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{command:?} failed ({status}): {}", collect(stderr).trim()))
    }
}

/// A tool's result with the tokenizer's special tokens made plain text (`<|im_end|>` → `‹|im_end|>`),
/// so a result cannot end the turn or open a fake one in the model's context.
pub fn defuse_special_tokens(tokenizer: &crate::Tokenizer, text: &str) -> String {
    let mut text = text.to_string();
    for token in tokenizer.hf().get_added_tokens_decoder().values().filter(|t| t.special) {
        if token.content.starts_with('<') && text.contains(&token.content) {
            text = text.replace(&token.content, &token.content.replacen('<', "‹", 1));
        }
    }
    text
}

/// One rollout in progress.
struct Trace {
    prompt: usize,
    seed: u64,
    tokens: Vec<u32>,
    mask: Vec<f32>,
    messages: Vec<ChatMessage>,
    answer: String,
    stopped: bool,
    tool_use: ToolUse,
    open: bool,
}

impl Rollouts<'_> {
    /// Rollouts with tool rounds: each turn decodes every open rollout together; answers with
    /// calls get the tools' results appended (masked) and continue.
    pub(super) fn sample_with_tools(
        &self,
        model: &MiniMindForCausalLM,
        batch: &PromptBatch,
        tools: &ToolSet,
    ) -> Result<Vec<Completion>> {
        let mut traces: Vec<Trace> = self
            .first_turn_jobs(batch)
            .into_iter()
            .map(|(prompt, seed)| Trace {
                prompt,
                seed,
                tokens: Vec::new(),
                mask: Vec::new(),
                messages: batch.prompts[prompt].messages.clone(),
                answer: String::new(),
                stopped: false,
                tool_use: ToolUse::default(),
                open: true,
            })
            .collect();
        let limit = model.config.max_position_embeddings;
        for turn in 0..=self.config.max_tool_turns {
            let open: Vec<usize> = (0..traces.len()).filter(|&i| traces[i].open).collect();
            if open.is_empty() {
                break;
            }
            let sequences: Vec<Vec<u32>> = open
                .iter()
                .map(|&i| [&batch.prompts[traces[i].prompt].ids[..], &traces[i].tokens[..]].concat())
                .collect();
            let jobs: Vec<(&[u32], u64)> = open
                .iter()
                .zip(&sequences)
                .map(|(&i, ids)| (&ids[..], traces[i].seed.wrapping_add((turn as u64) << 40)))
                .collect();
            for (&i, (tokens, stopped)) in open.iter().zip(self.decode(model, &jobs)?) {
                let t = &mut traces[i];
                let text = self.tokenizer.decode(if stopped { &tokens[..tokens.len() - 1] } else { &tokens }, true)?;
                t.mask.extend(std::iter::repeat_n(1.0, tokens.len()));
                t.tokens.extend(tokens);
                (t.answer, t.stopped, t.open) = (text.clone(), stopped, false);
                if !stopped || turn == self.config.max_tool_turns {
                    continue;
                }
                let Some((content, calls)) = parse_tool_calls(&text) else {
                    t.tool_use.failed += usize::from(text.contains("<tool_call>"));
                    continue;
                };
                let mut turn_messages = vec![ChatMessage {
                    tool_calls: Some(Value::Array(calls.clone())),
                    ..ChatMessage::new("assistant", &content)
                }];
                for call in &calls {
                    t.tool_use.calls += 1;
                    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                    let arguments: Value = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .and_then(|a| serde_json::from_str(a).ok())
                        .unwrap_or(json!({}));
                    let result = tools.run(name, &arguments).unwrap_or_else(|e| {
                        t.tool_use.failed += 1;
                        format!("error: {e}")
                    });
                    turn_messages.push(ChatMessage::new("tool", &defuse_special_tokens(self.tokenizer, &result)));
                }
                let response = self.tool_turn_ids(&t.messages, &turn_messages)?;
                if batch.prompts[t.prompt].ids.len() + t.tokens.len() + response.len() + self.config.max_new_tokens + 1
                    > limit
                {
                    continue;
                }
                t.mask.extend(std::iter::repeat_n(0.0, response.len()));
                t.tokens.extend(response);
                t.messages.extend(turn_messages);
                t.open = true;
            }
        }
        Ok(traces
            .into_iter()
            .map(|t| Completion {
                prompt: t.prompt,
                tokens: t.tokens,
                stopped: t.stopped,
                mask: Some(t.mask),
                answer: Some(t.answer),
                tool_use: Some(t.tool_use),
            })
            .collect())
    }

    /// Fails unless the chat template renders a tool call and its result after it (checked when the
    /// rollouts are set up, not at the first call hours into a run).
    pub(super) fn check_tool_template(&self) -> Result<()> {
        let history = [ChatMessage::new("user", "1 + 1 = ?")];
        let call = json!([{"id": "call_0", "type": "function",
            "function": {"name": "calculator", "arguments": "{\"expression\": \"1 + 1\"}"}}]);
        let turn = [
            ChatMessage { tool_calls: Some(call), ..ChatMessage::new("assistant", "") },
            ChatMessage::new("tool", "2"),
        ];
        self.tool_turn_ids(&history, &turn).map(|_| ())
    }

    /// The tokens that follow a sampled turn ending in the end-of-turn token when `turn` (the
    /// assistant's calls and the tools' results) is added to `history`: the template's tool turn and
    /// the next generation prompt, read off two renderings of the conversation.
    fn tool_turn_ids(&self, history: &[ChatMessage], turn: &[ChatMessage]) -> Result<Vec<u32>> {
        let with_calls = [history, &turn[..1]].concat();
        let before = self.tokenizer.render_chat(&with_calls, false)?;
        let after = self.tokenizer.render_chat(&[history, turn].concat(), true)?;
        let end_of_turn = self.tokenizer.decode(&self.stop_ids[..1], false)?;
        let cut = before.rfind(&end_of_turn).map(|i| i + end_of_turn.len()).context("the template ends no turn")?;
        if !after.starts_with(&before[..cut]) || !after[cut..].contains(&turn[1].content) {
            bail!("the chat template does not render tool results after a tool call (use a minimind-3 tokenizer)");
        }
        self.tokenizer.encode(&after[cut..])
    }
}
