//! The key/value cache of decoding: keys and values of past positions, so each new token attends to
//! them without recomputing them.

use crate::model::config::ModelConfig;
use crate::model::MiniMindForCausalLM;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

impl MiniMindForCausalLM {
    /// The dtype decoding caches keys and values in: the activations' own, or f16 (asked for, with
    /// f32 activations on the CPU).
    pub fn kv_dtype(&self) -> DType {
        if self.kv_f16 && self.kv_f16_possible() {
            DType::F16
        } else {
            self.compute_dtype()
        }
    }

    /// Cache keys and values in f16 (CPU, f32 activations): half the KV memory, and half the bytes
    /// each decoded token streams through attention — llama.cpp's default cache type. Keys and
    /// values are rounded to f16 as they are cached (a prompt's own attention included) and widened
    /// exactly as they are read.
    pub fn set_kv_f16(&mut self, on: bool) -> Result<()> {
        if on && !self.kv_f16_possible() {
            bail!(
                "an f16 KV cache needs f32 activations on the CPU (not {:?} on {:?})",
                self.compute_dtype(),
                self.device()
            );
        }
        self.kv_f16 = on;
        Ok(())
    }

    /// The attention kernels widen f16 caches for f32 activations on the CPU only.
    fn kv_f16_possible(&self) -> bool {
        self.device().is_cpu() && self.compute_dtype() == DType::F32
    }
}

/// Per-layer key/value cache, pre-allocated `[B, K, capacity, D]` and filled in place, holding
/// post-RoPE keys (before any head repetition), as MiniMind's cache does.
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig, batch: usize, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        if capacity > config.max_position_embeddings {
            bail!(
                "KV cache of {capacity} positions exceeds max_position_embeddings {}",
                config.max_position_embeddings
            );
        }
        let shape = (batch, config.num_key_value_heads, capacity, config.head_dim());
        let layers = (0..config.num_hidden_layers)
            .map(|_| Ok((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?)))
            .collect::<Result<_>>()?;
        Ok(Self { layers, len: 0, capacity })
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Empties the cache for a new sequence (the buffers are kept and overwritten).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Writes this step's `k`, `v` (`[B, K, T, D]`) after the cached ones; returns views of all.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            bail!("KV cache full: {} + {t} positions > capacity {}", self.len, self.capacity);
        }
        let (k_buf, v_buf) = &self.layers[layer];
        k_buf.slice_set(&crate::ops::cast(k, k_buf.dtype())?.contiguous()?, 2, self.len)?;
        v_buf.slice_set(&crate::ops::cast(v, v_buf.dtype())?.contiguous()?, 2, self.len)?;
        Ok((k_buf.narrow(2, 0, self.len + t)?, v_buf.narrow(2, 0, self.len + t)?))
    }

    /// Marks `t` more positions as cached, once every layer has appended them.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// The KV memory of continuous batching: the caches of `slots` sequences in one tensor per layer,
/// `[slots, K, capacity, D]`, each slot with its own length. Allocated once; a finished sequence's
/// slot is reused by the next.
pub struct KvPool {
    layers: Vec<(Tensor, Tensor)>,
    lens: Vec<usize>,
    capacity: usize,
}

impl KvPool {
    pub fn new(config: &ModelConfig, slots: usize, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let one = KvCache::new(config, slots, capacity, dtype, device)?;
        Ok(Self { layers: one.layers, lens: vec![0; slots], capacity })
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions cached in `slot`.
    pub fn len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// Takes over a sequence prefilled in `cache` (batch 1) into `slot`.
    pub fn load(&mut self, slot: usize, cache: &KvCache) -> Result<()> {
        let len = cache.len();
        if len > self.capacity {
            bail!("{len} cached positions do not fit a slot of {}", self.capacity);
        }
        for ((k_pool, v_pool), (k, v)) in self.layers.iter().zip(&cache.layers) {
            k_pool.narrow(0, slot, 1)?.slice_set(&k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            v_pool.narrow(0, slot, 1)?.slice_set(&v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
        self.lens[slot] = len;
        Ok(())
    }

    /// Writes one new position's key and value (`[1, K, 1, D]`) after `slot`'s cached ones.
    pub(crate) fn write(&self, layer: usize, slot: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let at = self.lens[slot];
        if at >= self.capacity {
            bail!("KV slot full: {} positions", self.capacity);
        }
        let (k_pool, v_pool) = &self.layers[layer];
        k_pool.narrow(0, slot, 1)?.slice_set(&crate::ops::cast(k, k_pool.dtype())?.contiguous()?, 2, at)?;
        v_pool.narrow(0, slot, 1)?.slice_set(&crate::ops::cast(v, v_pool.dtype())?.contiguous()?, 2, at)?;
        Ok(())
    }

    /// Writes a decode step's new keys and values `[1, K, B, D]` (row b for `slots[b]`) after each
    /// slot's cached positions: one in-place op per pool on the CPU, a copy per row elsewhere.
    pub(crate) fn write_rows(&self, layer: usize, slots: &[usize], k: &Tensor, v: &Tensor) -> Result<()> {
        let (k_pool, v_pool) = &self.layers[layer];
        let pool_dtype = matches!(k_pool.dtype(), DType::F32 | DType::F16);
        if k_pool.device().is_cpu() && pool_dtype && k.dtype() == DType::F32 {
            let places: Vec<(usize, usize)> = slots.iter().map(|&s| (s, self.lens[s])).collect();
            crate::ops::decode_attention::pool_write(k_pool, k, &places)?;
            return Ok(crate::ops::decode_attention::pool_write(v_pool, v, &places)?);
        }
        for (i, &slot) in slots.iter().enumerate() {
            self.write(layer, slot, &k.narrow(2, i, 1)?, &v.narrow(2, i, 1)?)?;
        }
        Ok(())
    }

    /// The pools of `layer`.
    pub(crate) fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// Marks one more position cached in each of `slots`, once every layer has written it.
    pub(crate) fn advance(&mut self, slots: &[usize]) {
        for &s in slots {
            self.lens[s] += 1;
        }
    }
}
