//! fp32 matrix product through the run-time BLAS ([`crate::blas`]), as a candle op with a backward.

use super::cpu::f32_slice;
use crate::blas::{blas, Blas};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `op(a) · op(b)` for 2-D tensors, `op` = transpose when the flag is set.
struct Gemm {
    trans_a: bool,
    trans_b: bool,
}

/// Whether the BLAS path can take these operands.
pub fn available(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == DType::F32 && b.dtype() == DType::F32 && blas().is_some()
}

/// `op(a)·op(b)`; falls back to candle's matmul when no BLAS is loaded.
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    if !available(a, b) {
        let a = if trans_a { a.t()? } else { a.clone() };
        let b = if trans_b { b.t()? } else { b.clone() };
        return a.matmul(&b);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Gemm { trans_a, trans_b })
}

impl CustomOp2 for Gemm {
    fn name(&self) -> &'static str {
        "blas-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r1, c1) = l1.shape().dims2()?;
        let (r2, c2) = l2.shape().dims2()?;
        let (m, k) = if self.trans_a { (c1, r1) } else { (r1, c1) };
        let (k2, n) = if self.trans_b { (c2, r2) } else { (r2, c2) };
        if k != k2 {
            candle_core::bail!("gemm: inner dimensions differ ({m}×{k} · {k2}×{n})");
        }
        let blas: &Blas = blas().ok_or_else(|| candle_core::Error::Msg("no BLAS loaded".into()))?;
        let out = blas.sgemm(self.trans_a, self.trans_b, m, n, k, f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    /// For `C = op(A)·op(B)`: `dA = dC·op(B)ᵀ` (or its transpose when A enters transposed), and
    /// `dB = op(A)ᵀ·dC` (likewise).
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ta, tb) = (self.trans_a, self.trans_b);
        let da = if ta { matmul(b, g, tb, true)? } else { matmul(g, b, false, !tb)? };
        let db = if tb { matmul(g, a, true, ta)? } else { matmul(a, g, !ta, false)? };
        Ok((Some(da), Some(db)))
    }
}
