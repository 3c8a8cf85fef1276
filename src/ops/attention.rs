//! Fused causal GQA attention for CPU fp32, with its backward (one-token decoding also reads an f16
//! KV cache).
//!
//! Forward, per (batch, query head), in tiles of `TILE` query rows: scores `S = scale·Q_tile·Kᵀ` over
//! only the keys the tile can see (causality), row-wise softmax in place, `O_tile = P·V`, and the
//! row's log-sum-exp kept for the backward. Only one tile's scores exist at a time (TILE × S per
//! thread), never the B×H×T×S tensor. KV heads are read in place by every query head of their group
//! (no `repeat_kv` copy). Backward, per (batch, KV head), recomputes `P = exp(S − lse)` tile by tile:
//! `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = scale·dS·K`,
//! `dK += scale·dSᵀ·Q`. Matmuls inside a tile run single-threaded (OpenBLAS in 64-wide blocks, or the
//! `gemm` crate); threads split the (batch, head) pairs.

use super::simd;
use super::simd_attention::Upcoming;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::sync::Mutex;

/// Query rows per tile.
const TILE: usize = 64;

#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    kv: usize,
    t: usize,
    s: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.h / self.kv
    }
    fn past(&self) -> usize {
        self.s - self.t
    }
}

struct FlashAttention {
    scale: f32,
    /// Log-sum-exp of each query row's scores, `[B·H·T]`, written by the forward for the backward.
    lse: Mutex<Vec<f32>>,
    /// An int8 cache's key and value scales `[B,K,S]` (`k`/`v` are then its codes).
    row_scales: Option<(Tensor, Tensor)>,
}

/// `softmax(QKᵀ·scale + causal mask)·V`; `q` `[B,H,T,D]`, `k`/`v` `[B,K,S,D]`, fp32 on the CPU
/// (`k`/`v` may be an f16 cache when `T = 1`).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(3)?;
    let op = FlashAttention { scale: 1.0 / (d as f32).sqrt(), lse: Mutex::new(Vec::new()), row_scales: None };
    q.contiguous()?.apply_op3(k, v, op)
}

/// One token (`q` `[B,H,1,D]`) attending over an int8 cache ([`super::kv_int8`]): codes `k`/`v`
/// `[B,K,S,D]` (U8) and their scales `[B,K,S]`, read as stored — `k` a view of the first `S`
/// positions of key codes in blocks, whose last block is read whole from the buffer behind it.
pub fn decode_attention_int8(q: &Tensor, (k, v): (&Tensor, &Tensor), scales: (&Tensor, &Tensor)) -> Result<Tensor> {
    let d = q.dim(3)?;
    let row_scales = Some((scales.0.clone(), scales.1.clone()));
    let op = FlashAttention { scale: 1.0 / (d as f32).sqrt(), lse: Mutex::new(Vec::new()), row_scales };
    q.contiguous()?.apply_op3(k, v, op)
}

