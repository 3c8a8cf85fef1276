//! Export to HF tools as a native transformers architecture, loadable without custom code: MiniMind2
//! models as `LlamaForCausalLM`, minimind-3 as `Qwen3ForCausalLM` and minimind-3-MoE as
//! `Qwen3MoeForCausalLM` (the same tensor names, q/k norm, rotate-half RoPE and top-k softmax router),
//! MiniMind2-MoE as `GraniteMoeSharedForCausalLM` (top-k softmax routing and an ungated shared MLP).
//! Imports live in [`crate::interop::import`], GGUF in [`crate::interop::gguf`].

use super::Architecture;
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

/// The fields HF's Llama and Qwen3 configs share, for `c`.
fn transformer_config(c: &ModelConfig, dtype: ExportDType, architecture: &str, model_type: &str) -> Value {
    json!({
        "architectures": [architecture],
        "model_type": model_type,
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
        "hidden_act": c.hidden_act,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": dtype.torch_name(),
    })
}

/// HF `LlamaConfig` for `c`. The head is written untied (its own `lm_head.weight`), which every
/// Llama consumer (transformers, llama.cpp's converter, vLLM) reads the same way.
pub fn llama_config(c: &ModelConfig, dtype: ExportDType) -> Value {
    let mut v = transformer_config(c, dtype, "LlamaForCausalLM", "llama");
    v["rope_scaling"] = Value::Null;
    v["mlp_bias"] = json!(false);
    v["tie_word_embeddings"] = json!(false);
    v
}

/// HF `Qwen3Config` (dense) or `Qwen3MoeConfig` for a minimind-3 model: tied as minimind-3 is.
pub fn qwen3_config(c: &ModelConfig, dtype: ExportDType) -> Value {
    let mut v = transformer_config(c, dtype, "Qwen3ForCausalLM", "qwen3");
    v["rope_scaling"] = json!(c.rope_scaling.as_ref().map(|r| json!({
        "rope_type": r.kind, "factor": r.factor, "original_max_position_embeddings": r.original_max_position_embeddings,
        "beta_fast": r.beta_fast, "beta_slow": r.beta_slow, "attention_factor": r.attention_factor})));
    v["use_sliding_window"] = json!(false);
    v["sliding_window"] = Value::Null;
    v["max_window_layers"] = json!(c.num_hidden_layers);
    v["tie_word_embeddings"] = json!(c.tie_word_embeddings);
    if c.use_moe {
        v["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        v["model_type"] = json!("qwen3_moe");
        v["num_experts"] = json!(c.n_routed_experts);
        v["num_experts_per_tok"] = json!(c.num_experts_per_tok);
        v["moe_intermediate_size"] = json!(c.expert_ffn_size());
        v["norm_topk_prob"] = json!(c.norm_topk_prob);
        v["router_aux_loss_coef"] = json!(c.router_aux_loss_coef.unwrap_or(0.0));
        v["decoder_sparse_step"] = json!(1);
        v["mlp_only_layers"] = json!([]);
        v["output_router_logits"] = json!(false);
    }
    v
}

/// HF `GraniteMoeSharedConfig` for MiniMind2-MoE: Granite's MoE routes by a softmax over the top-k
/// router logits (= MiniMind2's renormalized top-k softmax scores) and adds an ungated shared MLP, as
/// MiniMind2-MoE does; its multipliers are set to be neutral (attention scale 1/√D).
pub fn granite_moe_config(c: &ModelConfig, dtype: ExportDType) -> Value {
    let mut v = transformer_config(c, dtype, "GraniteMoeSharedForCausalLM", "granitemoeshared");
    v["intermediate_size"] = json!(c.expert_ffn_size());
    v["shared_intermediate_size"] = json!(c.expert_ffn_size() * c.n_shared_experts);
    v["num_local_experts"] = json!(c.n_routed_experts);
    v["num_experts_per_tok"] = json!(c.num_experts_per_tok);
    v["router_aux_loss_coef"] = json!(c.aux_loss_alpha);
    v["output_router_logits"] = json!(false);
    v["embedding_multiplier"] = json!(1.0);
    v["residual_multiplier"] = json!(1.0);
    v["logits_scaling"] = json!(1.0);
    v["attention_multiplier"] = json!(1.0 / (c.head_dim() as f64).sqrt());
    v["rope_scaling"] = Value::Null;
    v["tie_word_embeddings"] = json!(c.tie_word_embeddings);
    v
}

/// The HF architecture a model exports as: MiniMind2 dense → Llama, minimind-3 → Qwen3 / Qwen3-MoE,
/// MiniMind2-MoE → GraniteMoeShared (its one shared expert; top-k > 1, whose weights MiniMind2
/// renormalizes as Granite's top-k softmax does).
pub fn native_config(c: &ModelConfig, dtype: ExportDType) -> Result<Value> {
    Ok(match Architecture::of(c)? {
        Architecture::Llama => llama_config(c, dtype),
        Architecture::GraniteMoe => granite_moe_config(c, dtype),
        Architecture::Qwen3 | Architecture::Qwen3Moe => qwen3_config(c, dtype),
    })
}

/// Granite's tensor layout for a MiniMind2-MoE layer: per layer the experts' `[gate; up]` stacked
/// `[E, 2F, d]` (`block_sparse_moe.input_linear`), their down projections `[E, d, F]`
/// (`output_linear`), the router (`router.layer`) and the shared MLP (`shared_mlp.input_linear` /
/// `output_linear`).
fn granite_tensors(model: &crate::MiniMindForCausalLM) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> =
        model.named_tensors().into_iter().filter(|(n, _)| !n.contains(".mlp.")).collect();
    for (i, layer) in model.model.layers.iter().enumerate() {
        let crate::model::FeedForward::Moe(moe) = &layer.mlp else { anyhow::bail!("layer {i} is not a MoE layer") };
        let p = format!("model.layers.{i}");
        let gate_up = |m: &crate::model::Mlp| Tensor::cat(&[&m.gate_proj.weight, &m.up_proj.weight], 0);
        let stacked = moe.experts.iter().map(gate_up).collect::<candle_core::Result<Vec<_>>>()?;
        out.push((format!("{p}.block_sparse_moe.input_linear.weight"), Tensor::stack(&stacked, 0)?));
        let downs: Vec<&Tensor> = moe.experts.iter().map(|m| &m.down_proj.weight).collect();
        out.push((format!("{p}.block_sparse_moe.output_linear.weight"), Tensor::stack(&downs, 0)?));
        out.push((format!("{p}.block_sparse_moe.router.layer.weight"), moe.gate.clone()));
        if let Some(shared) = moe.shared_experts.first() {
            out.push((format!("{p}.shared_mlp.input_linear.weight"), gate_up(shared)?));
            out.push((format!("{p}.shared_mlp.output_linear.weight"), shared.down_proj.weight.clone()));
        }
    }
    Ok(out)
}

