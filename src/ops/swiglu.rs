//! Fused SwiGLU gate for CPU fp32: `y = silu(g)·u`, `silu(g) = g·σ(g)`; backward
//! `du = dy·silu(g)`, `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`.

use super::cpu::{f32_slice, with_f32};
use super::simd;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct SwiGlu;

const CHUNK: usize = 1 << 13;

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        // SAFETY: `simd::swiglu` writes every value of its piece.
        let y = unsafe {
            super::pool::par_written(g.len(), CHUNK, |c, y| {
                let at = c * CHUNK..c * CHUNK + y.len();
                simd::swiglu(y, &g[at.clone()], &u[at]);
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        with_f32(gate, |g| {
            with_f32(up, |u| {
                with_f32(grad, |dy| {
                    dg.par_chunks_mut(CHUNK)
                        .zip(du.par_chunks_mut(CHUNK))
                        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)))
                        .for_each(|((dg, du), ((g, u), dy))| {
                            simd::swiglu_backward(dg, du, g, u, dy);
                        })
                })
            })
        })???;
        let dev = gate.device();
        Ok((Some(Tensor::from_vec(dg, gate.shape(), dev)?), Some(Tensor::from_vec(du, up.shape(), dev)?)))
    }
}