/// `dst[m×n] (+)= alpha · A·B`, with each matrix given by its pointer, row stride and column stride:
/// OpenBLAS (AVX-512 kernels) when loaded, else the `gemm` crate.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
    alpha: f32,
) {
    if let Some(blas) = crate::ops::blas::blas() {
        // CBLAS needs a unit stride on one side of each operand: rows (no transpose) or columns.
        let op = |(p, rs, cs): (*const f32, usize, usize)| if cs == 1 { (false, p, rs) } else { (true, p, cs) };
        let ((ta, ap, lda), (tb, bp, ldb)) = (op(a), op(b));
        // Chunks of at most 64·64·64 multiply-adds stay single-threaded inside OpenBLAS, so the
        // calls from our threads do not nest threads.
        const C: usize = 64;
        for i0 in (0..m).step_by(C) {
            let mi = C.min(m - i0);
            for j0 in (0..n).step_by(C) {
                let nj = C.min(n - j0);
                for p0 in (0..k).step_by(C) {
                    let kp = C.min(k - p0);
                    let a_at = if ta { ap.add(p0 * lda + i0) } else { ap.add(i0 * lda + p0) };
                    let b_at = if tb { bp.add(j0 * ldb + p0) } else { bp.add(p0 * ldb + j0) };
                    let beta = if accumulate || p0 > 0 { 1.0 } else { 0.0 };
                    let c_at = dst.add(i0 * dst_rs + j0);
                    blas.sgemm_raw((ta, tb), (mi, nj, kp), alpha, (a_at, lda), (b_at, ldb), beta, (c_at, dst_rs));
                }
            }
        }
        return;
    }
    // gemm computes dst = 1·dst (when read) + alpha·lhs·rhs; strides are (column, row).
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.0,
        a.2 as isize,
        a.1 as isize,
        b.0,
        b.2 as isize,
        b.1 as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Element offset of (batch, head) in a `[B, heads, rows, D]` tensor whose rows are contiguous.
fn head_offset(l: &Layout, b: usize, head: usize) -> usize {
    let st = l.stride();
    l.start_offset() + b * st[0] + head * st[1]
}

/// An int8 cache's key and value scales, each with its layout (`[B, K, S]`).
type RowScales<'a> = ((&'a [f32], &'a Layout), (&'a [f32], &'a Layout));

/// An int8 cache's scales: `[B, K, S]` with the last axis contiguous.
fn check_scales(scales: &Tensor, dims: (usize, usize, usize)) -> Result<()> {
    let l = scales.layout();
    if scales.dims3()? != dims || (dims.2 > 1 && l.stride()[2] != 1) {
        candle_core::bail!("int8 attention: scales {:?} for keys {dims:?}", scales.dims());
    }
    Ok(())
}

/// An int8 cache's key or value codes: whole blocks of positions behind the last (batch, KV head)'s
/// view (the kernels read the last block whole).
fn check_blocks(stored: usize, l: &Layout, (b, kv, s, d): (usize, usize, usize, usize)) -> Result<()> {
    let end = if b * kv == 0 { 0 } else { head_offset(l, b - 1, kv - 1) + super::kv_int8::block_capacity(s) * d };
    if !d.is_multiple_of(4) || end > stored {
        candle_core::bail!("int8 attention: codes {:?} are not whole blocks of 16 positions", l.dims());
    }
    Ok(())
}

fn check_rows_contiguous(l: &Layout, d: usize, name: &str) -> Result<()> {
    // A size-1 axis may carry any stride (candle still calls the tensor contiguous).
    let (st, dims) = (l.stride(), l.dims());
    if (dims[3] > 1 && st[3] != 1) || (dims[2] > 1 && st[2] != d) {
        candle_core::bail!("flash attention: {name} rows must be contiguous");
    }
    Ok(())
}

/// Softmax of row `r` of a tile in place over its first `len` columns, zeroing the rest;
/// returns the row's log-sum-exp.
fn softmax_row(row: &mut [f32], len: usize) -> f32 {
    softmax_row_weighted(row, len, None)
}

/// [`softmax_row`], each probability then multiplied by its `weights` entry in the same pass (an
/// int8 cache's value scales).
fn softmax_row_weighted(row: &mut [f32], len: usize, weights: Option<&[f32]>) -> f32 {
    let (live, masked) = row.split_at_mut(len);
    let max = simd::max(live);
    let sum = simd::exp_shifted_sum(live, max);
    match weights {
        Some(w) => simd::scale_weighted(live, 1.0 / sum, &w[..len]),
        None => simd::scale(live, 1.0 / sum),
    }
    masked.fill(0.0);
    max + sum.ln()
}

/// Decoding attention of query rows `q` `[heads, D]` — one head, or the query heads of a
/// grouped-query group, which share the key and value rows — over `keys` rows of `k` and `v` (row
/// stride `d`): scores `scale·q·k_j`, softmax, `out_h = Σ_j p_hj·v_j` `[heads, D]`, and each head's
/// log-sum-exp in `lse`. A head gets the same bits alone as in its group. `scores` holds at least
/// `heads·keys` values. With `row_scales` (an int8 cache's key and value scales, one per row), `k`
/// and `v` are codes: the scores are integer dot products with the quantized queries
/// ([`super::int8_attention`]), each softmax weight is multiplied by its value row's scale, and the
/// weighted sum is an integer one too ([`super::int8_values`]). The scores ask for `upcoming`
/// (memory the thread reads next) as they go.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_heads<T: simd::KvElem>(
    q: &[f32],
    (k, v): (&[T], &[T]),
    row_scales: Option<(&[f32], &[f32])>,
    keys: usize,
    d: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    lse: &mut [f32],
    upcoming: Upcoming,
) {
    let heads = q.len() / d;
    let scores = &mut scores[..heads * keys];
    // An int8 cache: its codes and scales, read by the integer kernels.
    let int8 = match (row_scales, T::codes(k), T::codes(v)) {
        (Some(scales), Some(k), Some(v)) => Some((scales, k, v)),
        _ => None,
    };
    match int8 {
        Some(((k_scales, _), k, v)) => {
            super::int8_attention::int8_scores(q, d, (k, k_scales), v, keys, scale, scores, upcoming)
        }
        None => simd::attention_scores_fetching_values(q, d, (k, v), keys, scale, scores, upcoming),
    }
    let v_scales = int8.map(|((_, v_scales), ..)| v_scales);
    for (row, lse) in scores.chunks_exact_mut(keys).zip(lse.iter_mut()) {
        *lse = softmax_row_weighted(row, keys, v_scales);
    }
    match int8 {
        Some((_, _, v)) => super::int8_values::int8_weighted(scores, keys, v, d, out),
        None => simd::weighted_rows(scores, keys, v, d, out),
    }
}

