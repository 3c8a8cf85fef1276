//! `export` and `import`: model folders to and from other tools' formats.

use crate::interop::import::{import, ImportOptions, Imported};
use anyhow::Result;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// An HF folder of the model's native transformers architecture: Llama for MiniMind2, Qwen3 /
    /// Qwen3-MoE for minimind-3 (config.json, model.safetensors, tokenizer files).
    Hf,
    /// transformers' `LlamaForCausalLM` folder (MiniMind2 models).
    HfLlama,
    /// A GGUF v3 file for llama.cpp / ollama (`--out model.gguf`; `--dtype f32|f16|q8_0`).
    Gguf,
}

pub fn export_cmd(model: &Path, format: ExportFormat, out: &Path, dtype: &str, lora: Option<&Path>) -> Result<()> {
    match format {
        ExportFormat::Hf | ExportFormat::HfLlama => {
            let ty = dtype
                .parse::<crate::interop::hf::ExportDType>()
                .map_err(|_| anyhow::anyhow!("--dtype {dtype:?}: expected f32, f16 or bf16 for an HF folder"))?;
            match format {
                ExportFormat::Hf => crate::interop::hf::export_hf(model, lora, out, ty)?,
                _ => crate::interop::hf::export_hf_llama(model, lora, out, ty)?,
            }
        }
        ExportFormat::Gguf => {
            let ty = dtype
                .parse::<crate::interop::gguf::GgufType>()
                .map_err(|_| anyhow::anyhow!("--dtype {dtype:?}: expected f32, f16 or q8_0 for gguf"))?;
            crate::interop::gguf::export(model, lora, out, ty)?;
        }
    }
    println!("exported {} ({format:?}, {dtype}) to {}", model.display(), out.display());
    Ok(())
}

pub fn import_cmd(src: &Path, out: &Path, opts: &ImportOptions) -> Result<()> {
    let naming = |classic: bool| if classic { "MiniMind2-classic names, RoPE rows permuted" } else { "HF names" };
    match import(src, out, opts)? {
        Imported::Model { model, classic, tokenizer } => {
            let c = &model.config;
            println!(
                "imported {} ({}): {} parameters, hidden {}, {} layers, {} heads / {} KV heads, vocab {}, {}",
                src.display(),
                naming(classic),
                c.num_parameters(),
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size,
                if c.tie_word_embeddings { "tied head" } else { "separate head" }
            );
            if c.use_moe {
                println!(
                    "mixture of experts: {} experts, top-{}, {} shared; {} parameters active per token",
                    c.n_routed_experts,
                    c.num_experts_per_tok,
                    c.n_shared_experts,
                    c.num_active_parameters()
                );
            }
            if c.qk_norm {
                println!("minimind-3 attention (q/k norm)");
            }
            println!("tokenizer: {tokenizer}; model folder: {}", out.display());
        }
        Imported::Adapter { config, classic } => println!(
            "imported LoRA adapter {} ({}): rank {}, targets {}; adapter folder: {} (use with --lora)",
            src.display(),
            naming(classic),
            config.rank,
            config.targets.join(","),
            out.display()
        ),
    }
    Ok(())
}
