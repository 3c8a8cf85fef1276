//! The losses of reinforcement learning from sampled completions, as minimind-3 defines them
//! (`trainer/train_grpo.py`, `trainer/train_ppo.py`).
//!
//! **GRPO** samples a group of `G` completions per prompt and scores each; a completion's advantage
//! is its reward against its group's, `A = (r − mean) / (std + 1e-4)` (biased std), shared by all its
//! tokens. Per sampled token, with `ratio = e^(logπ − logπ_old)` and the k3 estimate of the KL to the
//! frozen reference `KL = e^(ref − logπ) − (ref − logπ) − 1` (≥ 0, unbiased):
//! - `grpo`:  `−min(ratio·A, clip(ratio, 1 − ε, 1 + ε)·A) + β·KL`
//! - `cispo`: `−sg(min(ratio, ε_high))·A·logπ + β·KL` (the ratio only weighs the gradient; no token's
//!   gradient is clipped away — minimind-3's default)
//!
//! Each completion's loss is the mean over its sampled tokens (mask through its first stop token), the
//! batch's the mean over completions.
//!
//! **PPO** ([`gae`]) has a critic instead of groups: the reward sits on the last response token and
//! generalized advantage estimation spreads it back: `δ_t = r_t + γ·V_{t+1} − V_t`,
//! `A_t = δ_t + γλ·A_{t+1}`, returns `A_t + V_t`.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

/// Which policy-gradient loss GRPO optimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyLossKind {
    Grpo,
    Cispo,
}

named_enum!(PolicyLossKind { Grpo => "grpo", Cispo => "cispo" });

/// The loss's coefficients (minimind-3's defaults in [`Default`]).
#[derive(Debug, Clone, Copy)]
pub struct PolicyLossConfig {
    pub kind: PolicyLossKind,
    /// KL coefficient β.
    pub beta: f64,
    /// GRPO's clip range ε: the ratio is clipped to `[1 − ε, 1 + ε]`.
    pub epsilon: f64,
    /// CISPO's cap on the (detached) ratio.
    pub epsilon_high: f64,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        Self { kind: PolicyLossKind::Cispo, beta: 0.1, epsilon: 0.2, epsilon_high: 5.0 }
    }
}

/// Mean and biased (population) standard deviation; `(0, 0)` for no values.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// `(r − mean_group) / (std_group + 1e-4)` for rewards laid out group after group.
pub fn group_advantages(rewards: &[f64], group: usize) -> Result<Vec<f64>> {
    if group == 0 || !rewards.len().is_multiple_of(group) {
        bail!("{} rewards do not split into groups of {group}", rewards.len());
    }
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let (mean, std) = mean_std(g);
        out.extend(g.iter().map(|r| (r - mean) / (std + 1e-4)));
    }
    Ok(out)
}

/// The mask of a completion's sampled tokens that count: every token up to and including the first
/// stop token (a completion cut by its length counts whole).
pub fn completion_mask(tokens: &[u32], stop: &[u32]) -> Vec<f32> {
    let end = tokens.iter().position(|t| stop.contains(t)).map_or(tokens.len(), |i| i + 1);
    (0..tokens.len()).map(|i| if i < end { 1.0 } else { 0.0 }).collect()
}

/// What one loss evaluation measured besides the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyStats {
    /// Mean k3 KL to the reference over counted tokens.
    pub kl: f64,
    /// Fraction of counted tokens whose ratio left the clip range (GRPO) or hit the cap (CISPO).
    pub clip_fraction: f64,
}

