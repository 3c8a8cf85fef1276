//! Attention of continuous batching's decode step, fused for CPU fp32 (over f32 or f16 KV pools): one
//! query row per sequence, each against its own slot of a KV pool (`[slots, K, capacity, D]`) and its
//! own length. One op for the whole batch instead of a handful per sequence; each (sequence, head) runs
//! exactly the computation single-sequence decoding runs ([`super::attention`]'s `decode_heads`, here
//! for the query heads of a grouped-query group at once, each with the same bits), so a sequence's
//! bits do not depend on the batch.

use super::attention::decode_heads;
use super::kv_int8::{as_signed, with_scales};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Where each query row reads: its slot in the pool and how many positions it attends to.
#[derive(Debug, Clone, Copy)]
pub struct PoolRow {
    pub slot: usize,
    pub len: usize,
}

struct PoolAttention {
    rows: Vec<PoolRow>,
    /// An int8 pool's key and value scales `[S, K, C]` (the pools are then its codes).
    row_scales: Option<(Tensor, Tensor)>,
}

/// `q` `[1, H, B, D]` (row b's query heads at time index b), `k`/`v` pools `[S, K, C, D]`: row b
/// attends to positions `0..rows[b].len` of slot `rows[b].slot`. Returns `[1, B, H, D]` (each row's
/// heads together, ready to be merged). With `row_scales`, the pools are an int8 cache's codes (U8)
/// and these its scales `[S, K, C]` ([`super::kv_int8`]; the keys in blocks of positions).
pub fn pool_attention(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    row_scales: Option<(&Tensor, &Tensor)>,
    rows: &[PoolRow],
) -> Result<Tensor> {
    let row_scales = row_scales.map(|(ks, vs)| (ks.clone(), vs.clone()));
    q.contiguous()?.apply_op3(k, v, PoolAttention { rows: rows.to_vec(), row_scales })
}

impl CustomOp3 for PoolAttention {
    fn name(&self) -> &'static str {
        "pool-attention"
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
        let (one, h, b, d) = lq.shape().dims4()?;
        let (slots, kv, capacity, kd) = lk.shape().dims4()?;
        let bad_row = self.rows.iter().any(|r| r.slot >= slots || r.len == 0 || r.len > capacity);
        if one != 1 || b != self.rows.len() || kv == 0 || h % kv != 0 || kd != d || lv.shape() != lk.shape() || bad_row
        {
            candle_core::bail!(
                "pool attention: bad shapes q {:?} k {:?} for rows {:?}",
                lq.dims(),
                lk.dims(),
                self.rows
            );
        }
        let (Some((k0, _)), Some((v0, _))) = (lk.contiguous_offsets(), lv.contiguous_offsets()) else {
            candle_core::bail!("pool attention: the pools must be contiguous");
        };
        let q = &sq.as_slice::<f32>()?[lq.start_offset()..];
        let shape = PoolShape { b, h, kv, d, capacity };
        let out = match (sk, sv, &self.row_scales) {
            (CpuStorage::U8(k), CpuStorage::U8(v), Some((ks, vs))) => {
                if !super::kv_int8::holds_blocks(capacity, d) {
                    candle_core::bail!("int8 pool attention: key codes {:?} are not whole blocks", lk.dims());
                }
                let (k, v) = (as_signed(&k[k0..]), as_signed(&v[v0..]));
                let dims = [slots, kv, capacity];
                pool_scales(ks, dims, |ks| {
                    pool_scales(vs, dims, |vs| Ok(self.attend(q, (k, v), Some((ks, vs)), shape)))
                })?
            }
            (_, _, Some(_)) => candle_core::bail!("int8 pool attention: the pools must be U8"),
            (CpuStorage::F16(k), CpuStorage::F16(v), None) => self.attend(q, (&k[k0..], &v[v0..]), None, shape),
            _ => self.attend(q, (&sk.as_slice::<f32>()?[k0..], &sv.as_slice::<f32>()?[v0..]), None, shape),
        };
        Ok((CpuStorage::F32(out), Shape::from((1, b, h, d))))
    }
}

/// The contiguous values of an int8 pool's scales `[S, K, C]`, handed to `f`.
fn pool_scales<R>(scales: &Tensor, dims: [usize; 3], f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if scales.dims() != dims {
        candle_core::bail!("int8 pool attention: scales {:?} for pools of {dims:?} rows", scales.dims());
    }
    with_scales(scales, |s, l| match l.contiguous_offsets() {
        Some((start, end)) => f(&s[start..end]),
        None => candle_core::bail!("int8 pool attention: the scales must be contiguous"),
    })
}

