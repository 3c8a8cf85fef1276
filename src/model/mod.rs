//! The model: its hyper-parameters, the transformer itself, the decoding cache, LoRA adapters, and
//! how weights come to be (random initialization or a checkpoint, by tensor name) and are saved.
//!
//! Read [`transformer`] top to bottom for the whole forward pass.

pub mod checkpoint;
pub mod config;
pub mod kv_cache;
pub mod lora;
pub mod moe;
pub mod params;
pub mod transformer;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use transformer::*;