/// The policy loss of a batch of completions. `logp` `[N, T]` is the trained policy's log-probability
/// of each sampled token (with gradient); `old_logp` (the policy that sampled) and `ref_logp` (the
/// frozen reference) are constants of the same shape; `advantages` `[N]` (one per completion, GRPO)
/// or `[N, T]` (one per token, PPO); `mask` `[N, T]`.
pub fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    ref_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    c: &PolicyLossConfig,
) -> Result<(Tensor, PolicyStats)> {
    let (old_logp, ref_logp) = (old_logp.detach(), ref_logp.detach());
    let a = match advantages.rank() {
        1 => advantages.detach().unsqueeze(1)?,
        _ => advantages.detach(),
    };
    let to_ref = (&ref_logp - logp)?;
    let kl = ((to_ref.exp()? - &to_ref)? - 1.0)?;
    let ratio = (logp - &old_logp)?.exp()?;
    let (surrogate, clipped) = match c.kind {
        PolicyLossKind::Grpo => {
            let bounded = ratio.clamp(1.0 - c.epsilon, 1.0 + c.epsilon)?;
            let unclipped = ratio.broadcast_mul(&a)?;
            let clipped_term = bounded.broadcast_mul(&a)?;
            let outside = (ratio.lt(1.0 - c.epsilon)? + ratio.gt(1.0 + c.epsilon)?)?;
            (unclipped.minimum(&clipped_term)?, outside)
        }
        PolicyLossKind::Cispo => {
            let weight = ratio.minimum(c.epsilon_high)?.detach();
            (weight.broadcast_mul(&a)?.mul(logp)?, ratio.gt(c.epsilon_high)?)
        }
    };
    let per_token = ((kl.clone() * c.beta)? - surrogate)?;
    let counted = mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
    let loss = (per_token * mask)?.sum(D::Minus1)?.div(&counted)?.mean_all()?;
    let total = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    let masked_mean = |t: &Tensor| -> Result<f64> {
        Ok((t.to_dtype(mask.dtype())? * mask)?.sum_all()?.to_scalar::<f32>()? as f64 / total)
    };
    let stats = PolicyStats { kl: masked_mean(&kl.detach())?, clip_fraction: masked_mean(&clipped)? };
    Ok((loss, stats))
}

/// PPO's clipped value loss: `½·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²)` per counted
/// token (`values` with gradient, `old_values` and `returns` constants, all `[N, T]`), a masked mean
/// per sequence, then the batch mean — the same averaging as [`policy_loss`].
pub fn value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, clip: f64) -> Result<Tensor> {
    let (old, returns) = (old_values.detach(), returns.detach());
    let clipped = (&old + (values - &old)?.clamp(-clip, clip)?)?;
    let worst = (values - &returns)?.sqr()?.maximum(&(clipped - &returns)?.sqr()?)?;
    let counted = mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
    Ok(((worst * mask)?.sum(D::Minus1)?.div(&counted)?.mean_all()? * 0.5)?)
}

/// PPO's early-stop statistic: `½·mean((logπ − logπ_old)²)` over counted tokens.
pub fn approx_kl(logp: &Tensor, old_logp: &Tensor, mask: &Tensor) -> Result<f64> {
    let squared = (logp.detach() - old_logp)?.sqr()?;
    let total = mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    Ok(0.5 * (squared * mask)?.sum_all()?.to_scalar::<f32>()? as f64 / total)
}

/// Generalized advantage estimation over one response: `rewards` and critic `values` per token.
/// Returns `(advantages, returns)`; the value after the last token is 0.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    if rewards.len() != values.len() {
        bail!("{} rewards for {} values", rewards.len(), values.len());
    }
    let mut advantages = vec![0.0; rewards.len()];
    let mut next = (0.0, 0.0); // (V_{t+1}, A_{t+1})
    for t in (0..rewards.len()).rev() {
        let delta = rewards[t] + gamma * next.0 - values[t];
        advantages[t] = delta + gamma * lambda * next.1;
        next = (values[t], advantages[t]);
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    Ok((advantages, returns))
}

/// Advantages shifted and scaled to mean 0 and standard deviation 1 over the counted tokens
/// (`(a − mean) / (std + 1e-8)`, PPO's whitening).
pub fn whiten(values: &[f64]) -> Vec<f64> {
    let (mean, std) = mean_std(values);
    values.iter().map(|v| (v - mean) / (std + 1e-8)).collect()
}
