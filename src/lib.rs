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

pub mod bench;
pub mod blas;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod demo;
pub mod distill;
pub mod dpo;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod import;
pub mod interop;
pub mod kv_cache;
pub mod lm_stage;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod reason;
pub mod resume;
pub mod serve;
pub mod sft;
pub mod tokenizer;
pub mod train;
pub mod train_tokenizer;

pub use config::ModelConfig;
pub use model::{KvCache, MiniMindForCausalLM};
pub use tokenizer::Tokenizer;
