//! The key/value cache of decoding: keys and values of past positions, so each new token attends to
//! them without recomputing them.

use crate::model::config::ModelConfig;
use crate::model::MiniMindForCausalLM;
use crate::ops;
use crate::ops::kv_int8::Stored;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// How decoding caches keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvFormat {
    /// In the activations' dtype.
    #[default]
    Activations,
    /// f16 (CPU, f32 activations): half an f32 cache's memory and traffic, llama.cpp's default.
    F16,
    /// Int8 rows with one f32 scale each ([`ops::kv_int8`]; CPU, f32 activations): half of f16's.
    Int8,
}

impl KvFormat {
    /// The format the `--kv-f16` / `--kv-int8` flags ask for (neither: the activations' dtype).
    pub fn from_flags(f16: bool, int8: bool) -> Result<Self> {
        Ok(match (f16, int8) {
            (true, true) => bail!("--kv-f16 and --kv-int8 are two cache formats: choose one"),
            (true, false) => KvFormat::F16,
            (false, true) => KvFormat::Int8,
            (false, false) => KvFormat::Activations,
        })
    }
}

impl MiniMindForCausalLM {
    /// The dtype decoding caches keys and values in: the activations' own, f16, or U8 (an int8
    /// cache's codes, with f32 scales beside them).
    pub fn kv_dtype(&self) -> DType {
        match self.kv_format() {
            KvFormat::F16 => DType::F16,
            KvFormat::Int8 => DType::U8,
            KvFormat::Activations => self.compute_dtype(),
        }
    }

    /// The cache format decoding uses (f16 and int8 only with f32 activations on the CPU).
    pub fn kv_format(&self) -> KvFormat {
        if self.kv_reduced_possible() {
            self.kv
        } else {
            KvFormat::Activations
        }
    }

    /// Cache keys and values in f16 (CPU, f32 activations): half the KV memory, and half the bytes
    /// each decoded token streams through attention — llama.cpp's default cache type. Keys and
    /// values are rounded to f16 as they are cached (a prompt's own attention included) and widened
    /// exactly as they are read.
    pub fn set_kv_f16(&mut self, on: bool) -> Result<()> {
        self.set_kv_format(if on { KvFormat::F16 } else { KvFormat::Activations })
    }

    /// Cache keys and values as int8 rows with a scale each (CPU, f32 activations): a quarter of an
    /// f32 cache's memory and traffic, half of f16's. Rows are quantized as they are cached (a
    /// prompt's own attention included).
    pub fn set_kv_int8(&mut self, on: bool) -> Result<()> {
        self.set_kv_format(if on { KvFormat::Int8 } else { KvFormat::Activations })
    }

    /// Chooses how decoding caches keys and values (f16 and int8 need f32 activations on the CPU).
    pub fn set_kv_format(&mut self, format: KvFormat) -> Result<()> {
        if format != KvFormat::Activations && !self.kv_reduced_possible() {
            bail!(
                "an {} KV cache needs f32 activations on the CPU (not {:?} on {:?})",
                if format == KvFormat::F16 { "f16" } else { "int8" },
                self.compute_dtype(),
                self.device()
            );
        }
        let d = self.config.head_dim();
        if format == KvFormat::Int8 && !d.is_multiple_of(4) {
            bail!("an int8 KV cache stores four values of a key together: head_dim must be a multiple of 4 (not {d})");
        }
        self.kv = format;
        Ok(())
    }

    /// The attention kernels widen f16 and int8 caches for f32 activations on the CPU only.
    fn kv_reduced_possible(&self) -> bool {
        self.device().is_cpu() && self.compute_dtype() == DType::F32
    }
}

/// One layer's cached keys and values `[B, K, capacity, D]`, with an int8 cache's scales
/// `[B, K, capacity]` (the rows are then its codes).
type Layers = Vec<(Tensor, Tensor)>;