/// The sizes of a pooled attention: rows, query heads, KV heads, head size, slot capacity.
#[derive(Clone, Copy)]
struct PoolShape {
    b: usize,
    h: usize,
    kv: usize,
    d: usize,
    capacity: usize,
}

impl PoolAttention {
    /// `[1, B, H, D]` of queries `q` `[1, H, B, D]` over pools stored as `T` (f32, or f16).
    fn attend<T: super::simd::KvElem>(
        &self,
        q: &[f32],
        (k, v): (&[T], &[T]),
        row_scales: Option<(&[f32], &[f32])>,
        shape: PoolShape,
    ) -> Vec<f32> {
        let PoolShape { b, h, kv, d, capacity } = shape;
        let (rep, scale) = (h / kv, 1.0 / (d as f32).sqrt());
        let head_stride = capacity * d;
        // Output [1, B, H, D]: chunk (row, KV head) is the `rep` query heads sharing that KV head,
        // which read its key and value rows together. On the decode loop's own workers (not
        // rayon's, which would compete with them for the cores between the step's matmuls).
        super::pool::par_filled(b * h * d, rep * d, |i, o| {
            let (row, group) = (i / kv, i % kv);
            let PoolRow { slot, len } = self.rows[row];
            let at = (slot * kv + group) * head_stride;
            let mut queries = Vec::with_capacity(rep * d);
            for head in group * rep..(group + 1) * rep {
                queries.extend_from_slice(&q[(head * b + row) * d..][..d]);
            }
            let (mut scores, mut lse) = (vec![0f32; rep * len], vec![0f32; rep]);
            // Scales `[S, K, C]`: row (slot, group)'s first `len`.
            let row_scales = row_scales.map(|(ks, vs)| {
                let at = (slot * kv + group) * capacity;
                (&ks[at..at + len], &vs[at..at + len])
            });
            decode_heads(&queries, (&k[at..], &v[at..]), row_scales, len, d, scale, &mut scores, o, &mut lse);
        })
    }
}

/// Writes row b of `x` `[1, K, B, D]` (a decode step's new keys or values, f32) into `pool`
/// `[S, K, C, D]` (f32 or f16) at slot `places[b].0`, position `places[b].1`, in place: one op for
/// the batch instead of a copy per sequence.
pub fn pool_write(pool: &Tensor, x: &Tensor, places: &[(usize, usize)]) -> Result<()> {
    pool.inplace_op2(&x.contiguous()?, &PoolWrite { places: places.to_vec() })
}

struct PoolWrite {
    places: Vec<(usize, usize)>,
}

impl candle_core::InplaceOp2 for PoolWrite {
    fn name(&self) -> &'static str {
        "pool-write"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (slots, kv, capacity, d) = l1.shape().dims4()?;
        let (one, kx, b, dx) = l2.shape().dims4()?;
        let bad = self.places.iter().any(|&(s, at)| s >= slots || at >= capacity);
        if one != 1 || kx != kv || dx != d || b != self.places.len() || bad {
            candle_core::bail!("pool write: {:?} into {:?} at {:?}", l2.dims(), l1.dims(), self.places);
        }
        let (Some((p0, _)), Some((x0, _))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("pool write: the pool and the rows must be contiguous");
        };
        let x = &s2.as_slice::<f32>()?[x0..];
        // Row `row` of KV head `g` goes to the pool at (slot, g, at): copied, or rounded to f16
        // (to nearest, as a cache's `to_dtype` rounds).
        let places = self.places.iter().enumerate().flat_map(|(row, &(slot, at))| {
            (0..kv).map(move |g| (p0 + ((slot * kv + g) * capacity + at) * d, (g * b + row) * d))
        });
        match s1 {
            CpuStorage::F32(pool) => places.for_each(|(to, from)| pool[to..to + d].copy_from_slice(&x[from..][..d])),
            CpuStorage::F16(pool) => places.for_each(|(to, from)| {
                use half::slice::HalfFloatSliceExt;
                pool[to..to + d].convert_from_f32_slice(&x[from..][..d])
            }),
            _ => candle_core::bail!("pool write: an f32 or f16 pool"),
        }
        Ok(())
    }
}
