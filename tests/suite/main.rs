//! The integration tests, one binary (one link instead of one per file). `batch` and `numerics`
//! stay separate binaries: they flip the process-wide kernel switch.

#[path = "../common/mod.rs"]
mod common;

mod agent;
mod cli;
mod data;
mod demo_tools;
mod dist;
mod distill;
mod dpo;
mod eval;
mod gguf;
mod import;
mod int8;
mod interop;
mod kernels;
mod lora;
mod model;
mod moe;
mod ppo;
mod precision;
mod reason;
mod report;
mod rl;
mod robustness;
mod serve;
mod serve_api;
mod sft;
mod template;
mod tokenizer;
mod train;
