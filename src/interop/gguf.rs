//! GGUF export for llama.cpp / ollama: architecture `llama` (MiniMind2), `granitemoe`
//! (MiniMind2-MoE: top-k softmax routing and a shared expert, Granite's multipliers neutral), `qwen3`
//! (minimind-3) or `qwen3moe` (minimind-3-MoE), the metadata llama.cpp reads, the BPE vocabulary
//! (`tokenizer.ggml.model = gpt2`, pre-tokenizer `gpt-2` — MiniMind's byte-level regex is GPT-2's), the
//! chat template, and tensors under llama.cpp's names in f32, f16 or q8_0.
//!
//! llama.cpp's `llama` graph applies RoPE to interleaved pairs (Meta's layout), while our weights use
//! rotate_half (HF's); like llama.cpp's own converter, the Q and K rows of every head are permuted:
//! new row `i·2 + j` = old row `j·D/2 + i`. Its `qwen3` graphs rotate halves (NeoX style) as we do, so
//! their Q and K go as they are; the experts of a MoE layer are stacked into `[E, F, d]` / `[E, d, F]`.

use super::Architecture;
use crate::data::tokenizer::Tokenizer;
use crate::model::checkpoint::atomic_write;
use crate::model::FeedForward;
use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Tensor;
use gguf_file::Value;
use serde_json::Value as Json;
use std::io::Cursor;
use std::path::Path;

/// Tensor storage of a GGUF export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

named_enum!(GgufType { F32 => "f32", F16 => "f16", Q8_0 => "q8_0" });

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

