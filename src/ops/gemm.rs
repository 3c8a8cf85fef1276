//! fp32 matrix product as a candle op with a backward: the run-time BLAS ([`crate::ops::blas`]) when one is
//! loaded, else the `gemm` crate; one graph node whatever the batch axes.

use super::cpu::{f32_slice, sgemm};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `op(a) · op(b)`, `op` = transpose when the flag is set; a non-transposed `a` may carry leading
/// batch axes (`[.., k]`), which the output keeps.
struct Gemm {
    trans_a: bool,
    trans_b: bool,
}

/// Whether this op can take these operands (f32 CPU tensors).
pub fn available(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.device().is_cpu() && b.device().is_cpu()
}

/// `op(a)·op(b)`; other dtypes and devices go through candle's matmul.
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
        // A non-transposed `a` may have leading batch axes: it is read as [rows, last axis].
        let a_dims = l1.dims();
        let (r1, c1) = match (self.trans_a, a_dims) {
            (false, [.., last]) if !a_dims.is_empty() => (l1.shape().elem_count() / last, *last),
            _ => l1.shape().dims2()?,
        };
        let (r2, c2) = l2.shape().dims2()?;
        let (m, k) = if self.trans_a { (c1, r1) } else { (r1, c1) };
        let (k2, n) = if self.trans_b { (c2, r2) } else { (r2, c2) };
        if k != k2 {
            candle_core::bail!("gemm: inner dimensions differ ({m}×{k} · {k2}×{n})");
        }
        let out = sgemm(self.trans_a, self.trans_b, m, n, k, f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let shape = if self.trans_a {
            Shape::from((m, n))
        } else {
            let mut dims = a_dims.to_vec();
            *dims.last_mut().expect("a has a last axis") = n;
            Shape::from(dims)
        };
        Ok((CpuStorage::F32(out), shape))
    }

    /// For `C = op(A)·op(B)`: `dA = dC·op(B)ᵀ` (or its transpose when A enters transposed), and
    /// `dB = op(A)ᵀ·dC` (likewise).
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ta, tb) = (self.trans_a, self.trans_b);
        // Batch axes of a non-transposed `a` (and so of `g`) fold into rows for the weight gradient.
        let flat = |t: &Tensor| t.reshape(((), t.dim(candle_core::D::Minus1)?));
        let (a2, g2) = (flat(a)?, flat(g)?);
        let da = if ta { matmul(b, g, tb, true)? } else { matmul(g, b, false, !tb)? };
        let db = if tb { matmul(&g2, &a2, true, ta)? } else { matmul(&a2, &g2, !ta, false)? };
        Ok((Some(da), Some(db)))
    }
}
