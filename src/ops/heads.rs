//! Attention's input and output projections fused with the head layout changes (and RoPE), for
//! CPU fp32. One graph node each instead of matmul + reshape + transpose + copy + rotate, which
//! saves the backward a full gradient pass per removed node.
//!
//! - [`project_heads`]: `x` `[B,T,d]` → `(x·Wᵀ)` viewed as `[B,T,n,D]` → `[B,n,T,D]`, RoPE applied.
//! - [`merge_heads`]: `y` `[B,H,T,D]` → `[B,T,H·D]` → `·Woᵀ` → `[B,T,d]`.

use super::cpu::{f32_slice, sgemm, with_f32};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Rotates pair `(v_i, v_{i+D/2})` by the angle whose cos/sin are `c_i`, `s_i` (sign −1: inverse).
pub(super) fn rotate_row(v: &mut [f32], c: &[f32], s: &[f32], sign: f32) {
    let half = v.len() / 2;
    for i in 0..half {
        let (a, b, sn) = (v[i], v[i + half], sign * s[i]);
        v[i] = a * c[i] - b * sn;
        v[i + half] = b * c[i] + a * sn;
    }
}

/// `[B·T, n·D]` rows ↔ `[B, n, T, D]` heads, optionally rotating each head row by its position.
fn rows_to_heads(
    z: &[f32],
    (_, t, n, d): (usize, usize, usize, usize),
    rope: Option<(&[f32], &[f32], f32)>,
) -> Vec<f32> {
    super::pool::par_filled(z.len(), t * d, |bh, head| {
        let (bi, h) = (bh / n, bh % n);
        for p in 0..t {
            let src = &z[(bi * t + p) * n * d + h * d..][..d];
            let dst = &mut head[p * d..(p + 1) * d];
            dst.copy_from_slice(src);
            if let Some((cos, sin, sign)) = rope {
                rotate_row(dst, &cos[p * d..], &sin[p * d..], sign);
            }
        }
    })
}

/// Inverse of [`rows_to_heads`]: `[B, n, T, D]` → `[B·T, n·D]` (rotating back when asked).
fn heads_to_rows(
    y: &[f32],
    (_, t, n, d): (usize, usize, usize, usize),
    rope: Option<(&[f32], &[f32], f32)>,
) -> Vec<f32> {
    super::pool::par_filled(y.len(), n * d, |row, dst| {
        let (bi, p) = (row / t, row % t);
        for h in 0..n {
            let d_slice = &mut dst[h * d..(h + 1) * d];
            d_slice.copy_from_slice(&y[((bi * n + h) * t + p) * d..][..d]);
            if let Some((cos, sin, sign)) = rope {
                rotate_row(d_slice, &cos[p * d..], &sin[p * d..], sign);
            }
        }
    })
}

struct ProjectHeads {
    heads: usize,
    /// RoPE table rows `[T, D]` for this call's positions, or none (values).
    rope: Option<(Tensor, Tensor)>,
}

/// `x` `[B, T, d]`, `w` `[n·D, d]` → `[B, n, T, D]`, with RoPE from the `[T, D]` rows when given.
pub fn project_heads(x: &Tensor, w: &Tensor, heads: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let rope = rope.map(|(c, s)| Ok::<_, candle_core::Error>((c.contiguous()?, s.contiguous()?))).transpose()?;
    x.contiguous()?.apply_op2(&w.contiguous()?, ProjectHeads { heads, rope })
}

impl ProjectHeads {
    fn with_tables<R>(&self, f: impl FnOnce(Option<(&[f32], &[f32])>) -> R) -> Result<R> {
        match &self.rope {
            None => Ok(f(None)),
            Some((c, s)) => with_f32(c, |c| with_f32(s, |s| f(Some((c, s)))))?,
        }
    }
}

impl CustomOp2 for ProjectHeads {
    fn name(&self) -> &'static str {
        "project-heads"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, t, dm) = l1.shape().dims3()?;
        let (out, dm2) = l2.shape().dims2()?;
        let n = self.heads;
        if dm != dm2 || out % n != 0 {
            candle_core::bail!("project-heads: x {:?}, w {:?}, {n} heads", l1.dims(), l2.dims());
        }
        let d = out / n;
        if let Some((c, s)) = &self.rope {
            if c.dims() != [t, d] || s.dims() != [t, d] {
                candle_core::bail!("project-heads: RoPE tables {:?} for {t} positions of head_dim {d}", c.dims());
            }
        }
        let z = sgemm(false, true, b * t, out, dm, f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let y = self.with_tables(|tables| rows_to_heads(&z, (b, t, n, d), tables.map(|(c, s)| (c, s, 1.0))))?;
        Ok((CpuStorage::F32(y), Shape::from((b, n, t, d))))
    }

    /// `dz` = the head gradients rotated back into rows; `dx = dz·W`, `dW = dzᵀ·x`.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, dm) = x.dims3()?;
        let (out, _) = w.dims2()?;
        let (n, d) = (self.heads, out / self.heads);
        let dz = with_f32(grad, |g| {
            self.with_tables(|tables| heads_to_rows(g, (b, t, n, d), tables.map(|(c, s)| (c, s, -1.0))))
        })??;
        let dx = with_f32(w, |w| sgemm(false, false, b * t, dm, out, &dz, w))?;
        let dw = with_f32(x, |x| sgemm(true, false, out, dm, b * t, &dz, x))?;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (b, t, dm), dev)?), Some(Tensor::from_vec(dw, (out, dm), dev)?)))
    }
}

struct MergeHeads;

/// `y` `[B, H, T, D]`, `w` `[d, H·D]` → `[B, T, d]`: heads concatenated per position, then projected.
pub fn merge_heads(y: &Tensor, w: &Tensor) -> Result<Tensor> {
    y.contiguous()?.apply_op2(&w.contiguous()?, MergeHeads)
}

impl CustomOp2 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = l1.shape().dims4()?;
        let (dm, hd) = l2.shape().dims2()?;
        if hd != h * d {
            candle_core::bail!("merge-heads: y {:?}, w {:?}", l1.dims(), l2.dims());
        }
        let rows = heads_to_rows(f32_slice(s1, l1)?, (b, t, h, d), None);
        let out = sgemm(false, true, b * t, dm, hd, &rows, f32_slice(s2, l2)?);
        Ok((CpuStorage::F32(out), Shape::from((b, t, dm))))
    }

    /// `dz = dout·W` scattered back to heads; `dW = doutᵀ·z` with `z` the merged rows.
    fn bwd(&self, y: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = y.dims4()?;
        let (dm, hd) = w.dims2()?;
        let dz = with_f32(grad, |g| with_f32(w, |w| sgemm(false, false, b * t, hd, dm, g, w)))??;
        let dy = rows_to_heads(&dz, (b, t, h, d), None);
        let rows = with_f32(y, |y| heads_to_rows(y, (b, t, h, d), None))?;
        let dw = with_f32(grad, |g| sgemm(true, false, dm, hd, b * t, g, &rows))?;
        let dev = y.device();
        Ok((Some(Tensor::from_vec(dy, (b, h, t, d), dev)?), Some(Tensor::from_vec(dw, (dm, hd), dev)?)))
    }
}