/// Reorders the rows of each head from rotate_half pairs `(i, i + D/2)` to interleaved `(2i, 2i+1)`.
pub fn permute_for_llama_cpp(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d = rows / heads;
    Ok(w.reshape((heads, 2, d / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// The vocabulary by id, each token's llama.cpp type (1 normal, 3 control) and the merges.
fn vocabulary(tokenizer_json: &Json, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>, Vec<String>)> {
    let model = &tokenizer_json["model"];
    if model["type"] != "BPE" {
        bail!("only BPE tokenizers can be exported to GGUF");
    }
    let mut tokens = vec![None; vocab_size];
    let mut types = vec![1i32; vocab_size];
    let vocab = model["vocab"].as_object().context("tokenizer.json has no model.vocab")?;
    let added = tokenizer_json["added_tokens"].as_array().cloned().unwrap_or_default();
    let entries = vocab.iter().map(|(t, id)| (t.clone(), id.as_u64(), false));
    let specials =
        added.iter().map(|a| (a["content"].as_str().unwrap_or("").to_string(), a["id"].as_u64(), a["special"] == true));
    for (token, id, special) in entries.chain(specials) {
        let id = id.context("a token without an id")? as usize;
        if id >= vocab_size {
            bail!("token id {id} does not fit the model's vocab_size {vocab_size}");
        }
        tokens[id] = Some(token);
        if special {
            types[id] = 3;
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5; // unused slot
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges = model["merges"]
        .as_array()
        .context("tokenizer.json has no model.merges")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                Ok(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or("")))
            }
            _ => bail!("unreadable merge {m}"),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((tokens, types, merges))
}

/// Writes `model_dir` as a GGUF v3 file at `out`.
pub fn export(model_dir: &Path, lora: Option<&Path>, out: &Path, ty: GgufType) -> Result<()> {
    let model = crate::model::lora::load_merged(model_dir, lora, &candle_core::Device::Cpu)?;
    let c = &model.config;
    let architecture = Architecture::of(c)?;
    let arch = match architecture {
        Architecture::Llama => "llama",
        Architecture::GraniteMoe => "granitemoe",
        Architecture::Qwen3 => "qwen3",
        Architecture::Qwen3Moe => "qwen3moe",
    };
    let tokenizer = Tokenizer::load(model_dir)?;
    let tj: Json = serde_json::from_str(&std::fs::read_to_string(model_dir.join("tokenizer.json"))?)?;
    let (tokens, types, merges) = vocabulary(&tj, c.vocab_size)?;
    let u32v = |v: usize| Value::U32(v as u32);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(model_dir.file_name().map_or("minimind".into(), |n| n.to_string_lossy().to_string())),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        (format!("{arch}.context_length"), u32v(c.max_position_embeddings)),
        (format!("{arch}.embedding_length"), u32v(c.hidden_size)),
        (format!("{arch}.block_count"), u32v(c.num_hidden_layers)),
        (format!("{arch}.feed_forward_length"), u32v(c.ffn_size())),
        (format!("{arch}.attention.head_count"), u32v(c.num_attention_heads)),
        (format!("{arch}.attention.head_count_kv"), u32v(c.num_key_value_heads)),
        (format!("{arch}.attention.key_length"), u32v(c.head_dim())),
        (format!("{arch}.attention.value_length"), u32v(c.head_dim())),
        (format!("{arch}.rope.dimension_count"), u32v(c.head_dim())),
        (format!("{arch}.rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32)),
        (format!("{arch}.vocab_size"), u32v(c.vocab_size)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges".into(), strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(tokenizer.bos_id()?)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(tokenizer.eos_id()?)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(tokenizer.pad_id()?)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let config: Json = serde_json::from_str(
        &std::fs::read_to_string(model_dir.join("tokenizer_config.json")).unwrap_or_else(|_| "{}".into()),
    )?;
    if let Some(t) = config["chat_template"].as_str() {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.to_string())));
    }
    if architecture == Architecture::GraniteMoe {
        // Granite's multipliers, neutral: logits, residuals and embeddings unscaled, attention 1/√D.
        for key in ["logit_scale", "residual_scale", "embedding_scale"] {
            meta.push((format!("{arch}.{key}"), Value::F32(1.0)));
        }
        meta.push((format!("{arch}.attention.scale"), Value::F32(1.0 / (c.head_dim() as f32).sqrt())));
        meta.push((
            format!("{arch}.expert_shared_feed_forward_length"),
            u32v(c.expert_ffn_size() * c.n_shared_experts),
        ));
    }
    if c.use_moe {
        meta.push((format!("{arch}.expert_count"), u32v(c.n_routed_experts)));
        meta.push((format!("{arch}.expert_used_count"), u32v(c.num_experts_per_tok)));
        meta.push((format!("{arch}.expert_feed_forward_length"), u32v(c.expert_ffn_size())));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String, t: &Tensor, quantize: bool| -> Result<()> {
        // Norm weights stay f32 (llama.cpp expects 1-D tensors unquantized).
        let dtype = if quantize { ty.ggml() } else { GgmlDType::F32 };
        tensors.push((name, QTensor::quantize(t, dtype)?));
        Ok(())
    };
    add("token_embd.weight".into(), &model.model.embed_tokens, true)?;
    for (i, l) in model.model.layers.iter().enumerate() {
        let a = &l.self_attn;
        add(format!("blk.{i}.attn_norm.weight"), &l.input_layernorm.weight, false)?;
        // llama.cpp's llama and granite graphs rotate interleaved pairs, its qwen3 ones halves.
        let (q, k) = match architecture {
            Architecture::Llama | Architecture::GraniteMoe => (
                permute_for_llama_cpp(&a.q_proj.weight, c.num_attention_heads)?,
                permute_for_llama_cpp(&a.k_proj.weight, c.num_key_value_heads)?,
            ),
            _ => (a.q_proj.weight.clone(), a.k_proj.weight.clone()),
        };
        add(format!("blk.{i}.attn_q.weight"), &q, true)?;
        add(format!("blk.{i}.attn_k.weight"), &k, true)?;
        add(format!("blk.{i}.attn_v.weight"), &a.v_proj.weight, true)?;
        add(format!("blk.{i}.attn_output.weight"), &a.o_proj.weight, true)?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            add(format!("blk.{i}.attn_q_norm.weight"), &qn.weight, false)?;
            add(format!("blk.{i}.attn_k_norm.weight"), &kn.weight, false)?;
        }
        add(format!("blk.{i}.ffn_norm.weight"), &l.post_attention_layernorm.weight, false)?;
        match &l.mlp {
            FeedForward::Dense(mlp) => {
                add(format!("blk.{i}.ffn_gate.weight"), &mlp.gate_proj.weight, true)?;
                add(format!("blk.{i}.ffn_up.weight"), &mlp.up_proj.weight, true)?;
                add(format!("blk.{i}.ffn_down.weight"), &mlp.down_proj.weight, true)?;
            }
            FeedForward::Moe(moe) => {
                // The router stays f32, as llama.cpp's converter keeps it.
                add(format!("blk.{i}.ffn_gate_inp.weight"), &moe.gate, false)?;
                let stack = |pick: fn(&crate::model::Mlp) -> &Tensor| -> Result<Tensor> {
                    Ok(Tensor::stack(&moe.experts.iter().map(pick).collect::<Vec<_>>(), 0)?)
                };
                add(format!("blk.{i}.ffn_gate_exps.weight"), &stack(|m| &m.gate_proj.weight)?, true)?;
                add(format!("blk.{i}.ffn_up_exps.weight"), &stack(|m| &m.up_proj.weight)?, true)?;
                add(format!("blk.{i}.ffn_down_exps.weight"), &stack(|m| &m.down_proj.weight)?, true)?;
                if let Some(shared) = moe.shared_experts.first() {
                    add(format!("blk.{i}.ffn_gate_shexp.weight"), &shared.gate_proj.weight, true)?;
                    add(format!("blk.{i}.ffn_up_shexp.weight"), &shared.up_proj.weight, true)?;
                    add(format!("blk.{i}.ffn_down_shexp.weight"), &shared.down_proj.weight, true)?;
                }
            }
        }
    }
    add("output_norm.weight".into(), &model.model.norm.weight, false)?;
    add("output.weight".into(), &model.lm_head.weight, true)?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut bytes = Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &meta_refs, &tensor_refs)?;
    let mut bytes = bytes.into_inner();
    // GGUF v3 has v2's layout for little-endian files; it only adds big-endian support.
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    atomic_write(out, |w| Ok(w.write_all(&bytes)?))
}