/// Allocates `[batch, K, capacity, D]` per layer in `dtype` (U8: int8 codes, and f32 scales).
fn allocate(
    config: &ModelConfig,
    batch: usize,
    capacity: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Layers, Layers)> {
    if dtype == DType::U8 && !device.is_cpu() {
        bail!("an int8 KV cache lives on the CPU");
    }
    // An int8 cache keeps its codes in blocks of positions: whole blocks are allocated.
    let capacity = if dtype == DType::U8 { ops::kv_int8::block_capacity(capacity) } else { capacity };
    let rows = [batch, config.num_key_value_heads, capacity];
    let pairs = |shape: &[usize], dtype| -> Result<Layers> {
        let zeros = || Tensor::zeros(shape, dtype, device);
        (0..config.num_hidden_layers).map(|_| Ok((zeros()?, zeros()?))).collect()
    };
    let layers = pairs(&[rows[0], rows[1], rows[2], config.head_dim()], dtype)?;
    let scales = if dtype == DType::U8 { pairs(&rows, DType::F32)? } else { Vec::new() };
    Ok((layers, scales))
}

/// Per-layer key/value cache, pre-allocated `[B, K, capacity, D]` and filled in place, holding
/// post-RoPE keys (before any head repetition), as MiniMind's cache does.
pub struct KvCache {
    layers: Layers,
    /// An int8 cache's scales per layer (empty otherwise).
    scales: Layers,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache of `capacity` positions for `batch` sequences, in `dtype` (see
    /// [`MiniMindForCausalLM::kv_dtype`]; U8 is an int8 cache).
    pub fn new(config: &ModelConfig, batch: usize, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        if capacity > config.max_position_embeddings {
            bail!(
                "KV cache of {capacity} positions exceeds max_position_embeddings {}",
                config.max_position_embeddings
            );
        }
        let (layers, scales) = allocate(config, batch, capacity, dtype, device)?;
        Ok(Self { layers, scales, len: 0, capacity })
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

    /// Appends this step's `k`, `v` (`[B, K, T, D]`) after the cached ones and returns the attention
    /// of `q` `[B, H, T, D]` over all of them (causal within the step; `dropout` as
    /// [`ops::causal_attention`]'s, on an f32 or f16 cache).
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        (k, v): (&Tensor, &Tensor),
        dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity {
            bail!("KV cache full: {} + {t} positions > capacity {}", self.len, self.capacity);
        }
        let end = self.len + t;
        let (k_buf, v_buf) = &self.layers[layer];
        let Some((k_scales, v_scales)) = self.scales.get(layer) else {
            k_buf.slice_set(&ops::cast(k, k_buf.dtype())?.contiguous()?, 2, self.len)?;
            v_buf.slice_set(&ops::cast(v, v_buf.dtype())?.contiguous()?, 2, self.len)?;
            return Ok(ops::causal_attention(q, &k_buf.narrow(2, 0, end)?, &v_buf.narrow(2, 0, end)?, dropout)?);
        };
        ops::kv_int8::cache_write(k_buf, k_scales, &k.to_dtype(DType::F32)?, self.len, Stored::Keys)?;
        ops::kv_int8::cache_write(v_buf, v_scales, &v.to_dtype(DType::F32)?, self.len, Stored::Values)?;
        if t == 1 && ops::fused_enabled() {
            // (The kernels read the last block whole, from the buffer behind the view.)
            let (kc, vc) = (k_buf.narrow(2, 0, end)?, v_buf.narrow(2, 0, end)?);
            let (ks, vs) = (k_scales.narrow(2, 0, end)?, v_scales.narrow(2, 0, end)?);
            return Ok(ops::attention::decode_attention_int8(q, (&kc, &vc), (&ks, &vs))?);
        }
        // A prompt attends with matmuls over the rows as cached, dequantized.
        let k = ops::kv_int8::dequantize(k_buf, k_scales, end, Stored::Keys)?;
        let v = ops::kv_int8::dequantize(v_buf, v_scales, end, Stored::Values)?;
        Ok(ops::causal_attention(q, &k, &v, None)?)
    }

    /// Marks `t` more positions as cached, once every layer has appended them.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// The KV memory of continuous batching: the caches of `slots` sequences in one tensor per layer,
/// `[slots, K, capacity, D]` (and an int8 cache's scales `[slots, K, capacity]`), each slot with its
/// own length. Allocated once; a finished sequence's slot is reused by the next.
pub struct KvPool {
    layers: Layers,
    scales: Layers,
    lens: Vec<usize>,
    capacity: usize,
}

impl KvPool {
    pub fn new(config: &ModelConfig, slots: usize, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let one = KvCache::new(config, slots, capacity, dtype, device)?;
        Ok(Self { layers: one.layers, scales: one.scales, lens: vec![0; slots], capacity })
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

    /// Takes over a sequence prefilled in `cache` (batch 1, the pool's format) into `slot`.
    pub fn load(&mut self, slot: usize, cache: &KvCache) -> Result<()> {
        let len = cache.len();
        if len > self.capacity {
            bail!("{len} cached positions do not fit a slot of {}", self.capacity);
        }
        if cache.scales.len() != self.scales.len() {
            bail!("the cache and the pool hold keys and values in different formats");
        }
        // An int8 cache is copied in whole blocks (both capacities are whole blocks).
        let copied = if self.scales.is_empty() { len } else { ops::kv_int8::block_capacity(len) };
        let pairs = self.layers.iter().zip(&cache.layers).chain(self.scales.iter().zip(&cache.scales));
        for ((k_pool, v_pool), (k, v)) in pairs {
            k_pool.narrow(0, slot, 1)?.slice_set(&k.narrow(2, 0, copied)?.contiguous()?, 2, 0)?;
            v_pool.narrow(0, slot, 1)?.slice_set(&v.narrow(2, 0, copied)?.contiguous()?, 2, 0)?;
        }
        self.lens[slot] = len;
        Ok(())
    }

    /// Writes one new position's key and value (`[1, K, 1, D]`) after `slot`'s cached ones.
    pub(crate) fn write(&self, layer: usize, slot: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        if !self.scales.is_empty() {
            bail!("an int8 pool is written row by row through `write_rows`");
        }
        let at = self.lens[slot];
        if at >= self.capacity {
            bail!("KV slot full: {} positions", self.capacity);
        }
        let (k_pool, v_pool) = &self.layers[layer];
        k_pool.narrow(0, slot, 1)?.slice_set(&ops::cast(k, k_pool.dtype())?.contiguous()?, 2, at)?;
        v_pool.narrow(0, slot, 1)?.slice_set(&ops::cast(v, v_pool.dtype())?.contiguous()?, 2, at)?;
        Ok(())
    }

    /// Writes a decode step's new keys and values `[1, K, B, D]` (row b for `slots[b]`) after each
    /// slot's cached positions, for the composed decode step (the fused one writes its rows itself):
    /// an int8 pool's rows quantized in one op per pool, other pools a copy per row.
    pub(crate) fn write_rows(&self, layer: usize, slots: &[usize], k: &Tensor, v: &Tensor) -> Result<()> {
        if let Some((k_scales, v_scales)) = self.scales.get(layer) {
            let (k_pool, v_pool) = &self.layers[layer];
            let places: Vec<(usize, usize)> = slots.iter().map(|&s| (s, self.lens[s])).collect();
            ops::kv_int8::pool_write(k_pool, k_scales, k, &places, Stored::Keys)?;
            return Ok(ops::kv_int8::pool_write(v_pool, v_scales, v, &places, Stored::Values)?);
        }
        for (i, &slot) in slots.iter().enumerate() {
            self.write(layer, slot, &k.narrow(2, i, 1)?, &v.narrow(2, i, 1)?)?;
        }
        Ok(())
    }

    /// The pools of `layer`, and an int8 pool's scales.
    pub(crate) fn layer(&self, layer: usize) -> ((&Tensor, &Tensor), Option<(&Tensor, &Tensor)>) {
        let (k, v) = &self.layers[layer];
        ((k, v), self.scales.get(layer).map(|(ks, vs)| (ks, vs)))
    }

    /// Marks one more position cached in each of `slots`, once every layer has written it.
    pub(crate) fn advance(&mut self, slots: &[usize]) {
        for &s in slots {
            self.lens[s] += 1;
        }
    }
}
