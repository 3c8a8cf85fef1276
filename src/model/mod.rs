//! The model: its hyper-parameters, the transformer itself (its RoPE tables in [`rope`]), the
//! decoding cache, LoRA adapters, how weights come to be (random initialization or a checkpoint, by
//! tensor name) and are saved, and how they are made ready for inference (panels, int8, bf16).
//!
//! Read [`transformer`] top to bottom for the whole forward pass.

pub mod checkpoint;
pub mod config;
mod decode;
mod inference;
pub mod kv_cache;
pub mod lora;
pub mod moe;
pub mod params;
pub mod rope;
pub mod transformer;

pub use config::ModelConfig;

/// How a model computes: fp32 throughout, or bf16 mixed precision — for training fp32 master
/// weights and AdamW moments with bf16 matmuls and activations (norm, softmax and loss statistics in
/// f32), for inference bf16 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

named_enum!(Precision { F32 => "fp32", Bf16 => "bf16" });

impl Precision {
    /// The dtype activations are computed in.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}
pub use kv_cache::{KvCache, KvFormat, KvPool};
pub use transformer::*;
