//! minimind: MiniMind-style small language models in one native binary.
//!
//! Module map (see `docs/ARCHITECTURE.md`):
//! - [`config`] model hyper-parameters (`config.json`), presets
//! - [`ops`] the math: RMSNorm, RoPE, attention, SwiGLU, cross-entropy (all with a backward)
//! - [`model`] the transformer, weights by checkpoint name; [`kv_cache`] its decoding cache
//! - [`params`] random initialization or checkpoint loading, by tensor name
//! - [`checkpoint`] model folders, atomic writes
//! - [`tokenizer`], [`train_tokenizer`] HF tokenizers, chat templates, BPE training
//! - [`data`] streaming JSON Lines, shuffling, batches
//! - [`optim`], [`train`], [`resume`] AdamW, the training loop, exact resume
//! - [`lm_stage`], [`sft`], [`dpo`] the stages: pretraining, supervised fine-tuning, preference optimization
//! - [`lora`] low-rank adapters: attach, save/load, merge
//! - [`distill`] white-box distillation and teacher-written SFT data
//! - [`reason`] reasoning SFT with up-weighted format tags, and the think display
//! - [`metrics`] metrics.jsonl and the PNG chart
//! - [`generate`] sampling and KV-cached decoding
//! - [`serve`] the OpenAI-compatible server and the web chat page
//! - [`import`] MiniMind `.pth` (classic and renamed), HF folders and LoRA files into model folders
//! - [`interop`], [`gguf`] HF Llama export, GGUF export for llama.cpp
//! - [`eval`] perplexity on held-out text
//! - [`bench`] throughput benchmarks
//! - [`cli`], [`demo`] the command line

/// A fieldless enum with fixed names: `FromStr` (an error listing the names) and `Display`, so
/// the command line can parse it without the library depending on the CLI's parser.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The accepted names.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => Err(format!("{other:?} is not one of {}", Self::NAMES.join(", "))),
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $(Self::$variant => $name,)+ })
            }
        }
    };
}

pub mod cli;
pub mod data;
pub mod eval;
pub mod infer;
pub mod interop;
pub mod model;
pub mod ops;
pub mod serve;
pub mod train;

pub use data::tokenizer::Tokenizer;
pub use model::{KvCache, MiniMindForCausalLM, ModelConfig};
