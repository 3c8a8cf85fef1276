//! The SwiGLU block's input half fused for CPU fp32: `h = silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)`, one graph
//! node instead of two matmuls, their reshapes and the gate. The forward keeps the two projections
//! for the backward: `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dh·silu(g)`,
//! `dx = dg·W_gate + du·W_up`, `dW_gate = dgᵀ·x`, `dW_up = duᵀ·x`.

use super::cpu::{f32_slice, sgemm, with_f32};
use super::simd;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

const CHUNK: usize = 1 << 13;

struct SwiGluIn {
    /// `(gate, up)` projections `[rows, F]` from the forward.
    saved: Mutex<(Vec<f32>, Vec<f32>)>,
}

/// `x` `[.., d]`, `w_gate`, `w_up` `[F, d]` → `silu(x·W_gateᵀ) ⊙ x·W_upᵀ` `[.., F]`.
pub fn swiglu_in(x: &Tensor, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
    let op = SwiGluIn { saved: Mutex::new((Vec::new(), Vec::new())) };
    x.contiguous()?.apply_op3(&w_gate.contiguous()?, &w_up.contiguous()?, op)
}

fn lock_err<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("swiglu state lock poisoned".into())
}

impl CustomOp3 for SwiGluIn {
    fn name(&self) -> &'static str {
        "swiglu-in"
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
        let (f, d) = l2.shape().dims2()?;
        if l3.dims() != [f, d] || l1.dims().last() != Some(&d) {
            candle_core::bail!("swiglu-in: x {:?}, gate {:?}, up {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let x = f32_slice(s1, l1)?;
        let rows = x.len() / d;
        let gate = sgemm(false, true, rows, f, d, x, f32_slice(s2, l2)?);
        let up = sgemm(false, true, rows, f, d, x, f32_slice(s3, l3)?);
        let mut h: Vec<f32> = Vec::with_capacity(rows * f);
        let pieces = h.spare_capacity_mut()[..rows * f].par_chunks_mut(CHUNK);
        pieces.zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(h, (g, u))| {
            simd::swiglu(h, g, u);
        });
        // SAFETY: `simd::swiglu` wrote every value of every piece.
        unsafe { h.set_len(rows * f) };
        *self.saved.lock().map_err(lock_err)? = (gate, up);
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().expect("x has a last axis") = f;
        Ok((CpuStorage::F32(h), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_gate: &Tensor,
        w_up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (f, d) = w_gate.dims2()?;
        let rows = x.elem_count() / d;
        let saved = self.saved.lock().map_err(lock_err)?;
        let (gate, up) = (&saved.0, &saved.1);
        let (mut dg, mut du) = (vec![0f32; rows * f], vec![0f32; rows * f]);
        with_f32(grad, |dh| {
            dg.par_chunks_mut(CHUNK)
                .zip(du.par_chunks_mut(CHUNK))
                .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)).zip(dh.par_chunks(CHUNK)))
                .for_each(|((dg, du), ((g, u), dh))| {
                    simd::swiglu_backward(dg, du, g, u, dh);
                })
        })?;
        let mut dx = with_f32(w_gate, |w| sgemm(false, false, rows, d, f, &dg, w))?;
        let dx_up = with_f32(w_up, |w| sgemm(false, false, rows, d, f, &du, w))?;
        dx.par_iter_mut().zip(dx_up.par_iter()).for_each(|(a, b)| *a += b);
        let (dw_gate, dw_up) =
            with_f32(x, |x| (sgemm(true, false, f, d, rows, &dg, x), sgemm(true, false, f, d, rows, &du, x)))?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw_gate, (f, d), dev)?),
            Some(Tensor::from_vec(dw_up, (f, d), dev)?),
        ))
    }
}
