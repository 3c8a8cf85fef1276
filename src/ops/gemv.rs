//! Matrix–vector products for decoding (a handful of rows against a weight matrix), CPU fp32.
//!
//! Decoding one token multiplies a single row by every weight matrix: the work is reading the
//! weights once, so it is memory-bound. Threads split the output features; each dot product runs
//! over 16 independent lanes so the compiler can vectorize it. The backward reuses [`super::gemm`].

use super::cpu::f32_slice;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows up to which the gemv path is used instead of a full matrix product.
pub const MAX_ROWS: usize = 4;

struct Gemv;

/// `x · wᵀ` for `x` `[m, k]` (small m) and `w` `[n, k]`.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Gemv)
}

/// `Σ a_i·b_i` over 16 independent lanes (vectorizable without reassociating a single sum).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// The dot product compiled for the widest vector unit this CPU has (checked once).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") {
                2
            } else if is_x86_feature_detected!("avx2") {
                1
            } else {
                0
            }
        });
        // SAFETY: the target feature was detected at run time.
        match level {
            2 => return unsafe { dot_avx512(a, b) },
            1 => return unsafe { dot_avx2(a, b) },
            _ => {}
        }
    }
    dot_lanes(a, b)
}

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("gemv: {m}×{k} · ({n}×{k2})ᵀ");
        }
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        // Output laid out [n, m] while computing (one weight row serves all m inputs), then transposed.
        let mut by_feature = vec![0f32; n * m];
        by_feature.par_chunks_mut(m * 64).zip(w.par_chunks(k * 64)).for_each(|(out, w)| {
            for (j, w_row) in w.chunks_exact(k).enumerate() {
                for r in 0..m {
                    out[j * m + r] = dot(&x[r * k..(r + 1) * k], w_row);
                }
            }
        });
        let out = if m == 1 { by_feature } else { (0..m * n).map(|i| by_feature[(i % n) * m + i / n]).collect() };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(super::gemm::matmul(g, w, false, false)?), Some(super::gemm::matmul(g, x, true, false)?)))
    }
}
