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
    /// minimind-3 (Qwen3): RMSNorm over each query and key head before RoPE (`q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Mixture of experts in every block's feed-forward (see [`crate::model::moe`]).
    pub use_moe: bool,
    /// Experts each token is routed to (k).
    pub num_experts_per_tok: usize,
    /// Routed experts E (minimind-3 calls it `num_experts`).
    #[serde(alias = "num_experts")]
    pub n_routed_experts: usize,
    /// Experts every token also passes through (MiniMind2-MoE: 1; minimind-3: 0).
    pub n_shared_experts: usize,
    pub scoring_func: String,
    /// MiniMind2's aux-loss weight α and its per-sequence form.
    pub aux_loss_alpha: f64,
    pub seq_aux: bool,
    pub norm_topk_prob: bool,
    /// minimind-3's aux-loss coefficient; when set, its Switch-style aux loss replaces MiniMind2's.
    pub router_aux_loss_coef: Option<f64>,
    /// Width of each expert (default: `intermediate_size`).
    pub moe_intermediate_size: Option<usize>,
    /// RoPE scaling for long prompts at inference (minimind-3's YaRN); `None`: plain RoPE.
    pub rope_scaling: Option<RopeScaling>,
}

/// YaRN RoPE scaling as minimind-3 (and HF) write it in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(rename = "type", alias = "rope_type")]
    pub kind: String,
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "RopeScaling::default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "RopeScaling::default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "RopeScaling::default_attention_factor")]
    pub attention_factor: f64,
}

impl RopeScaling {
    /// minimind-3's `inference_rope_scaling`: factor 16 over an original context of 2048.
    pub fn minimind3() -> Self {
        Self {
            kind: "yarn".into(),
            factor: 16.0,
            original_max_position_embeddings: 2048,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
        }
    }

    fn default_beta_fast() -> f64 {
        32.0
    }

    fn default_beta_slow() -> f64 {
        1.0
    }

    fn default_attention_factor() -> f64 {
        1.0
    }
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
            qk_norm: false,
            router_aux_loss_coef: None,
            moe_intermediate_size: None,
            rope_scaling: None,
        }
    }
}

/// Names accepted by `--preset`.
pub const PRESETS: &[&str] =
    &["tiny", "tiny-moe", "minimind2-small", "minimind2", "minimind2-moe", "minimind3", "minimind3-moe"];

impl ModelConfig {
    /// A named preset with its FFN width resolved.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self::default();
        // MiniMind2-MoE: 4 routed experts (top-2) and 1 shared, seq-level aux loss α 0.1.
        let moe2 = Self { use_moe: true, ..base.clone() };
        // minimind-3: width 768, 4 KV heads, q/k norm, FFN ⌈768π/64⌉·64, ε 1e-6.
        let v3 = Self {
            hidden_size: 768,
            num_key_value_heads: 4,
            intermediate_size: Some(Self::pi_intermediate_size(768)),
            rms_norm_eps: 1e-6,
            qk_norm: true,
            ..base.clone()
        };
        // minimind-3-MoE: 4 experts, top-1, no shared expert, Switch-style aux coefficient 5e-4.
        let moe3 = Self {
            use_moe: true,
            num_experts_per_tok: 1,
            n_shared_experts: 0,
            router_aux_loss_coef: Some(5e-4),
            ..v3.clone()
        };
        // Small enough for unit tests and the CPU demo, same shape rules as the real models.
        let tiny = Self {
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 2048,
            ..base.clone()
        };
        let config = match name {
            "minimind2-small" => base,
            "minimind2" => Self { hidden_size: 768, num_hidden_layers: 16, ..base },
            "minimind2-moe" => Self { hidden_size: 640, ..moe2 },
            "minimind3" => v3,
            "minimind3-moe" => moe3,
            "tiny" => tiny,
            "tiny-moe" => Self { use_moe: true, ..tiny },
            other => bail!("unknown preset {other:?}; expected one of {}", PRESETS.join(", ")),
        };
        config.resolved()
    }

    /// minimind-3's FFN width rule: `64 · ⌈h·π / 64⌉`.
    pub fn pi_intermediate_size(hidden_size: usize) -> usize {
        64 * (hidden_size as f64 * std::f64::consts::PI / 64.0).ceil() as usize
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
            let (k, e) = (self.num_experts_per_tok, self.n_routed_experts);
            if e == 0 || k == 0 || k > e {
                bail!("a MoE model needs 1 ≤ num_experts_per_tok ({k}) ≤ n_routed_experts ({e})");
            }
            if self.scoring_func != "softmax" {
                bail!("scoring_func {:?} is not supported (only \"softmax\", as MiniMind)", self.scoring_func);
            }
        }
        if let Some(r) = &self.rope_scaling {
            let factor_ok = r.factor.is_finite() && r.factor >= 1.0;
            if r.kind != "yarn" || !factor_ok || r.original_max_position_embeddings == 0 {
                bail!("rope_scaling: only {{\"type\": \"yarn\", \"factor\" ≥ 1, …}} is supported, got {r:?}");
            }
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

    /// Width of each expert of a MoE layer.
    pub fn expert_ffn_size(&self) -> usize {
        self.moe_intermediate_size.unwrap_or_else(|| self.ffn_size())
    }

    /// Trainable parameters, counting a tied embedding/head once.
    pub fn num_parameters(&self) -> usize {
        self.count_parameters(self.n_routed_experts)
    }

    /// Parameters one token passes through: a MoE layer counts only its k routed experts (plus the
    /// shared ones and the router). Equal to [`num_parameters`](Self::num_parameters) for dense models.
    pub fn num_active_parameters(&self) -> usize {
        self.count_parameters(self.num_experts_per_tok)
    }

    fn count_parameters(&self, routed: usize) -> usize {
        let (d, v, hd) = (self.hidden_size, self.vocab_size, self.head_dim());
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let attention = d * q * 2 + d * kv * 2 + if self.qk_norm { 2 * hd } else { 0 };
        let ffn = match self.use_moe {
            false => 3 * d * self.ffn_size(),
            true => (routed + self.n_shared_experts) * 3 * d * self.expert_ffn_size() + self.n_routed_experts * d,
        };
        let layer = attention + ffn + 2 * d;
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
