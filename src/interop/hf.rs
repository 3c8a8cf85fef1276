//! Export to HF tools: a model folder as a plain HF Llama checkpoint (`LlamaForCausalLM`, loadable
//! by transformers without custom code). Imports live in [`crate::interop::import`], GGUF in [`crate::interop::gguf`].

use crate::model::checkpoint::{self, atomic_write, copy_tokenizer_files, save_tensors};
use crate::ModelConfig;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::path::Path;

/// Storage type of exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDType {
    F32,
    F16,
    Bf16,
}

named_enum!(ExportDType { F32 => "f32", F16 => "f16", Bf16 => "bf16" });

impl ExportDType {
    fn dtype(self) -> DType {
        match self {
            ExportDType::F32 => DType::F32,
            ExportDType::F16 => DType::F16,
            ExportDType::Bf16 => DType::BF16,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            ExportDType::F32 => "float32",
            ExportDType::F16 => "float16",
            ExportDType::Bf16 => "bfloat16",
        }
    }
}

/// HF `LlamaConfig` for `c`. The head is written untied (its own `lm_head.weight`), which every
/// Llama consumer (transformers, llama.cpp's converter, vLLM) reads the same way.
pub fn llama_config(c: &ModelConfig, dtype: ExportDType) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.ffn_size(),
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim(),
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "hidden_act": c.hidden_act,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "tie_word_embeddings": false,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": dtype.torch_name(),
    })
}

/// Writes `out` as an HF Llama folder: config.json, model.safetensors, generation_config.json and the
/// tokenizer files.
pub fn export_hf_llama(model_dir: &Path, lora: Option<&Path>, out: &Path, dtype: ExportDType) -> Result<()> {
    let model = crate::model::lora::load_merged(model_dir, lora)?;
    let c = &model.config;
    super::require_llama_shape(c)?;
    let mut tensors = model.named_tensors();
    if c.tie_word_embeddings {
        tensors.push(("lm_head.weight".into(), model.lm_head.weight.clone()));
    }
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype.dtype())?)))
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let write_json = |name: &str, v: &Value| -> Result<()> {
        let text = serde_json::to_string_pretty(v)?;
        atomic_write(&out.join(name), |w| Ok(w.write_all(text.as_bytes())?))
    };
    write_json("config.json", &llama_config(c, dtype))?;
    write_json(
        "generation_config.json",
        &json!({"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "do_sample": true,
                "temperature": 0.85, "top_p": 0.85}),
    )?;
    save_tensors(&out.join(checkpoint::WEIGHTS_FILE), &tensors)?;
    copy_tokenizer_files(model_dir, out)
}
