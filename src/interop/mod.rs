//! Other formats: MiniMind's `.pth` and HF folders in ([`import`]); HF folders ([`hf`]) and GGUF for
//! llama.cpp ([`gguf`]) out, both in the [`Architecture`] the model maps onto.

pub mod gguf;
pub mod hf;
pub mod import;

/// The architecture a model exports as, for transformers and llama.cpp alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// MiniMind2 (dense).
    Llama,
    /// MiniMind2-MoE: top-k softmax routing (renormalized, k > 1) and at most one ungated shared expert.
    GraniteMoe,
    /// minimind-3 (q/k norm).
    Qwen3,
    /// minimind-3-MoE (q/k norm, no shared expert).
    Qwen3Moe,
}

impl Architecture {
    pub fn of(c: &crate::ModelConfig) -> anyhow::Result<Self> {
        Ok(match (c.qk_norm, c.use_moe) {
            (false, false) => Self::Llama,
            (true, false) => Self::Qwen3,
            (true, true) if c.n_shared_experts == 0 => Self::Qwen3Moe,
            (false, true) if c.n_shared_experts <= 1 && c.num_experts_per_tok > 1 && c.norm_topk_prob => {
                Self::GraniteMoe
            }
            _ => anyhow::bail!(
                "no transformers or llama.cpp architecture matches this model (q/k norm {}, MoE {}, {} shared \
                 experts, top-{}, renormalized {})",
                c.qk_norm,
                c.use_moe,
                c.n_shared_experts,
                c.num_experts_per_tok,
                c.norm_topk_prob
            ),
        })
    }
}
