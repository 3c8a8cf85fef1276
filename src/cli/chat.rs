//! `minimind chat`: an interactive terminal chat. Each question is sent with the last `--history`
//! turns through the model's chat template; answers stream as they are decoded. `/reset` forgets
//! the conversation, `/exit` (or end of input) quits.

use super::{ModelArgs, SamplingArgs};
use crate::data::tokenizer::ChatMessage;
use crate::infer::generate::stream_completion;
use anyhow::Result;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Past turns (question + answer pairs) sent with each question.
    #[arg(long, default_value_t = 4)]
    pub history: usize,
    /// A system prompt (otherwise the template's default, if it has one).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub think: super::ThinkArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: &ChatArgs) -> Result<()> {
    let (model, tokenizer) = a.model.load()?;
    let interactive = std::io::stdin().is_terminal();
    let context = model.config.max_position_embeddings;
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut out = std::io::stdout().lock();
    if interactive {
        writeln!(out, "minimind chat — {} (/reset to forget, /exit to quit)", a.model.model.display())?;
    }
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let question = line?.trim().to_string();
        match question.as_str() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                turns.clear();
                writeln!(out, "(conversation reset)")?;
                continue;
            }
            _ => {}
        }
        // The most recent turns that fit the context together with the answer.
        let mut keep = a.history.min(turns.len());
        let prompt = loop {
            let mut messages: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s)).collect();
            for (q, r) in &turns[turns.len() - keep..] {
                messages.push(ChatMessage::new("user", q));
                messages.push(ChatMessage::new("assistant", r));
            }
            messages.push(ChatMessage::new("user", &question));
            let ids = tokenizer.encode(&tokenizer.render_chat_with(&messages, true, a.think.value())?)?;
            if ids.len() + a.sampling.max_new_tokens <= context || keep == 0 {
                break ids;
            }
            keep -= 1;
        };
        if prompt.len() >= context {
            writeln!(out, "(question too long: {} tokens for a context of {context})", prompt.len())?;
            continue;
        }
        let max_new = a.sampling.max_new_tokens.min(context - prompt.len());
        let answer = stream_completion(
            &a.model.model,
            &model,
            &tokenizer,
            &prompt,
            max_new,
            a.sampling.params(n as u64),
            &mut out,
        )?;
        writeln!(out)?;
        turns.push((question, answer.trim().to_string()));
    }
    Ok(())
}
