//! Fused masked-mean cross-entropy for CPU fp32: `Σ_i w_i·(lse_i − z_{i,y_i}) / Σ_i w_i`.
//!
//! The forward keeps only one log-sum-exp per row; the backward writes the one V-wide gradient
//! `∂/∂z_ij = g·w_i/Σw · (exp(z_ij − lse_i) − [j = y_i])` directly, with no second V-wide buffer.

use super::cpu::f32_slice;
use super::simd;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

struct CrossEntropy {
    lse: Mutex<Vec<f32>>,
}

/// `logits` `[N, V]` f32, `targets` `[N]` u32, `mask` `[N]` f32 weights; returns a scalar.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let op = CrossEntropy { lse: Mutex::new(Vec::new()) };
    logits.contiguous()?.apply_op3(&targets.contiguous()?, &mask.contiguous()?, op)
}

fn targets_of<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let data = s.as_slice::<u32>()?;
    let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("targets not contiguous".into()))?;
    Ok(&data[a..b])
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let (logits, targets, mask) = (f32_slice(s1, l1)?, targets_of(s2, l2)?, f32_slice(s3, l3)?);
        if targets.len() != n || mask.len() != n {
            candle_core::bail!("cross-entropy: {n} rows but {} targets and {} mask values", targets.len(), mask.len());
        }
        if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("cross-entropy: target id {bad} outside the vocabulary of {v}");
        }
        let lse: Vec<f32> = logits
            .par_chunks(v)
            .map(|row| {
                let max = simd::max(row);
                max + simd::exp_sum(row, max).ln()
            })
            .collect();
        let (mut total, mut weight) = (0f64, 0f64);
        for i in 0..n {
            total += mask[i] as f64 * (lse[i] - logits[i * v + targets[i] as usize]) as f64;
            weight += mask[i] as f64;
        }
        *self.lse.lock().map_err(|_| candle_core::Error::Msg("lse lock poisoned".into()))? = lse;
        // A batch with nothing to supervise contributes 0 (not 0/0).
        let loss = if weight > 0.0 { total / weight } else { 0.0 };
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let g = grad.to_scalar::<f32>()?;
        let targets = targets.to_vec1::<u32>()?;
        let mask = mask.to_vec1::<f32>()?;
        let total: f64 = mask.iter().map(|&w| w as f64).sum();
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("lse lock poisoned".into()))?;
        let mut out = vec![0f32; n * v];
        super::cpu::with_f32(logits, |z| {
            out.par_chunks_mut(v).zip(z.par_chunks(v)).enumerate().for_each(|(i, (dz, z))| {
                let scale = if total > 0.0 { (g as f64 * mask[i] as f64 / total) as f32 } else { 0.0 };
                if scale == 0.0 {
                    return; // masked row: zero gradient (already zeroed)
                }
                simd::scaled_exp(dz, z, lse[i], scale);
                dz[targets[i] as usize] -= scale;
            })
        })?;
        Ok((Some(Tensor::from_vec(out, (n, v), logits.device())?), None, None))
    }
}
