//! The reference implementations: every building block written with plain candle ops, all of which
//! have a backward and run on any device. The fused CPU kernels are tested against these, and they
//! are what other devices run.
//!
//! Trap avoided on purpose: candle's `softmax_last_dim`, `rms_norm`, `rope*` and `sdpa` have no
//! backward; gradients through them silently vanish while the loss still falls.

use candle_core::{DType, Device, Result, Tensor, D};

/// RMSNorm: `y = w ⊙ x / sqrt(mean(x²) + ε)`, normalized in f32 and cast back to the input dtype
/// before the weight multiply (MiniMind2's order).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normalized = x.broadcast_div(&(mean_square + eps)?.sqrt()?)?;
    normalized.to_dtype(dtype)?.broadcast_mul(weight)
}

/// SwiGLU's gate: `silu(gate) ⊙ up`, with `silu(x) = x·σ(x)`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `concat(−x[D/2:], x[:D/2])` on the last axis (HF-Llama's `rotate_half`).
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let first = x.narrow(D::Minus1, 0, half)?;
    let second = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&second.neg()?, &first], D::Minus1)
}

/// Rotary position embedding, rotate_half convention: `x' = x·cos + rotate_half(x)·sin`.
/// `x` is `[B, heads, T, D]`; `cos`/`sin` are `[T, D]` rows for the positions of these T tokens.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// Softmax over the last axis: `exp(x − max) / Σ exp(x − max)`. The max is detached: it cancels
/// out of the value, so its gradient is exactly zero and need not be traced.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// `log softmax` over the last axis, `x − max − log Σ exp(x − max)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// Additive causal mask `[T, past+T]`: query t (absolute position past+t) sees keys 0..=past+t.
/// Row p of one square table serves every `(t, past)`, so each device builds it once (doubling as
/// longer sequences come) and a forward pass narrows it: no host-to-device copy per layer and step.
pub fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    /// The largest table kept (16 MiB in f32); longer sequences build their mask per call.
    const MAX_CACHED: usize = 2048;
    static TABLES: std::sync::Mutex<Vec<Tensor>> = std::sync::Mutex::new(Vec::new());
    let total = past + t;
    if total > MAX_CACHED {
        return square_causal_mask(total, device)?.narrow(0, past, t);
    }
    let mut tables = TABLES.lock().map_err(|_| candle_core::Error::Msg("mask cache poisoned".into()))?;
    let found = tables.iter().position(|m| m.device().same_device(device));
    let table = match found {
        Some(i) if tables[i].dim(0)? >= total => tables[i].clone(),
        _ => {
            let table = square_causal_mask(total.next_power_of_two().min(MAX_CACHED), device)?;
            tables.retain(|m| !m.device().same_device(device));
            tables.push(table.clone());
            table
        }
    };
    table.narrow(0, past, t)?.narrow(1, 0, total)
}

/// `[n, n]`: 0 where key j ≤ query i, −∞ above the diagonal.
fn square_causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Tensor::from_vec(mask, (n, n), device)
}

/// Causal grouped-query attention, `softmax(QKᵀ/√D + mask)·V`.
///
/// `q` is `[B, H, T, D]`; `k`, `v` are `[B, K, S, D]` with `S = past + T` (the cache included) and
/// `H = K·rep`. Query head `h` uses KV head `h / rep` (MiniMind's `repeat_kv` order). Instead of
/// copying each KV head `rep` times, the `rep` query heads of a group are stacked along time:
/// `[B, K, rep·T, D]`, so one matmul per group serves them all.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, dropout: Option<(f64, u64)>) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (_, kv_heads, s, _) = k.dims4()?;
    let rep = h / kv_heads;
    let past = s - t;
    let q = q.reshape((b, kv_heads, rep * t, d))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let mut scores = scores.to_dtype(DType::F32)?.reshape((b, kv_heads, rep, t, s))?;
    if t > 1 {
        scores = scores.broadcast_add(&causal_mask(t, past, q.device())?)?;
    }
    let mut probs = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    if let Some((p, seed)) = dropout {
        probs = self::dropout(&probs, p, seed)?;
    }
    let out = probs.reshape((b, kv_heads, rep * t, s))?.matmul(v)?;
    out.reshape((b, h, t, d))
}

/// Masked mean cross-entropy: `Σ_i mask_i · (−log p(y_i | x)) / Σ_i mask_i` (0 when the mask is empty).
/// `logits` `[N, V]`, `targets` `[N]` (u32), `mask` `[N]` (f32, 0 or 1 or a weight).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let token_log_probs = target_log_probs(logits, targets)?;
    let total = (token_log_probs * mask)?.sum_all()?.neg()?;
    // A batch with nothing to supervise contributes 0 (not 0/0).
    let count = mask.sum_all()?.maximum(1e-12)?;
    total.broadcast_div(&count)
}

/// `log p(y_i)` for each row: log-softmax gathered at the target, `[N]`.
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let log_probs = log_softmax_last_dim(&logits)?;
    log_probs.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Inverted dropout with a deterministic mask: element i is kept iff `hash(seed, i) ≥ p`, and kept
/// values are scaled by `1/(1−p)`. A seed per call site and step makes training resumable exactly.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let scale = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..n as u64).map(|i| if unit_hash(seed, i) >= p { scale } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// SplitMix64 of `(seed, i)` mapped to [0, 1).
fn unit_hash(seed: u64, i: u64) -> f64 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `x` `[B, T, d]` projected by `w` `[n·D, d]` into heads `[B, n, T, D]`, RoPE applied when given.
pub fn project_heads(x: &Tensor, w: &Tensor, heads: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (b, t, d_model) = x.dims3()?;
    let z = x.reshape((b * t, d_model))?.matmul(&w.t()?)?.reshape((b, t, w.dim(0)?))?;
    split_heads(&z, heads, rope)
}

/// Projections `z` `[B, T, n·D]` split into heads `[B, n, T, D]`, RoPE applied when given.
pub fn split_heads(z: &Tensor, heads: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let (b, t, width) = z.dims3()?;
    let z = z.reshape((b, t, heads, width / heads))?.transpose(1, 2)?.contiguous()?;
    match rope {
        Some((cos, sin)) => apply_rope(&z, cos, sin),
        None => Ok(z),
    }
}

/// Heads `[B, H, T, D]` concatenated per position and projected by `w` `[d, H·D]` → `[B, T, d]`.
pub fn merge_heads(y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = y.dims4()?;
    let z = y.transpose(1, 2)?.reshape((b * t, h * d))?;
    z.matmul(&w.t()?)?.reshape((b, t, w.dim(0)?))
}