impl FlashAttention {
    /// Decoding one token (`t = 1`): scores and the weighted sum of values as vector loops (a
    /// matmul with one row costs more in packing than in arithmetic), the query heads of each KV
    /// head together over its key and value rows, on the decode loop's workers. Output and
    /// log-sum-exp `[b, h]`.
    #[allow(clippy::too_many_arguments)]
    fn decode<T: simd::KvElem>(
        &self,
        q: &[f32],
        (k, lk): (&[T], &Layout),
        (v, lv): (&[T], &Layout),
        row_scales: Option<RowScales<'_>>,
        dims: Dims,
        b: usize,
        d: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (rep, s) = (dims.rep(), dims.s);
        let mut groups = vec![(Vec::new(), Vec::new()); b * dims.kv];
        super::pool::for_each_chunk_mut(&mut groups, 1, |i, group| {
            let (bi, g) = (i / dims.kv, i % dims.kv);
            let (mut out, mut lse, mut scores) = (vec![0f32; rep * d], vec![0f32; rep], vec![0f32; rep * s]);
            let (k, v) = (&k[head_offset(lk, bi, g)..], &v[head_offset(lv, bi, g)..]);
            // Scales `[B,K,S]`: (bi, g)'s row of S, at the same first two strides' offset.
            let row_scales = row_scales.map(|((ks, lks), (vs, lvs))| {
                (&ks[head_offset(lks, bi, g)..][..s], &vs[head_offset(lvs, bi, g)..][..s])
            });
            let q = &q[i * rep * d..][..rep * d];
            decode_heads(q, (k, v), row_scales, s, d, self.scale, &mut scores, &mut out, &mut lse, Upcoming::NONE);
            group[0] = (out, lse);
        });
        (
            groups.iter().flat_map(|g| g.0.iter().copied()).collect(),
            groups.iter().flat_map(|g| g.1.iter().copied()).collect(),
        )
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = lq.shape().dims4()?;
        let (_, kv, s, _) = lk.shape().dims4()?;
        let dims = Dims { h, kv, t, s };
        let (kb, kd) = (lk.dims()[0], lk.dims()[3]);
        if kv == 0 || h % kv != 0 || s < t || kb != b || kd != d || lv.shape() != lk.shape() {
            candle_core::bail!("flash attention: bad shapes q {:?} k {:?} v {:?}", lq.dims(), lk.dims(), lv.dims());
        }
        check_rows_contiguous(lk, d, "k")?;
        check_rows_contiguous(lv, d, "v")?;
        let q = &sq.as_slice::<f32>()?[lq.start_offset()..];
        if t == 1 {
            // One token reads the cache as it is stored: f32 or f16 widened as read, int8 codes by
            // integer dot products.
            let (out, lse) = match (sk, sv, &self.row_scales) {
                (CpuStorage::U8(k), CpuStorage::U8(v), Some((ks, vs))) => {
                    let (k, v) = (super::kv_int8::as_signed(k), super::kv_int8::as_signed(v));
                    check_blocks(k.len(), lk, (b, kv, s, d))?;
                    check_blocks(v.len(), lv, (b, kv, s, d))?;
                    check_scales(ks, (b, kv, s))?;
                    check_scales(vs, (b, kv, s))?;
                    super::kv_int8::with_scales(ks, |ks, lks| {
                        super::kv_int8::with_scales(vs, |vs, lvs| {
                            Ok(self.decode(q, (k, lk), (v, lv), Some(((ks, lks), (vs, lvs))), dims, b, d))
                        })
                    })?
                }
                (_, _, Some(_)) => candle_core::bail!("int8 attention: the codes must be U8"),
                (CpuStorage::F16(k), CpuStorage::F16(v), None) => self.decode(q, (k, lk), (v, lv), None, dims, b, d),
                _ => self.decode(q, (sk.as_slice::<f32>()?, lk), (sv.as_slice::<f32>()?, lv), None, dims, b, d),
            };
            *self.lse.lock().map_err(|_| candle_core::Error::Msg("lse lock poisoned".into()))? = lse;
            return Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))));
        }
        let (k, v) = (sk.as_slice::<f32>()?, sv.as_slice::<f32>()?);
        let mut lse = vec![0f32; b * h * t];
        let lse_heads = super::pool::Disjoint::new(&mut lse);
        let out = super::pool::par_filled(b * h * t * d, t * d, |bh, o| {
            // SAFETY: head bh writes its own t log-sum-exps.
            let lse = unsafe { lse_heads.part(bh * t, t) };
            let (bi, hi) = (bh / h, bh % h);
            let g = hi / dims.rep();
            let q = &q[bh * t * d..];
            let (k, v) = (&k[head_offset(lk, bi, g)..], &v[head_offset(lv, bi, g)..]);
            let mut scores = vec![0f32; TILE * s];
            for t0 in (0..t).step_by(TILE) {
                let rows = TILE.min(t - t0);
                let keys = dims.past() + t0 + rows;
                // SAFETY: every block below lies inside its buffer (rows ≤ t, keys ≤ s).
                unsafe {
                    let qp = (q.as_ptr().add(t0 * d), d, 1);
                    matmul(rows, keys, d, scores.as_mut_ptr(), keys, false, qp, (k.as_ptr(), 1, d), self.scale);
                }
                for r in 0..rows {
                    let row = &mut scores[r * keys..(r + 1) * keys];
                    lse[t0 + r] = softmax_row(row, dims.past() + t0 + r + 1);
                }
                unsafe {
                    let dst = o.as_mut_ptr().add(t0 * d);
                    matmul(rows, d, keys, dst, d, false, (scores.as_ptr(), keys, 1), (v.as_ptr(), d, 1), 1.0);
                }
            }
        });
        *self.lse.lock().map_err(|_| candle_core::Error::Msg("lse lock poisoned".into()))? = lse;
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let (_, kv, s, _) = k.dims4()?;
        let dims = Dims { h, kv, t, s };
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
        let (q, k, v, o, dout) = (flat(q)?, flat(k)?, flat(v)?, flat(o)?, flat(grad)?);
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("lse lock poisoned".into()))?;
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        let rep = dims.rep();
        dq.par_chunks_mut(rep * t * d)
            .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
            .enumerate()
            .for_each(|(bg, (dq, (dk, dv)))| {
                let mut p = vec![0f32; TILE * s];
                let mut ds = vec![0f32; TILE * s];
                let (kh, vh) = (&k[bg * s * d..], &v[bg * s * d..]);
                for j in 0..rep {
                    let bh = bg * rep + j;
                    let at = bh * t * d;
                    let (qh, oh, doh) = (&q[at..], &o[at..], &dout[at..]);
                    let dqh = &mut dq[j * t * d..];
                    let lse = &lse[bh * t..];
                    for t0 in (0..t).step_by(TILE) {
                        let rows = TILE.min(t - t0);
                        let keys = dims.past() + t0 + rows;
                        let (qt, dot) = (qh[t0 * d..].as_ptr(), doh[t0 * d..].as_ptr());
                        // SAFETY: all blocks lie inside their buffers (rows ≤ t, keys ≤ s).
                        unsafe {
                            matmul(
                                rows,
                                keys,
                                d,
                                p.as_mut_ptr(),
                                keys,
                                false,
                                (qt, d, 1),
                                (kh.as_ptr(), 1, d),
                                self.scale,
                            );
                        }
                        for r in 0..rows {
                            let len = dims.past() + t0 + r + 1;
                            let row = &mut p[r * keys..(r + 1) * keys];
                            simd::exp_shifted_sum(&mut row[..len], lse[t0 + r]);
                            row[len..].fill(0.0);
                        }
                        unsafe {
                            // dV += Pᵀ·dO ; dP = dO·Vᵀ
                            matmul(keys, d, rows, dv.as_mut_ptr(), d, true, (p.as_ptr(), 1, keys), (dot, d, 1), 1.0);
                            matmul(rows, keys, d, ds.as_mut_ptr(), keys, false, (dot, d, 1), (vh.as_ptr(), 1, d), 1.0);
                        }
                        for r in 0..rows {
                            let row_o = &oh[(t0 + r) * d..(t0 + r + 1) * d];
                            let row_do = &doh[(t0 + r) * d..(t0 + r + 1) * d];
                            let di = simd::dot(row_o, row_do);
                            let (pr, dsr) = (&p[r * keys..(r + 1) * keys], &mut ds[r * keys..(r + 1) * keys]);
                            dsr.iter_mut().zip(pr).for_each(|(x, p)| *x = p * (*x - di));
                        }
                        unsafe {
                            // dQ = scale·dS·K ; dK += scale·dSᵀ·Q
                            let dst = dqh.as_mut_ptr().add(t0 * d);
                            matmul(
                                rows,
                                d,
                                keys,
                                dst,
                                d,
                                false,
                                (ds.as_ptr(), keys, 1),
                                (kh.as_ptr(), d, 1),
                                self.scale,
                            );
                            matmul(
                                keys,
                                d,
                                rows,
                                dk.as_mut_ptr(),
                                d,
                                true,
                                (ds.as_ptr(), 1, keys),
                                (qt, d, 1),
                                self.scale,
                            );
                        }
                    }
                }
            });
        let dev = candle_core::Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), &dev)?),
            Some(Tensor::from_vec(dk, (b, kv, s, d), &dev)?),
            Some(Tensor::from_vec(dv, (b, kv, s, d), &dev)?),
        ))
    }
}
