//! Fused RMSNorm for CPU fp32: `y = w ⊙ x·r`, `r = 1/√(mean(x²) + ε)` per row, with its backward:
//! `dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x)`, `dw = Σ_rows dy ⊙ x·r`.

use super::cpu::{f32_slice, with_f32};
use super::simd;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

struct RmsNorm {
    eps: f32,
    /// `r` of every row, kept by the forward for the backward.
    inv_rms: Mutex<Vec<f32>>,
}

/// One row normalized: `r = 1/√(mean(x²) + ε)` and the values `w ⊙ x·r`.
pub(super) fn normalized<'a>(x: &'a [f32], w: &'a [f32], eps: f32) -> (f32, impl Iterator<Item = f32> + 'a) {
    let mean_square = simd::dot(x, x) / x.len() as f32;
    let r = 1.0 / (mean_square + eps).sqrt();
    (r, x.iter().zip(w).map(move |(xi, wi)| wi * (xi * r)))
}

/// One row: `y = w ⊙ x·r` (every value of `y` written); returns `r`.
fn normalize_row(x: &[f32], w: &[f32], eps: f32, y: &mut [std::mem::MaybeUninit<f32>]) -> f32 {
    let (r, values) = normalized(x, w, eps);
    y.iter_mut().zip(values).for_each(|(yi, v)| {
        yi.write(v);
    });
    r
}

/// RMSNorm of `x` `[.., d]` with weight `w` `[d]` (both f32 on the CPU).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let op = RmsNorm { eps: eps as f32, inv_rms: Mutex::new(Vec::new()) };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let d = w.len();
        if l1.dims().last() != Some(&d) {
            candle_core::bail!("rms-norm: weight of {d} for input {:?}", l1.dims());
        }
        let mut inv = vec![0f32; x.len() / d];
        let inv_rows = super::pool::Disjoint::new(&mut inv);
        // SAFETY: row i writes inv[i] alone, and every value of its row of y.
        let y = unsafe {
            super::pool::written(x.len(), d, |i, y| {
                inv_rows.part(i, 1)[0] = normalize_row(&x[i * d..][..d], w, self.eps, y)
            })
        };
        *self.inv_rms.lock().map_err(|_| candle_core::Error::Msg("lock poisoned".into()))? = inv;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let inv = self.inv_rms.lock().map_err(|_| candle_core::Error::Msg("lock poisoned".into()))?;
        let w = w.to_vec1::<f32>()?;
        let mut dx = vec![0f32; x.elem_count()];
        // dw sums over rows: partial sums per fixed block of rows, added in order, so the result is
        // the same on every run (resumable training must be bit-reproducible).
        const ROWS: usize = 64;
        let partials: Vec<Vec<f32>> = with_f32(x, |xs| {
            with_f32(grad, |dy| {
                dx.par_chunks_mut(d * ROWS)
                    .zip(xs.par_chunks(d * ROWS).zip(dy.par_chunks(d * ROWS)))
                    .zip(inv.par_chunks(ROWS))
                    .map(|((dx, (x, dy)), rs)| {
                        let mut dw = vec![0f32; d];
                        for (r, &ri) in rs.iter().enumerate() {
                            let span = r * d..(r + 1) * d;
                            let (x, dy, dx) = (&x[span.clone()], &dy[span.clone()], &mut dx[span]);
                            let dot: f32 = (0..d).map(|j| w[j] * dy[j] * x[j]).sum();
                            let c = ri * ri * ri * dot / d as f32;
                            for j in 0..d {
                                dx[j] = ri * w[j] * dy[j] - c * x[j];
                                dw[j] += dy[j] * x[j] * ri;
                            }
                        }
                        dw
                    })
                    .collect()
            })
        })??;
        let mut dw = vec![0f32; d];
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), Some(Tensor::from_vec(dw, d, dev)?)))
    }
}

/// The residual connection and the RMSNorm after it, for inference: `h = x + y` and `w ⊙ h·r`,
/// each row added and normalized by one task while it is in cache (the rows split between the
/// threads; a decode step's few rows otherwise took two serial passes on the calling thread). The
/// same bits as [`super::residual_add`] then [`rms_norm`]; no gradient.
pub fn add_rms_norm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let d = w.elem_count();
    if x.shape() != y.shape() || x.dims().last() != Some(&d) {
        candle_core::bail!("add + rms-norm: {:?} + {:?}, weight of {d}", x.dims(), y.dims());
    }
    let (sum, normed) = with_f32(&x.contiguous()?, |x| {
        with_f32(&y.contiguous()?, |y| with_f32(w, |w| add_normalize_rows(x, y, w, eps as f32)))
    })???;
    Ok((Tensor::from_vec(sum, x.shape(), x.device())?, Tensor::from_vec(normed, x.shape(), x.device())?))
}

/// [`add_rms_norm`] on slices: `(x + y, its rows normalized)`, each written once by the task of its
/// rows (nothing zeroed first).
fn add_normalize_rows(x: &[f32], y: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    use std::mem::MaybeUninit;
    let (d, rows) = (w.len(), x.len() / w.len().max(1));
    let per_task = rows.div_ceil(super::pool::threads()).max(1);
    let (mut sum, mut normed) = (Vec::<f32>::with_capacity(x.len()), Vec::<f32>::with_capacity(x.len()));
    let sums = super::pool::Disjoint::new(&mut sum.spare_capacity_mut()[..x.len()]);
    let normeds = super::pool::Disjoint::new(&mut normed.spare_capacity_mut()[..x.len()]);
    super::pool::for_each(rows.div_ceil(per_task), &|t| {
        for r in t * per_task..((t + 1) * per_task).min(rows) {
            // SAFETY: row r is written by this task alone.
            let (h, n) = unsafe { (sums.part(r * d, d), normeds.part(r * d, d)) };
            for ((h, a), b) in h.iter_mut().zip(&x[r * d..][..d]).zip(&y[r * d..][..d]) {
                h.write(a + b);
            }
            // SAFETY: every value of the row was just written.
            let h = unsafe { &*(h as *const [MaybeUninit<f32>] as *const [f32]) };
            normalize_row(h, w, eps, n);
        }
    });
    // SAFETY: the tasks wrote every row of both, and have all finished.
    unsafe {
        sum.set_len(x.len());
        normed.set_len(x.len());
    }
    (sum, normed)
}
