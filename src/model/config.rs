//! Model configuration: MiniMind2's `MiniMindConfig` with HF-compatible field names.
//!
//! A model folder's `config.json` is this struct serialized. Unknown fields written by other tools
//! (`torch_dtype`, `transformers_version`, …) are ignored on load.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// FFN width. `None` in a hand-written config means "derive it": `64·ceil(int(8h/3)/64)`;
    /// [`ModelConfig::resolved`] writes the value back, as MiniMind does, so saved configs carry it.
    pub intermediate_size: Option<usize>,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Length of the RoPE tables; also the longest sequence the model accepts.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub dropout: f64,
    pub hidden_act: String,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub flash_attn: bool,
    // MoE fields: kept so MiniMind configs round-trip; a MoE model is rejected until MoE lands.
    pub use_moe: bool,
    pub num_experts_per_tok: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub scoring_func: String,
    pub aux_loss_alpha: f64,
    pub seq_aux: bool,
    pub norm_topk_prob: bool,
}

impl Default for ModelConfig {
    /// MiniMind2-Small, the defaults of MiniMind2's `MiniMindConfig`.
    fn default() -> Self {
        Self {
            model_type: "minimind".into(),
            architectures: vec!["MiniMindForCausalLM".into()],
            hidden_size: 512,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            intermediate_size: None,
            vocab_size: 6400,
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            tie_word_embeddings: true,
            dropout: 0.0,
            hidden_act: "silu".into(),
            bos_token_id: 1,
            eos_token_id: 2,
            flash_attn: true,
            use_moe: false,
            num_experts_per_tok: 2,
            n_routed_experts: 4,
            n_shared_experts: 1,
            scoring_func: "softmax".into(),
            aux_loss_alpha: 0.1,
            seq_aux: true,
            norm_topk_prob: true,
        }
    }
}

/// Names accepted by `--preset`.
pub const PRESETS: &[&str] = &["tiny", "minimind2-small", "minimind2"];

impl ModelConfig {
    /// A named preset with its FFN width resolved.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self::default();
        let config = match name {
            "minimind2-small" => base,
            "minimind2" => Self { hidden_size: 768, num_hidden_layers: 16, ..base },
            // Small enough for unit tests and the CPU demo, same shape rules as the real models.
            "tiny" => Self {
                hidden_size: 128,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                max_position_embeddings: 2048,
                ..base
            },
            other => bail!("unknown preset {other:?}; expected one of {}", PRESETS.join(", ")),
        };
        config.resolved()
    }

    /// MiniMind's FFN width rule: `64 · ceil(int(8h/3) / 64)`.
    pub fn default_intermediate_size(hidden_size: usize) -> usize {
        let h = hidden_size * 8 / 3;
        64 * h.div_ceil(64)
    }

    /// Fill derived fields and check the shape rules; every constructor path goes through here.
    pub fn resolved(mut self) -> Result<Self> {
        if self.intermediate_size.is_none() {
            self.intermediate_size = Some(Self::default_intermediate_size(self.hidden_size));
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let (h, q, kv) = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads);
        if h == 0 || q == 0 || kv == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            bail!(
                "hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers and vocab_size must be > 0"
            );
        }
        if h % q != 0 {
            bail!("hidden_size {h} is not divisible by num_attention_heads {q}");
        }
        if q % kv != 0 {
            bail!("num_attention_heads {q} is not a multiple of num_key_value_heads {kv}");
        }
        if (h / q) % 2 != 0 {
            bail!("head_dim {} must be even for RoPE", h / q);
        }
        if self.use_moe {
            bail!("MoE models (use_moe = true) are not supported yet");
        }
        if self.hidden_act != "silu" {
            bail!("hidden_act {:?} is not supported (only \"silu\")", self.hidden_act);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout must be in [0, 1), got {}", self.dropout);
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn ffn_size(&self) -> usize {
        self.intermediate_size.unwrap_or_else(|| Self::default_intermediate_size(self.hidden_size))
    }

    /// Trainable parameters, counting a tied embedding/head once.
    pub fn num_parameters(&self) -> usize {
        let (d, f, v) = (self.hidden_size, self.ffn_size(), self.vocab_size);
        let kv = self.num_key_value_heads * self.head_dim();
        let attention = d * d * 2 + d * kv * 2;
        let layer = attention + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers * layer + d + head
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid model config.json", path.display()))?;
        config.resolved().with_context(|| format!("{}: invalid model config", path.display()))
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}
