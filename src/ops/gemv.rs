//! Matrix–vector products for decoding (a handful of rows against a weight matrix), CPU fp32.
//!
//! Decoding one token multiplies a single row by every weight matrix: the work is reading the
//! weights once, so it is memory-bound. Threads split the output features; each dot product runs
//! over 16 independent lanes so the compiler can vectorize it. The backward reuses [`super::gemm`].

use super::cpu::f32_slice;
use super::simd;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Rows up to which the gemv path is used instead of a full matrix product: decoding one token for
/// each sequence of a batch (continuous batching) stays on it, where every row is computed on its
/// own — a sequence decodes the same bits beside others as alone.
pub const MAX_ROWS: usize = 64;

struct Gemv;

/// `x · wᵀ` for `x` `[m, k]` (small m) and `w` `[n, k]`.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Gemv)
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
        let row = |r: usize| &x[r * k..(r + 1) * k];
        let out = by_feature_in_fours(
            m,
            n,
            |r, j| simd::dot(row(r), &w[j * k..(j + 1) * k]),
            |r, j| simd::dot4(row(r), row(r + 1), row(r + 2), row(r + 3), &w[j * k..(j + 1) * k]),
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(super::gemm::matmul(g, w, false, false)?), Some(super::gemm::matmul(g, x, true, false)?)))
    }
}

/// [`by_feature`] with rows taken four at a time by `dot4(r, j)` (rows `r..r+4` against feature `j`,
/// reading the weight row once for four products) and the rest one at a time by `dot`.
fn by_feature_in_fours(
    m: usize,
    n: usize,
    dot: impl Fn(usize, usize) -> f32 + Sync,
    dot4: impl Fn(usize, usize) -> [f32; 4] + Sync,
) -> Vec<f32> {
    let fours = m / 4 * 4;
    let mut by_feature = vec![0f32; n * m];
    super::pool::for_each_chunk_mut(&mut by_feature, m * 64, |c, out| {
        for (i, feature) in out.chunks_exact_mut(m).enumerate() {
            let j = c * 64 + i;
            for r in (0..fours).step_by(4) {
                feature[r..r + 4].copy_from_slice(&dot4(r, j));
            }
            for (r, v) in feature.iter_mut().enumerate().skip(fours) {
                *v = dot(r, j);
            }
        }
    });
    transpose_features(by_feature, m, n)
}

/// `[n, m]` (as computed, feature-major) → `[m, n]`.
fn transpose_features(by_feature: Vec<f32>, m: usize, n: usize) -> Vec<f32> {
    if m == 1 {
        by_feature
    } else {
        (0..m * n).map(|i| by_feature[(i % n) * m + i / n]).collect()
    }
}

/// `out[r][j] = dot(r, j)` for `m` input rows and `n` output features, as `[m, n]` row-major. Threads
/// split the features in blocks of 64; all `m` products of a feature are computed together, so each
/// weight row is read once. Shared by the f32 and the int8 decode kernels.
pub(super) fn by_feature(m: usize, n: usize, dot: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    // Laid out [n, m] while computing, then transposed.
    let mut by_feature = vec![0f32; n * m];
    super::pool::for_each_chunk_mut(&mut by_feature, m * 64, |c, out| {
        for (i, feature) in out.chunks_exact_mut(m).enumerate() {
            for (r, v) in feature.iter_mut().enumerate() {
                *v = dot(r, c * 64 + i);
            }
        }
    });
    transpose_features(by_feature, m, n)
}
