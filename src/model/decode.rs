//! The decode step of continuous batching: one new token for each of B independent sequences, each
//! with its own KV cache (its own length, so its own positions). The projections, the MLP and the
//! head run on the B rows at once — the weights are read once for B tokens, which is where batching
//! pays on a memory-bound decode — while RoPE and attention run per row against that row's cache.
//!
//! Every row goes through exactly the operations [`MiniMindForCausalLM::forward_last`] applies to a
//! single sequence (decode-sized matmuls compute each row on its own, [`crate::ops::gemv`]), so a
//! greedy answer is the same whether its request ran alone or beside others.

use crate::model::transformer::{Attention, MiniMindForCausalLM};
use crate::model::KvCache;
use crate::ops;
use anyhow::{bail, Result};
use candle_core::{Module, Tensor, D};

impl Attention {
    /// `x` `[B, 1, d]`, row b at position `caches[b].len()`; appends each row's key and value to its
    /// cache and returns `[B, 1, d]`.
    fn decode_rows(&self, x: &Tensor, caches: &mut [&mut KvCache], layer: usize, rope: &super::RotaryEmbedding) -> Result<Tensor> {
        let z = |linear: &super::Linear| -> Result<Tensor> { Ok(ops::matmul_nt(x, &linear.weight_for(x)?)?) };
        let (zq, zk, zv) = (z(&self.q_proj)?, z(&self.k_proj)?, z(&self.v_proj)?);
        let mut rows = Vec::with_capacity(caches.len());
        for (b, cache) in caches.iter_mut().enumerate() {
            let (cos, sin) = rope.rows(cache.len(), 1)?;
            // As `Attention::forward` for one row: split into heads, RoPE (after the q/k norm when
            // the model has one).
            let heads = |z: &Tensor, n: usize, norm: Option<&super::RmsNorm>| -> Result<Tensor> {
                let row = z.narrow(0, b, 1)?;
                Ok(match norm {
                    None => ops::composed::split_heads(&row, n, Some((&cos, &sin)))?,
                    Some(norm) => ops::apply_rope(&norm.forward(&ops::composed::split_heads(&row, n, None)?)?, &cos, &sin)?,
                })
            };
            let q = heads(&zq, self.num_heads, self.q_norm.as_ref())?;
            let k = heads(&zk, self.num_kv_heads, self.k_norm.as_ref())?;
            let v = ops::composed::split_heads(&zv.narrow(0, b, 1)?, self.num_kv_heads, None)?;
            let (k, v) = cache.append(layer, &k, &v)?;
            rows.push(ops::causal_attention(&q, &k, &v, None)?);
        }
        let y = Tensor::cat(&rows, 0)?;
        Ok(ops::merge_heads(&y, &self.o_proj.weight_for(&y)?)?)
    }
}

impl MiniMindForCausalLM {
    /// Logits `[B, V]` of one new token per sequence: `tokens[b]` continues the sequence cached in
    /// `caches[b]` (each cache of batch 1, any length). Each cache advances by one position.
    pub fn forward_decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = tokens.len();
        if b == 0 || caches.len() != b {
            bail!("forward_decode needs one cache per token ({} tokens, {} caches)", b, caches.len());
        }
        if let Some(full) = caches.iter().find(|c| c.len() >= c.capacity()) {
            bail!("KV cache full: {} positions", full.capacity());
        }
        let d = self.config.hidden_size;
        let ids = Tensor::from_vec(tokens.to_vec(), b, self.device())?;
        let embedded = self.model.embed_tokens.index_select(&ids, 0)?;
        let mut x = embedded.to_dtype(self.compute_dtype())?.reshape((b, 1, d))?;
        for (i, layer) in self.model.layers.iter().enumerate() {
            let attended = layer.self_attn.decode_rows(&layer.input_layernorm.forward(&x)?, caches, i, &self.model.rotary)?;
            let h = (x + attended)?;
            let (m, _) = layer.mlp.forward(&layer.post_attention_layernorm.forward(&h)?, false)?;
            x = (h + m)?;
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        let hidden = self.model.norm.forward(&x)?;
        Ok(self.lm_head.forward(&hidden.reshape((b, hidden.dim(D::Minus1)?))?)?)
    }
}
