//! Rotary position embedding's tables: the frequencies (θ^(−2i/D), with minimind-3's YaRN scaling
//! past the original context) and the cos/sin rows every position rotates its queries and keys by
//! (the rotation itself is [`crate::ops::apply_rope`]).

use crate::model::config::ModelConfig;
use anyhow::Result;
use candle_core::{Device, Tensor};

/// `inv_freq[i] = θ^(−2i/D)` for i < D/2, computed in f32 as PyTorch does.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let theta = theta as f32;
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Precomputed RoPE tables `cos`, `sin`: `[max_positions, D]`, each row `[cos φ, cos φ]` with
/// `φ[p, i] = p · inv_freq[i]` (the halves repeat for the rotate_half convention).
#[derive(Clone)]
pub struct RotaryEmbedding {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// minimind-3's YaRN (applied when the context exceeds the original one): frequencies of dimension
/// pairs i are divided by `factor` in proportion to a ramp `r_i = clamp((i − low)/(high − low), 0, 1)`
/// — `inv_freq[i] · (1 − r_i + r_i/factor)` — where `low`/`high` are the pairs whose wavelength fits
/// `β_fast` / `β_slow` turns in the original context: `inv_dim(β) = D·ln(L₀/(2πβ)) / (2·ln θ)`,
/// `low = max(⌊inv_dim(β_fast)⌋, 0)`, `high = min(⌈inv_dim(β_slow)⌉, D/2 − 1)`. Returns the
/// frequencies and the factor cos and sin are multiplied by.
pub fn yarn_inv_freq(config: &ModelConfig) -> (Vec<f32>, f32) {
    let d = config.head_dim();
    let mut inv_freq = rope_inv_freq(d, config.rope_theta);
    let Some(r) = config.rope_scaling.as_ref() else { return (inv_freq, 1.0) };
    let original = r.original_max_position_embeddings as f64;
    if config.max_position_embeddings as f64 / original <= 1.0 {
        return (inv_freq, 1.0);
    }
    let inv_dim =
        |beta: f64| d as f64 * (original / (2.0 * std::f64::consts::PI * beta)).ln() / (2.0 * config.rope_theta.ln());
    let low = inv_dim(r.beta_fast).floor().max(0.0);
    let high = inv_dim(r.beta_slow).ceil().min((d / 2 - 1) as f64);
    // The ramp and the product in f32, as PyTorch computes them.
    let (low, span, factor) = (low as f32, (high - low).max(0.001) as f32, r.factor as f32);
    for (i, f) in inv_freq.iter_mut().enumerate() {
        let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
        *f *= 1.0 - ramp + ramp / factor;
    }
    (inv_freq, r.attention_factor as f32)
}

impl RotaryEmbedding {
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self> {
        let d = config.head_dim();
        let (inv_freq, scale) = yarn_inv_freq(config);
        let n = config.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * d);
        let mut sin = Vec::with_capacity(n * d);
        for p in 0..n {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos() * scale);
                    sin.push(angle.sin() * scale);
                }
            }
        }
        Ok(Self { cos: Tensor::from_vec(cos, (n, d), device)?, sin: Tensor::from_vec(sin, (n, d), device)? })
    }

    /// Rows for positions `start .. start + len`.
    pub(crate) fn rows(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }
}
