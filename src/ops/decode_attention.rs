//! Attention of continuous batching's decode step, fused for CPU fp32: one query row per sequence,
//! each against its own slot of a KV pool (`[slots, K, capacity, D]`) and its own length. One op for
//! the whole batch instead of a handful per sequence; each (sequence, head) runs exactly the
//! computation single-sequence decoding runs ([`super::attention`]'s one-row path), so a sequence's
//! bits do not depend on the batch.

use super::attention::decode_row;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Where each query row reads: its slot in the pool and how many positions it attends to.
#[derive(Debug, Clone, Copy)]
pub struct PoolRow {
    pub slot: usize,
    pub len: usize,
}

struct PoolAttention {
    rows: Vec<PoolRow>,
}

/// `q` `[1, H, B, D]` (row b's query heads at time index b), `k`/`v` pools `[S, K, C, D]`: row b
/// attends to positions `0..rows[b].len` of slot `rows[b].slot`. Returns `[1, H, B, D]`.
pub fn pool_attention(q: &Tensor, k: &Tensor, v: &Tensor, rows: &[PoolRow]) -> Result<Tensor> {
    q.contiguous()?.apply_op3(k, v, PoolAttention { rows: rows.to_vec() })
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
        let (q, k, v) =
            (&sq.as_slice::<f32>()?[lq.start_offset()..], &sk.as_slice::<f32>()?[k0..], &sv.as_slice::<f32>()?[v0..]);
        let (rep, scale) = (h / kv, 1.0 / (d as f32).sqrt());
        let head_stride = capacity * d;
        let mut out = vec![0f32; h * b * d];
        // Output [1, H, B, D]: chunk (head, row) is d values. The decode loop's own workers (not
        // rayon's, which would compete with them for the cores between the step's matmuls).
        super::pool::for_each_chunk_mut(&mut out, d, |i, o| {
            let (head, row) = (i / b, i % b);
            let PoolRow { slot, len } = self.rows[row];
            let at = (slot * kv + head / rep) * head_stride;
            let mut scores = vec![0f32; len];
            let query = &q[(head * b + row) * d..][..d];
            decode_row(query, &k[at..], &v[at..], len, d, scale, &mut scores, o);
        });
        Ok((CpuStorage::F32(out), Shape::from((1, h, b, d))))
    }
}
