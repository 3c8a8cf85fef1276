//! Other formats: MiniMind's `.pth` and HF folders in ([`import`]); HF Llama folders ([`hf`]) and
//! GGUF for llama.cpp ([`gguf`]) out.

pub mod gguf;
pub mod hf;
pub mod import;

/// The exports write Llama-shaped models: a MoE or q/k-norm (minimind-3) model is refused rather than
/// written wrong.
pub(crate) fn require_llama_shape(c: &crate::ModelConfig) -> anyhow::Result<()> {
    if c.use_moe || c.qk_norm {
        anyhow::bail!(
            "this model is {}; exporting it (as Qwen3 / Qwen3-MoE) is not supported yet — only dense MiniMind2 models export",
            if c.use_moe { "a mixture of experts" } else { "minimind-3 shaped (q/k norm)" }
        );
    }
    Ok(())
}
