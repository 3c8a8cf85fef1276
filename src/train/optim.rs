//! AdamW, the cosine learning-rate schedule and global-norm gradient clipping, as MiniMind uses them
//! (PyTorch semantics: decoupled weight decay applied to every parameter, bias-corrected moments).
//!
//! On the CPU the update runs in place, multi-threaded, one pass over each parameter with the
//! clipping factor folded in; elsewhere (and as the test reference) it is composed of tensor ops.

use crate::model::params::Params;
use crate::ops;
use anyhow::{Context, Result};
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use std::sync::Mutex;

/// MiniMind's cosine learning-rate schedules, set on every **micro**-step `t` of `T` (spec §6.1).
/// An optimizer step uses the rate of its window's last micro-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LrSchedule {
    /// MiniMind2: `lr/10 + 0.5·lr·(1 + cos(π·t/T))`, t = 0…T−1 — starts at 1.1·lr.
    #[default]
    Minimind2,
    /// minimind-3: `lr·(0.1 + 0.45·(1 + cos(π·t/T)))`, t = 1…T — starts just under lr, ends at 0.1·lr.
    Minimind3,
}

impl LrSchedule {
    /// The rate at 0-based micro-step `micro` of `total`.
    pub fn at(self, base_lr: f64, micro: usize, total: usize) -> f64 {
        let total = total.max(1) as f64;
        let cos = |t: f64| (std::f64::consts::PI * t / total).cos();
        match self {
            Self::Minimind2 => base_lr / 10.0 + 0.5 * base_lr * (1.0 + cos(micro as f64)),
            Self::Minimind3 => base_lr * (0.1 + 0.45 * (1.0 + cos((micro + 1) as f64))),
        }
    }
}

named_enum!(LrSchedule { Minimind2 => "minimind2", Minimind3 => "minimind3" });

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

/// First and second moments of one parameter: host vectors for the in-place CPU path, tensors otherwise.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

/// AdamW with first/second moments per parameter (same order as [`Params`]).
pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<Var>,
    moments: Vec<Moments>,
    /// Optimizer steps taken (bias correction uses t = step after the increment).
    pub step: usize,
}

impl AdamW {
    /// In-place updates where possible (CPU, f32, fused kernels enabled).
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        Self::build(params, config, true)
    }

    /// Always the composed tensor-op update (the reference the in-place path is tested against).
    pub fn composed(params: &Params, config: AdamWConfig) -> Result<Self> {
        Self::build(params, config, false)
    }

    fn build(params: &Params, config: AdamWConfig, allow_in_place: bool) -> Result<Self> {
        let vars: Vec<Var> = params.vars().cloned().collect();
        let moments = vars
            .iter()
            .map(|v| -> Result<Moments> {
                if allow_in_place && in_place(v) {
                    Ok(Moments::Host { m: vec![0.0; v.elem_count()], v: vec![0.0; v.elem_count()] })
                } else {
                    let zeros = || Tensor::zeros(v.shape(), DType::F32, v.device());
                    Ok(Moments::Tensors { m: zeros()?, v: zeros()? })
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self { config, vars, moments, step: 0 })
    }

    /// One update with gradients `grads[i]` for parameter i, each first multiplied by `grad_scale`
    /// (the clipping factor): `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`, `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let c = self.config;
        let update = Update {
            lr: lr as f32,
            decay: (1.0 - lr * c.weight_decay) as f32,
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            eps: c.eps as f32,
            bias1: (1.0 - c.beta1.powi(t)) as f32,
            bias2: (1.0 - c.beta2.powi(t)) as f32,
            grad_scale: grad_scale as f32,
        };
        for ((var, moments), grad) in self.vars.iter().zip(&mut self.moments).zip(grads) {
            match moments {
                Moments::Host { m, v } => {
                    let op = InPlaceAdamW { update, m: Mutex::new((m, v)) };
                    var.as_tensor().inplace_op2(&grad.to_dtype(DType::F32)?.contiguous()?, &op)?;
                }
                Moments::Tensors { m, v } => composed_step(var, m, v, grad, &update)?,
            }
        }
        Ok(())
    }
}