/// Writes `out` as an HF Llama folder (MiniMind2 models only; see [`export_hf`]).
pub fn export_hf_llama(model_dir: &Path, lora: Option<&Path>, out: &Path, dtype: ExportDType) -> Result<()> {
    let model = crate::model::lora::load_merged(model_dir, lora, &candle_core::Device::Cpu)?;
    if Architecture::of(&model.config)? != Architecture::Llama {
        anyhow::bail!("this is not a MiniMind2 (Llama-shaped) model; export it with --format hf");
    }
    write_hf(&model, model_dir, out, dtype)
}

/// Writes `out` as an HF folder of the model's native architecture ([`native_config`]):
/// config.json, model.safetensors, generation_config.json and the tokenizer files.
pub fn export_hf(model_dir: &Path, lora: Option<&Path>, out: &Path, dtype: ExportDType) -> Result<()> {
    let model = crate::model::lora::load_merged(model_dir, lora, &candle_core::Device::Cpu)?;
    write_hf(&model, model_dir, out, dtype)
}

fn write_hf(model: &crate::MiniMindForCausalLM, model_dir: &Path, out: &Path, dtype: ExportDType) -> Result<()> {
    let c = &model.config;
    let config = native_config(c, dtype)?;
    let arch = Architecture::of(c)?;
    let mut tensors = match arch {
        Architecture::GraniteMoe => granite_tensors(model)?,
        _ => model.named_tensors(),
    };
    // Llama exports carry an explicit head (what every Llama consumer reads the same way); Qwen3 is
    // tied natively.
    if c.tie_word_embeddings && arch == Architecture::Llama {
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
    write_json("config.json", &config)?;
    write_json(
        "generation_config.json",
        &json!({"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "do_sample": true,
                "temperature": 0.85, "top_p": 0.85}),
    )?;
    save_tensors(&out.join(checkpoint::WEIGHTS_FILE), &tensors)?;
    copy_tokenizer_files(model_dir, out)
}
