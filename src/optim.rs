//! AdamW, the cosine learning-rate schedule and global-norm gradient clipping, as MiniMind uses them
//! (PyTorch semantics: decoupled weight decay applied to every parameter, bias-corrected moments).

use crate::params::Params;
use anyhow::{Context, Result};
use candle_core::{DType, Tensor, Var};

/// MiniMind's cosine schedule over `total` steps: `lr·(0.1 + 0.45·(1 + cos(π·t/T)))`, from `lr`
/// at t = 0 down to 0.1·lr at t = T.
pub fn cosine_lr(base_lr: f64, step: usize, total: usize) -> f64 {
    let progress = step as f64 / total.max(1) as f64;
    base_lr * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// `torch.optim.AdamW` defaults.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW with first/second moments per parameter (same order as [`Params`]).
pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses t = step after the increment).
    pub step: usize,
}

impl AdamW {
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let vars: Vec<Var> = params.vars().cloned().collect();
        let zeros = |v: &Var| Tensor::zeros(v.shape(), DType::F32, v.device());
        let m = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(zeros).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { config, vars, m, v, step: 0 })
    }

    /// One update with gradients `grads[i]` for parameter i:
    /// `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`, `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (i, var) in self.vars.iter().enumerate() {
            let g = grads[i].detach().to_dtype(DType::F32)?;
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + c.eps)?)?;
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            let p = ((p * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            var.set(&p.to_dtype(var.dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients, `√Σ‖g‖²`.
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(total.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// coefficient `max_norm/(norm + 1e-6)`, capped at 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// Sums gradients over micro-batches, one slot per parameter.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(params: &Params) -> Self {
        Self { sums: vec![None; params.entries.len()] }
    }

    pub fn add(&mut self, params: &Params, grads: &candle_core::backprop::GradStore) -> Result<()> {
        for (slot, (_, var)) in self.sums.iter_mut().zip(&params.entries) {
            if let Some(g) = grads.get(var.as_tensor()) {
                // Detached: a gradient may still reference the step's graph, which the optimizer
                // state must not keep alive across steps.
                let g = g.detach();
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros for a parameter that received none), resetting the sums.
    pub fn take(&mut self, params: &Params) -> Result<Vec<Tensor>> {
        self.sums
            .iter_mut()
            .zip(&params.entries)
            .map(|(slot, (name, var))| match slot.take() {
                Some(g) => Ok(g),
                None => Tensor::zeros(var.shape(), var.dtype(), var.device())
                    .with_context(|| format!("zero grad for {name}")),
            })
            .collect()
    }
}
