//! Inference: sampling, KV-cached decoding (one prompt or a batch), streaming text, and the split
//! of a reasoning model's answer into its thinking and its reply.

pub mod generate;
pub mod reasoning;
pub mod sampler;

pub use generate::{generate, generate_batch, FinishReason, Generation};
pub use sampler::{Sampler, SamplingParams};

use crate::model::{checkpoint, lora, MiniMindForCausalLM};
use crate::Tokenizer;
use anyhow::Result;
use candle_core::{DType, Device};
use std::path::Path;

/// A model folder ready for inference: its weights, a LoRA adapter merged in once (so decoding costs
/// what the base model costs), int8 weights when asked, and its tokenizer.
pub fn load(
    dir: &Path,
    adapter: Option<&Path>,
    device: &Device,
    int8: bool,
) -> Result<(MiniMindForCausalLM, Tokenizer)> {
    let (mut model, _) = checkpoint::load_model(dir, device, DType::F32, false)?;
    if let Some(adapter) = adapter {
        lora::load(&mut model, adapter, device)?;
        lora::merge(&mut model)?;
    }
    if int8 {
        model.quantize_int8()?;
    }
    Ok((model, Tokenizer::load(dir)?))
}
