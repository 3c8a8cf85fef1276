//! `minimind bench attention`: continuous batching's decode attention alone — `--batch-size` rows,
//! each storing its new key and value as the last of `--seq-len` positions of its own slot of a KV
//! pool and attending over them, through every layer of the preset ([`decode_step`]) — in the cache
//! format asked for (f32, `--kv-f16`, `--kv-int8`). The cost a decode step pays beside its matmuls,
//! measured without them; their weights evict the pool from cache, which `--cold` does before each
//! step (outside the timing).

use super::bench::{median, BenchArgs};
use crate::model::{KvFormat, ModelConfig};
use crate::ops::decode_step::{decode_step, NewRows, PoolRow};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

pub fn run(a: &BenchArgs) -> Result<()> {
    let config = ModelConfig::preset(&a.preset)?;
    let (b, len, d, kv) = (a.batch_size, a.seq_len, config.head_dim(), config.num_key_value_heads);
    let format = a.kv_format()?;
    // Whole blocks of positions, as an int8 pool is allocated.
    let capacity = crate::ops::kv_int8::block_capacity(len);
    // One pool per layer, filled with varied codes or values (the cost depends on none of them).
    let layers: Vec<_> =
        (0..config.num_hidden_layers).map(|l| pool_layer(format, (b, kv, capacity, d), l)).collect::<Result<_>>()?;
    // Each row's new query, key and value, stored at its last position (RoPE at angle 0.1·i).
    let rows_of = |n: usize| Tensor::randn(0f32, 1.0, (b, n * d), &Device::Cpu);
    let (q, k, v) = (rows_of(config.num_attention_heads)?, rows_of(kv)?, rows_of(kv)?);
    let angles = (Tensor::arange(0u32, (b * d) as u32, &Device::Cpu)?.to_dtype(DType::F32)? * 0.1)?.reshape((b, d))?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let new = NewRows { q: &q, k: &k, v: &v, rope: (&cos, &sin), q_norm: None, k_norm: None };
    let rows: Vec<PoolRow> = (0..b).map(|slot| PoolRow { slot, len }).collect();
    let step = || -> Result<()> {
        for ((k, v), scales) in &layers {
            decode_step(&new, (k, v), scales.as_ref().map(|(ks, vs)| (ks, vs)), &rows)?;
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(a.steps);
    let mut eviction = vec![0u64; if a.cold { 8 << 20 } else { 0 }];
    for _ in 0..a.steps {
        for (i, e) in eviction.iter_mut().enumerate() {
            *e = e.wrapping_add(i as u64);
        }
        std::hint::black_box(&eviction);
        let start = Instant::now();
        step()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let per_step = median(&times);
    let bytes_per_value = match format {
        KvFormat::Int8 => 1.0,
        KvFormat::F16 => 2.0,
        KvFormat::Activations => 4.0,
    };
    let read = (2 * config.num_hidden_layers * b * kv * len * d) as f64 * bytes_per_value;
    println!(
        "Decode attention: {} ({}{}), {b} rows × {len} cached positions, {} layers, {} threads: {:.3} ms a step (median of {}), keys and values (codes, without int8 scales) read at {:.1} GB/s",
        a.preset,
        a.kv_label().unwrap_or("f32 KV cache"),
        if a.cold { ", caches evicted before each step" } else { "" },
        config.num_hidden_layers,
        candle_core::utils::get_num_threads(),
        per_step * 1e3,
        a.steps,
        read / per_step / 1e9
    );
    Ok(())
}

/// A pool's keys and values `[B, K, C, D]` in `format` (and an int8 pool's scales `[B, K, C]`).
type PoolLayer = ((Tensor, Tensor), Option<(Tensor, Tensor)>);

fn pool_layer(format: KvFormat, (b, kv, capacity, d): (usize, usize, usize, usize), seed: usize) -> Result<PoolLayer> {
    let n = b * kv * capacity * d;
    let values: Vec<f32> = (0..n).map(|i| ((i.wrapping_mul(2654435761) + seed) % 2001) as f32 / 1000.0 - 1.0).collect();
    let x = Tensor::from_vec(values, (b, kv, capacity, d), &Device::Cpu)?;
    Ok(match format {
        KvFormat::Int8 => {
            let codes = || Tensor::zeros((b, kv, capacity, d), DType::U8, &Device::Cpu);
            let scales = || Tensor::zeros((b, kv, capacity), DType::F32, &Device::Cpu);
            let (k, v, ks, vs) = (codes()?, codes()?, scales()?, scales()?);
            crate::ops::kv_int8::cache_write(&k, &ks, &x, 0, crate::ops::kv_int8::Stored::Keys)?;
            crate::ops::kv_int8::cache_write(&v, &vs, &x, 0, crate::ops::kv_int8::Stored::Values)?;
            ((k, v), Some((ks, vs)))
        }
        KvFormat::F16 => ((x.to_dtype(DType::F16)?, x.to_dtype(DType::F16)?), None),
        KvFormat::Activations => ((x.copy()?, x), None),
    })
}
