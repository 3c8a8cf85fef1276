//! minimind: MiniMind-style small language models in one native binary.
//!
//! The folders follow the pipeline (see `docs/ARCHITECTURE.md`):
//! - [`model`] the transformer (`model/transformer.rs`, read it top to bottom), its config, KV cache,
//!   LoRA adapters, weights by checkpoint name, model folders
//! - [`ops`] the math: fused CPU kernels with their own backward, and their composed twins
//! - [`data`] JSON Lines, the tokenizer and chat template, each stage's row encoding
//! - [`train`] the one training loop, optimizer and schedule, resume, metrics, one module per stage:
//!   [`train::pretrain()`], [`train::sft()`], [`train::dpo()`], [`train::lora()`],
//!   [`train::distill()`], [`train::reason()`]
//! - [`infer`] sampling, KV-cached decoding, the reasoning split; [`infer::load`] a model to run
//! - [`eval`] perplexity and bits per byte on held-out text, multiple-choice benchmark accuracy
//! - [`serve`] the OpenAI-compatible server and the web chat page
//! - [`interop`] MiniMind `.pth` / HF import, HF and GGUF export
//! - [`cli`] the command line: flags turned into the library's configs, the demo, benchmarks

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
pub mod dist;
pub mod eval;
pub mod infer;
pub mod interop;
pub mod model;
pub mod ops;
pub mod report;
pub mod serve;
pub mod train;

pub use data::tokenizer::Tokenizer;
pub use model::{KvCache, MiniMindForCausalLM, ModelConfig};
