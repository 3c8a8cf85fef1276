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
        let out = tiled(m, n, |r| &x[r * k..(r + 1) * k], |j| &w[j * k..(j + 1) * k]);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(super::gemm::matmul(g, w, false, false)?), Some(super::gemm::matmul(g, x, true, false)?)))
    }
}

/// `x·wᵀ` as `[m, n]` in tiles: rows in fours against triples of features ([`simd::dot_4x3`], each
/// weight row read once per four rows), the rows left over against quads of features
/// ([`simd::dot_1x4`]), single products for the edges. Every shape gives a (row, feature) pair the
/// same bits, so a row's result never depends on the other rows. Threads split the features in
/// blocks of 64.
fn tiled<'a>(
    m: usize,
    n: usize,
    x: impl Fn(usize) -> &'a [f32] + Sync,
    w: impl Fn(usize) -> &'a [f32] + Sync,
) -> Vec<f32> {
    let mut by_feature = vec![0f32; n * m];
    super::pool::for_each_chunk_mut(&mut by_feature, m * 64, |c, out| {
        let (j0, features) = (c * 64, out.len() / m);
        let (quad_rows, triples, quads) = (m / 4 * 4, features / 3 * 3, features / 4 * 4);
        for f in (0..triples).step_by(3) {
            let ws = [w(j0 + f), w(j0 + f + 1), w(j0 + f + 2)];
            for r in (0..quad_rows).step_by(4) {
                let tile = simd::dot_4x3([x(r), x(r + 1), x(r + 2), x(r + 3)], ws);
                for (dr, products) in tile.iter().enumerate() {
                    for (df, &v) in products.iter().enumerate() {
                        out[(f + df) * m + r + dr] = v;
                    }
                }
            }
        }
        for f in (0..quads).step_by(4) {
            let ws = [w(j0 + f), w(j0 + f + 1), w(j0 + f + 2), w(j0 + f + 3)];
            for r in quad_rows..m {
                for (df, v) in simd::dot_1x4(x(r), ws).into_iter().enumerate() {
                    out[(f + df) * m + r] = v;
                }
            }
        }
        for f in 0..features {
            let rows = if f >= triples { 0..quad_rows } else { 0..0 };
            let rest = if f >= quads { quad_rows..m } else { 0..0 };
            for r in rows.chain(rest) {
                out[f * m + r] = simd::dot(x(r), w(j0 + f));
            }
        }
    });
    transpose_features(by_feature, m, n)
}

/// `[n, m]` (as computed, feature-major) → `[m, n]`.
fn transpose_features(by_feature: Vec<f32>, m: usize, n: usize) -> Vec<f32> {
    if m == 1 {
        return by_feature;
    }
    let mut out = vec![0f32; m * n];
    for (j, feature) in by_feature.chunks_exact(m).enumerate() {
        for (r, &v) in feature.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    out
}

/// `out[r][j]` for `m` input rows and `n` output features, as `[m, n]`: rows four at a time by
/// `dot4(r, j)` (rows `r..r + 4` against feature `j`, which must give each row the bits `dot` gives
/// it), the rest one at a time by `dot(r, j)`. Threads split the features in blocks of 64, each
/// weight row read once for all the rows.
pub(super) fn by_feature4(
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
