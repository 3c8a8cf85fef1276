//! From files to training rows: streaming JSON Lines, the tokenizer and its chat template, and each
//! stage's encoding of a line into ids and a loss mask.
//!
//! - [`rows`] the JSON Lines index, shuffled epochs, batches (shared by every stage)
//! - [`tokenizer`], [`train_tokenizer`] HF tokenizers, chat templates, byte-level BPE training
//! - [`pretrain`] `{"text"}` lines as `[bos] + tokens + [eos]`
//! - [`sft`] conversations with MiniMind's assistant-only mask (SFT, LoRA, distillation)
//! - [`dpo`] chosen/rejected conversation pairs
//! - [`reason`] SFT rows with up-weighted `<think>`/`<answer>` tags
//! - [`rl`] prompts (RLAIF rows) with an optional ground truth for reinforcement learning

pub mod dpo;
pub mod pretrain;
pub mod reason;
pub mod rl;
pub mod rows;
pub mod sft;
pub mod tokenizer;
pub mod train_tokenizer;

pub use rows::*;
