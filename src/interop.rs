//! Interop with HF tools: export a model folder as a plain HF Llama checkpoint
//! (`LlamaForCausalLM`, loadable by transformers without custom code), and import HF folders —
//! MiniMind's own (`model_type: minimind`) or Llama exports — from safetensors or `pytorch_model.bin`.
//! Imports are validated by name and shape: a missing, extra or mis-shaped tensor is an error.

use crate::checkpoint::{self, atomic_write, copy_tokenizer_files, save_tensors};
use crate::params::{InitScheme, WeightBuilder};
use crate::{MiniMindForCausalLM, ModelConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// Storage type of exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDType {
    F32,
    F16,
    Bf16,
}

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
pub fn export_hf_llama(model_dir: &Path, out: &Path, dtype: ExportDType) -> Result<()> {
    let (model, _) = checkpoint::load_model(model_dir, &Device::Cpu, DType::F32, false)?;
    let c = &model.config;
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

/// Our config from an HF config.json (`model_type` minimind or llama).
pub fn config_from_hf(v: &Value, path: &Path) -> Result<ModelConfig> {
    let kind = v.get("model_type").and_then(Value::as_str).unwrap_or("minimind");
    let config: ModelConfig = match kind {
        "minimind" => {
            serde_json::from_value(v.clone()).with_context(|| format!("{}: not a MiniMind config", path.display()))?
        }
        "llama" => {
            let mut c: ModelConfig =
                serde_json::from_value(v.clone()).with_context(|| format!("{}: not a Llama config", path.display()))?;
            c.model_type = "minimind".into();
            c.architectures = vec!["MiniMindForCausalLM".into()];
            if let Some(d) = v.get("head_dim").and_then(Value::as_u64) {
                if d as usize * c.num_attention_heads != c.hidden_size {
                    bail!("{}: head_dim {d} × heads ≠ hidden_size is not supported", path.display());
                }
            }
            if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
                bail!("{}: rope_scaling is not supported yet", path.display());
            }
            c
        }
        other => bail!("{}: model_type {other:?} is not supported (minimind or llama)", path.display()),
    };
    config.resolved().with_context(|| format!("{}: invalid config", path.display()))
}

/// Reads a folder's weights: `model.safetensors` (or sharded `*.safetensors`) or `pytorch_model.bin`.
fn read_weights(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut found = false;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors")
            && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            tensors.extend(checkpoint::load_tensors(&path, &Device::Cpu)?);
            found = true;
        }
    }
    let bin = dir.join("pytorch_model.bin");
    if !found && bin.exists() {
        let list = candle_core::pickle::read_all(&bin).with_context(|| format!("reading {}", bin.display()))?;
        tensors.extend(list);
        found = true;
    }
    if !found {
        bail!("{}: no model.safetensors or pytorch_model.bin", dir.display());
    }
    // DDP checkpoints prefix every name with "module.".
    Ok(tensors.into_iter().map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v)).collect())
}

/// Imports an HF folder into a model folder of ours (weights in f32), checking every tensor.
pub fn import_hf(src: &Path, out: &Path, tokenizer_dir: Option<&Path>) -> Result<MiniMindForCausalLM> {
    let config_path = src.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let mut config = config_from_hf(&value, &config_path)?;
    let mut tensors = read_weights(src)?;
    // Tied when there is no separate head, or when the head equals the embedding (MiniMind stores
    // the tied tensor twice; our Llama export writes an explicit copy).
    let same = |a: &Tensor, b: &Tensor| -> Result<bool> {
        Ok(a.shape() == b.shape()
            && a.to_dtype(DType::F32)?.ne(&b.to_dtype(DType::F32)?)?.sum_all()?.to_scalar::<u8>()? == 0)
    };
    config.tie_word_embeddings = match (tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")) {
        (None, _) => true,
        (Some(head), Some(embed)) if same(head, embed)? => {
            tensors.remove("lm_head.weight");
            true
        }
        _ => false,
    };
    let wb = WeightBuilder::loaded(tensors, DType::F32, &Device::Cpu, false);
    let model = MiniMindForCausalLM::new(&config, &wb, InitScheme::Minimind2)?;
    wb.finish().with_context(|| format!("importing {}", src.display()))?;
    checkpoint::save_model(out, &model)?;
    copy_tokenizer_files(tokenizer_dir.unwrap_or(src), out)?;
    Ok(model)
}