impl AdamW {
    /// The moments as named tensors (`m.<param>`, `v.<param>`) for the resume checkpoint.
    pub fn state_tensors(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for ((name, var), moments) in params.entries.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
                ),
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("m.{name}"), m));
            out.push((format!("v.{name}"), v));
        }
        Ok(out)
    }

    /// Restores the moments written by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(
        &mut self,
        params: &Params,
        tensors: &std::collections::HashMap<String, Tensor>,
        step: usize,
    ) -> Result<()> {
        for ((name, var), moments) in params.entries.iter().zip(&mut self.moments) {
            let get = |key: String| -> Result<Tensor> {
                let t = tensors.get(&key).with_context(|| format!("optimizer state has no {key}"))?;
                if t.shape() != var.shape() {
                    anyhow::bail!("optimizer state {key} has shape {:?}, expected {:?}", t.dims(), var.dims());
                }
                Ok(t.to_dtype(DType::F32)?)
            };
            let (m, v) = (get(format!("m.{name}"))?, get(format!("v.{name}"))?);
            *moments = match moments {
                Moments::Host { .. } => {
                    Moments::Host { m: m.flatten_all()?.to_vec1()?, v: v.flatten_all()?.to_vec1()? }
                }
                Moments::Tensors { .. } => {
                    Moments::Tensors { m: m.to_device(var.device())?, v: v.to_device(var.device())? }
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

fn in_place(v: &Var) -> bool {
    matches!(v.device(), Device::Cpu) && v.dtype() == DType::F32 && v.is_contiguous() && ops::fused_enabled()
}

#[derive(Clone, Copy)]
struct Update {
    lr: f32,
    decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
    grad_scale: f32,
}

/// The update as tensor ops (any device, any dtype).
fn composed_step(var: &Var, m: &mut Tensor, v: &mut Tensor, grad: &Tensor, u: &Update) -> Result<()> {
    let g = (grad.detach().to_dtype(DType::F32)? * u.grad_scale as f64)?;
    *m = ((&*m * u.beta1 as f64)? + (&g * (1.0 - u.beta1 as f64))?)?;
    *v = ((&*v * u.beta2 as f64)? + (g.sqr()? * (1.0 - u.beta2 as f64))?)?;
    let step = ((&*m / u.bias1 as f64)? / ((&*v / u.bias2 as f64)?.sqrt()? + u.eps as f64)?)?;
    let p = var.as_tensor().detach().to_dtype(DType::F32)?;
    let p = ((p * u.decay as f64)? - (step * u.lr as f64)?)?;
    var.set(&p.to_dtype(var.dtype())?)?;
    Ok(())
}

struct InPlaceAdamW<'a> {
    update: Update,
    m: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl InplaceOp2 for InPlaceAdamW<'_> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let u = self.update;
        let grad = crate::ops::cpu_f32_slice(s2, l2)?;
        let (start, end) = l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("non-contiguous".into()))?;
        let CpuStorage::F32(data) = s1 else { candle_core::bail!("adamw: parameter is not f32") };
        let param = &mut data[start..end];
        let mut guard = self.m.lock().map_err(|_| candle_core::Error::Msg("moments lock poisoned".into()))?;
        let (m, v) = &mut *guard;
        const CHUNK: usize = 1 << 14;
        param
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                for i in 0..p.len() {
                    let g = g[i] * u.grad_scale;
                    m[i] = u.beta1 * m[i] + (1.0 - u.beta1) * g;
                    v[i] = u.beta2 * v[i] + (1.0 - u.beta2) * g * g;
                    let step = (m[i] / u.bias1) / ((v[i] / u.bias2).sqrt() + u.eps);
                    p[i] = p[i] * u.decay - u.lr * step;
                }
            });
        Ok(())
    }
}

/// Global L2 norm of all gradients, `√Σ‖g‖²` (accumulated in f64). On the CPU, partial sums per
/// fixed chunk added in order (the same bits on every run); on a GPU the per-tensor sums stay on the
/// device and are added there, so the step reads back one number, not one per parameter.
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let (host, device): (Vec<&Tensor>, Vec<&Tensor>) =
        grads.iter().partition(|g| matches!(g.device(), Device::Cpu) && g.dtype() == DType::F32);
    let mut total = 0f64;
    for g in host {
        total += crate::ops::with_cpu_f32(g, |s| {
            let partial: Vec<f64> =
                s.par_chunks(1 << 14).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect();
            partial.iter().sum::<f64>()
        })?;
    }
    if !device.is_empty() {
        let sums = device
            .iter()
            .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_dtype(DType::F64))
            .collect::<candle_core::Result<Vec<_>>>()?;
        total += Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// PyTorch's `clip_grad_norm_` factor: `max_norm/(norm + 1e-6)` capped at 1 (1 when `max_norm` ≤ 0).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
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
