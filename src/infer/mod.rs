//! Inference: sampling, KV-cached decoding (one prompt or a batch), streaming text, and the split
//! of a reasoning model's answer into its thinking and its reply.

pub mod batch;
pub mod generate;
pub mod grammar;
pub mod reasoning;
pub mod sampler;

pub use generate::{generate, generate_batch, FinishReason, Generation};
pub use sampler::{Sampler, SamplingParams};

use crate::model::{lora, MiniMindForCausalLM};
use crate::Tokenizer;
use anyhow::Result;
use candle_core::Device;
use std::path::Path;

/// How to load a model folder for inference.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A LoRA adapter folder, merged into the weights once.
    pub adapter: Option<std::path::PathBuf>,
    /// Int8 weights (CPU decoding reads ≈ 3.6× fewer bytes per token).
    pub int8: bool,
    /// YaRN RoPE scaling for prompts beyond the trained context (minimind-3's
    /// `inference_rope_scaling`: factor 16 over 2048 positions).
    pub rope_scaling: bool,
    /// fp32, or bf16 weights and activations (half the bytes per decoded token).
    pub precision: crate::model::Precision,
    /// Keys and values cached in f16 (CPU, fp32 activations): half the KV memory and traffic.
    pub kv_f16: bool,
    /// Keys and values cached as int8 rows with a scale each (CPU, fp32 activations): half of f16's.
    pub kv_int8: bool,
}

/// A model folder ready for inference: its weights, a LoRA adapter merged in once (so decoding costs
/// what the base model costs), int8 weights, YaRN and an f16 or int8 KV cache when asked, f32 CPU weights
/// packed into panels ([`crate::ops::panel`]: one kernel for decode batches and prompts), and its
/// tokenizer.
pub fn load(dir: &Path, device: &Device, options: &LoadOptions) -> Result<(MiniMindForCausalLM, Tokenizer)> {
    let mut model = lora::load_merged(dir, options.adapter.as_deref(), device)?;
    if options.rope_scaling {
        model.set_rope_scaling(Some(crate::model::config::RopeScaling::minimind3()))?;
    }
    if options.int8 {
        if options.precision != crate::model::Precision::F32 {
            anyhow::bail!("--int8 runs int8 weights with f32 activations; it cannot be combined with --dtype bf16");
        }
        model.quantize_int8()?;
    }
    if options.precision != crate::model::Precision::F32 {
        model = model.with_weights_in(options.precision.dtype())?;
    }
    model.pack_panels()?;
    model.set_kv_format(crate::model::KvFormat::from_flags(options.kv_f16, options.kv_int8)?)?;
    Ok((model, Tokenizer::load(dir)?))
}
