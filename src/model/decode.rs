//! The decode step of continuous batching: one new token for each of B independent sequences, each
//! in its own slot of a [`KvPool`] (its own length, so its own positions). The projections, the MLP
//! and the head run on the B rows at once — the weights are read once for B tokens, which is where
//! batching pays on a memory-bound decode — and attention is one op over the pool.
//!
//! Every row goes through exactly the operations [`MiniMindForCausalLM::forward_last`] applies to a
//! single sequence (decode-sized matmuls compute each row on its own, [`crate::ops::gemv`]; pooled
//! attention runs single-sequence decoding's per-row code), so a greedy answer is the same whether
//! its request ran alone or beside others.

use crate::model::transformer::{Attention, MiniMindForCausalLM, RmsNorm};
use crate::model::KvPool;
use crate::ops;
use crate::ops::decode_step::{NewRows, PoolRow};
use anyhow::{bail, Result};
use candle_core::{Module, Tensor, D};

impl Attention {
    /// `x` `[B, 1, d]`, row b the next position of slot `slots[b]`; writes each row's key and value
    /// into the pool and returns `[B, 1, d]`. `cos`/`sin` are each row's RoPE table row `[B, D]`.
    ///
    /// On the CPU one op rotates, caches and attends for every (row, KV head) in parallel
    /// ([`ops::decode_step`]). Composed, the B rows are laid out as the time axis of one sequence
    /// (`[1, heads, B, D]`) for the head split, the q/k norm and RoPE — with each row's own
    /// position's table row — which are all per row, so they run once for the batch.
    fn decode_rows(
        &self,
        x: &Tensor,
        pool: &KvPool,
        slots: &[usize],
        layer: usize,
        (cos, sin): (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let b = slots.len();
        let weights = [self.q_proj.weight_for(x)?, self.k_proj.weight_for(x)?, self.v_proj.weight_for(x)?];
        let qkv = ops::matmul_nt_many(x, &[&weights[0], &weights[1], &weights[2]])?; // [B, 1, n·D] each
        let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
        let rows: Vec<PoolRow> = slots.iter().map(|&slot| PoolRow { slot, len: pool.len(slot) + 1 }).collect();
        let (pools, scales) = pool.layer(layer);
        let y = if ops::fused_decode_step(q, pools.0, scales.is_some()) {
            // One op: each row's key and queries rotated, its key and value cached, its attention.
            let flat = |z: &Tensor| z.reshape((b, z.dim(D::Minus1)?));
            let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
            let new = NewRows {
                q: &q,
                k: &k,
                v: &v,
                rope: (cos, sin),
                q_norm: self.q_norm.as_ref().map(|n| (&n.weight, n.eps())),
                k_norm: self.k_norm.as_ref().map(|n| (&n.weight, n.eps())),
            };
            ops::decode_step::decode_step(&new, pools, scales, &rows)?
        } else {
            // As `Attention::forward` does for one row: heads, then RoPE (after the q/k norm if
            // any); the new keys and values written into the pool, then the attention over it.
            let heads = |z: &Tensor, n: usize, rotate: bool, norm: Option<&RmsNorm>| -> Result<Tensor> {
                let z = z.reshape((1, b, z.dim(D::Minus1)?))?;
                let z = ops::composed::split_heads(&z, n, None)?;
                match (rotate, norm) {
                    (false, _) => Ok(z),
                    (true, None) => Ok(ops::apply_rope(&z, cos, sin)?),
                    (true, Some(norm)) => Ok(ops::apply_rope(&norm.forward(&z)?, cos, sin)?),
                }
            };
            let q = heads(q, self.num_heads, true, self.q_norm.as_ref())?; // [1, H, B, D]
            let k = heads(k, self.num_kv_heads, true, self.k_norm.as_ref())?;
            let v = heads(v, self.num_kv_heads, false, None)?;
            pool.write_rows(layer, slots, &k, &v)?;
            ops::pool_attention(&q, pools, scales, &rows)?
        };
        let y = y.transpose(1, 2)?; // [1, H, B, D]
        let out = ops::merge_heads(&y, &self.o_proj.weight_for(&y)?)?; // [1, B, d]
        Ok(out.reshape((b, 1, out.dim(D::Minus1)?))?)
    }
}

impl MiniMindForCausalLM {
    /// Logits `[B, V]` of one new token per sequence: `tokens[b]` continues the sequence cached in
    /// slot `slots[b]` of `pool`. Each of those slots advances by one position.
    pub fn forward_decode(&self, tokens: &[u32], pool: &mut KvPool, slots: &[usize]) -> Result<Tensor> {
        let b = tokens.len();
        if b == 0 || slots.len() != b || slots.iter().any(|&s| s >= pool.slots()) {
            bail!("forward_decode needs one pool slot per token ({} tokens, slots {slots:?})", b);
        }
        if let Some(&full) = slots.iter().find(|&&s| pool.len(s) >= pool.capacity()) {
            bail!("KV slot {full} full: {} positions", pool.capacity());
        }
        let d = self.config.hidden_size;
        let ids = Tensor::from_vec(tokens.to_vec(), b, self.device())?;
        let embedded = self.model.embed_tokens.index_select(&ids, 0)?;
        let mut x = embedded.to_dtype(self.compute_dtype())?.reshape((b, 1, d))?;
        // Each row's RoPE table row, at its own position: once per step, for every layer.
        let positions: Vec<u32> = slots.iter().map(|&s| pool.len(s) as u32).collect();
        let positions = Tensor::from_vec(positions, b, self.device())?;
        let rotary = &self.model.rotary;
        let (cos, sin) = (rotary.cos.index_select(&positions, 0)?, rotary.sin.index_select(&positions, 0)?);
        // Each residual connection is added together with the norm that follows it (the next
        // layer's input norm, after the last layer the final norm).
        let layers = &self.model.layers;
        let mut normed = layers.first().map_or(&self.model.norm, |first| &first.input_layernorm).forward(&x)?;
        for (i, layer) in layers.iter().enumerate() {
            let attention = layer.self_attn.decode_rows(&normed, pool, slots, i, (&cos, &sin))?;
            let (h, h_normed) = layer.post_attention_layernorm.add_and_forward(&x, &attention)?;
            let (m, _) = layer.mlp.forward(&h_normed, false)?;
            let next_norm = layers.get(i + 1).map_or(&self.model.norm, |next| &next.input_layernorm);
            (x, normed) = next_norm.add_and_forward(&h, &m)?;
        }
        pool.advance(slots);
        Ok(self.lm_head.forward(&normed.reshape((b, normed.dim(D::Minus1)?))?)?)
    }
}
