//! Int8 panels: int8 weights in [`super::panel`]'s panel order, multiplied by int8 activations.
//!
//! A packed weight is a u8 tensor `[n/16, k/G, 16·G + 64]`: for each panel of 16 features and each
//! group of `G` inputs, the `16·G` weight bytes and then the 16 features' f32 scales (little-endian),
//! `w ≈ scale·q` with [`super::int8`]'s rounding (`q ∈ [−127, 127]`). `G` is [`group`]`(k)`: 128 when
//! `k` is a multiple of 128 (MiniMind's widths), else 32. The weight bytes run in chunks of 4 inputs;
//! a chunk holds, for each feature `j`, its 4 weights as `q + 128` (`[c][j][i mod 4]`): one 64-byte
//! chunk is one vector of 16 features × 4 inputs, the operand shape of the CPU's int8 dot product
//! instructions, and 16 chunks are one operand tile of the matrix unit.
//!
//! Activations are quantized the same way per row and group (`x ≈ s·a`, `a ∈ [−127, 127]`, as
//! llama.cpp's q8_0 over 32), so a group's contribution is an exact integer dot product:
//!
//! ```text
//! y[r][f] = Σ_g fma((Σ_{i∈g} q[f][i]·a[r][i]) as f32 · scale[f][g],  s[r][g],  …)
//! ```
//!
//! accumulated over the groups in order ([`super::int8_tiles`], a few rows at a time). AVX-512 VNNI
//! multiplies the unsigned weight bytes by the signed activations (`vpdpbusd`) and subtracts the
//! offset `128·Σa` (computed with the activations); AVX2 multiplies `|q|` (taken once per chunk,
//! for all the rows) by `a` with `q`'s sign (`vpmaddubsw`; signing the weights by each row's
//! activations costs a step more per row); AMX ([`super::amx`], for 8 rows or more and 128-input
//! groups) multiplies 16 rows × 64 inputs × 16 features per instruction. All give the same
//! integers, so every instruction set — and every batch size, since rows are quantized on their own
//! — gives the same bits. Weights are read as bytes (≈ 3.6× fewer than f32).
//!
//! Why 128: a group's sums must be scaled before the next group starts, and AMX's leave the unit
//! through memory; every 32 inputs that costs more than the unit saves, every 128 it does not. Fewer
//! scales also cost fewer vector operations. Held-out perplexity of the demo model: fp32 207.2538,
//! groups of 32 207.2374, groups of 128 207.2832 (docs/PERFORMANCE.md).

use super::int8_rows::QuantizedTiles;
pub use super::int8_rows::{quantize_rows, QuantizedRows};
use super::int8_tiles::{tile, Prefetch};
use super::panel::{for_each_panel_task, OutPtr, AHEAD, WIDTH};
use candle_core::{CpuStorage, DType, Device, Result, Tensor};

/// Inputs per chunk: one 32-bit lane of an int8 dot product.
pub(super) const CHUNK: usize = 4;
/// The smaller group size, for weights whose inputs are not a multiple of [`WIDE`].
pub(super) const NARROW: usize = 32;
/// The larger group size: four times fewer scaling operations per product, and sums the matrix
/// unit ([`super::amx`]) can keep over two of its 64-input steps.
pub(super) const WIDE: usize = 128;

/// Inputs per scale of a weight with `k` inputs: 128 when `k` is a multiple of 128 (MiniMind's
/// 512 and 1,408), otherwise 32 (q8_0's blocks).
pub fn group(k: usize) -> usize {
    if k.is_multiple_of(WIDE) {
        WIDE
    } else {
        NARROW
    }
}

/// Bytes per (panel, group) block: `group` × 16 weight bytes, then 16 f32 scales.
pub const fn block_bytes(group: usize) -> usize {
    group * WIDTH + 4 * WIDTH
}

/// Whether `w` is an int8 panel weight `[n/16, k/group, block]` (row-layout int8 weights are 2-D).
pub fn is_packed(w: &Tensor) -> bool {
    w.rank() == 3 && w.dtype() == DType::U8 && [NARROW, WIDE].iter().any(|&g| w.dims()[2] == block_bytes(g))
}

/// Whether an f32 weight `[n, k]` has int8 panels: on the CPU, `n` a multiple of 16, `k` of 32.
pub fn packable(w: &Tensor) -> bool {
    super::panel::packable(w) && w.dims()[1].is_multiple_of(NARROW)
}

/// Where weight `(j, i)` of a block (feature `j`, input `i` of the group) lies.
pub(super) fn code_at(j: usize, i: usize) -> usize {
    (i / CHUNK * WIDTH + j) * CHUNK + i % CHUNK
}

/// `scale = max|v| / 127` and `q = round(v / scale)` for one group (the scale 0 for all zeros).
fn quantize_group(values: &[f32], mut code: impl FnMut(usize, i8)) -> f32 {
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (i, v) in values.iter().enumerate() {
        code(i, (v * inv).round().clamp(-127.0, 127.0) as i8);
    }
    scale
}

/// Quantizes an f32 weight `[n, k]` into int8 panels (per feature and group of [`group`]`(k)` inputs,
/// with [`super::int8::quantize`]'s rounding).
pub fn quantize(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if !packable(w) {
        candle_core::bail!("int8 panels: cannot pack a {:?} {n}×{k} weight on {:?}", w.dtype(), w.device());
    }
    let (group, block) = (group(k), block_bytes(group(k)));
    let groups = k / group;
    let mut out = vec![0u8; n / WIDTH * groups * block];
    super::cpu::with_f32(w, |data| {
        for (f, row) in data.chunks_exact(k).enumerate() {
            let (p, j) = (f / WIDTH, f % WIDTH);
            for (g, values) in row.chunks_exact(group).enumerate() {
                let block = &mut out[(p * groups + g) * block..][..block];
                let scale = quantize_group(values, |i, q| block[code_at(j, i)] = (q as u8) ^ 0x80);
                block[group * WIDTH + 4 * j..][..4].copy_from_slice(&scale.to_le_bytes());
            }
        }
    })?;
    Tensor::from_vec(out, (n / WIDTH, groups, block), w.device())
}

/// The group size of int8 panels `[n/16, k/group, block]`.
fn group_of_panels(p: &Tensor) -> Result<usize> {
    match [NARROW, WIDE].into_iter().find(|&g| p.dims().get(2) == Some(&block_bytes(g))) {
        Some(g) => Ok(g),
        None => candle_core::bail!("int8 panels: {:?} {:?} is not a packed weight", p.dtype(), p.dims()),
    }
}

/// The int8 codes `[n, k]` and scales `[n, k/group]` of int8 panels.
pub fn codes(p: &Tensor) -> Result<(Vec<i8>, Vec<f32>)> {
    let group = group_of_panels(p)?;
    let (panels, groups, block) = p.dims3()?;
    let bytes = p.flatten_all()?.to_vec1::<u8>()?;
    let (n, k) = (panels * WIDTH, groups * group);
    let (mut q, mut scales) = (vec![0i8; n * k], vec![0f32; n * groups]);
    for (b, block) in bytes.chunks_exact(block).enumerate() {
        let (panel, g) = (b / groups, b % groups);
        for j in 0..WIDTH {
            let f = panel * WIDTH + j;
            let s = &block[group * WIDTH + 4 * j..][..4];
            scales[f * groups + g] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            for i in 0..group {
                q[f * k + g * group + i] = (block[code_at(j, i)] ^ 0x80) as i8;
            }
        }
    }
    Ok((q, scales))
}

/// The f32 weight `[n, k]` int8 panels stand for.
pub fn dequantize(p: &Tensor) -> Result<Tensor> {
    let group = group_of_panels(p)?;
    let (panels, groups, _) = p.dims3()?;
    let (n, k) = (panels * WIDTH, groups * group);
    let (q, scales) = codes(p)?;
    let out = q.iter().enumerate().map(|(at, &q)| q as f32 * scales[at / group]).collect::<Vec<_>>();
    Tensor::from_vec(out, (n, k), &Device::Cpu)
}

/// `x · Wᵀ` `[m, n]` for `x` `[m, k]` and int8 panels (inference only: no gradient flows).
pub fn matmul_nt(x: &Tensor, panels: &Tensor) -> Result<Tensor> {
    Ok(matmul_nt_many(x, &[panels])?.remove(0))
}

/// `x · Wᵢᵀ` for several int8 panel weights that share the input `x` `[m, k]`: quantized once,
/// multiplied in one parallel loop.
pub fn matmul_nt_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (m, k) = x.dims2()?;
    let ws = ws.iter().map(|w| w.contiguous()).collect::<Result<Vec<_>>>()?;
    for w in &ws {
        if !is_packed(w) || w.dim(1)? * group(k) != k || w.dim(2)? != block_bytes(group(k)) {
            candle_core::bail!("int8 panel matmul: {m}×{k} · {:?} {:?}", w.dtype(), w.dims());
        }
    }
    let storages: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let slices = storages
        .iter()
        .map(|(s, l)| match (&**s, l.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::U8(w)), Some((start, end))) => Ok(&w[start..end]),
            _ => candle_core::bail!("int8 panel matmul: the weights must be contiguous u8 on the CPU"),
        })
        .collect::<Result<Vec<_>>>()?;
    let x = x.to_dtype(DType::F32)?;
    let outs = super::cpu::with_f32(&x, |x| product(x, &slices, m, k))?;
    outs.into_iter().zip(&ws).map(|(o, w)| Tensor::from_vec(o, (m, w.dim(0)? * WIDTH), x.device())).collect()
}

/// The instruction set of the int8 tiles, with its rows per tile (accumulators: an i32 and an f32
/// register per row and 16 features: AVX-512 runs 6 rows against two panels at once, 24 of its 32
/// registers, each activation broadcast serving both panels — measured 1.2× a 12-row tile over one
/// panel on prompts, 1.05× at 16 rows; AVX2's 16 registers hold 4 rows of one half-panel).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Isa {
    /// The matrix unit ([`super::amx`]), for weights with 128-input groups and enough rows.
    Amx,
    Vnni512,
    Avx2,
    Portable,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::sync::OnceLock;
            static VNNI: OnceLock<bool> = OnceLock::new();
            let vnni = *VNNI.get_or_init(|| is_x86_feature_detected!("avx512vnni"));
            match super::simd::level() {
                2 if vnni => return Isa::Vnni512,
                1 | 2 => return Isa::Avx2,
                _ => {}
            }
        }
        Isa::Portable
    }

    pub(super) fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => super::amx::ROWS,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Amx => unreachable!("AMX is x86-64"),
            Isa::Vnni512 => 6,
            Isa::Avx2 | Isa::Portable => 4,
        }
    }
}

/// As [`super::panel`]'s product: each thread takes a run of tasks of a few panels of one weight,
/// every row group runs against each (two panels at a time on AVX-512), and the tiles prefetch the
/// panels their thread reads next; weights that share the input go through one parallel loop. The
/// activations are quantized once, straight into the tiles' layout.
fn product(x: &[f32], ws: &[&[u8]], m: usize, k: usize) -> Vec<Vec<f32>> {
    let isa = match Isa::detect() {
        Isa::Vnni512 if group(k) == WIDE && m >= AMX_MIN_ROWS && amx() => Isa::Amx,
        isa => isa,
    };
    let panel_len = k / group(k) * block_bytes(group(k));
    let panels: Vec<usize> = ws.iter().map(|w| w.len() / panel_len).collect();
    // Tiles of near-equal size, each at most the instruction set's (16 rows on AVX-512: 6 + 6 + 4;
    // 13: 5 + 5 + 3; the matrix unit's tiles are 16 rows, the last fewer).
    let per_tile = if isa == Isa::Amx { isa.rows() } else { m.div_ceil(m.div_ceil(isa.rows())) };
    let quantized = QuantizedTiles::new(x, k, per_tile);
    let tiles = quantized.tiles();
    // The `np` panels from panel `p` of weight `i` on (where the tiles go next), else the next
    // weight's first: a thread streams its run of tasks in this order.
    let next_panels = |i: usize, p: usize, np: usize| -> (*const u8, usize) {
        match (p < panels[i], ws.get(i + 1)) {
            (true, _) => (ws[i][p * panel_len..].as_ptr(), (panels[i] - p).min(np) * panel_len),
            (false, Some(next)) => (next.as_ptr(), next.len().min(np * panel_len)),
            (false, None) => (std::ptr::null(), 0),
        }
    };
    let work = |i: usize, range: std::ops::Range<usize>, out: &OutPtr, n: usize, follows: bool| {
        // The matrix unit: each pair of panels against all the tiles at once, the next pair prefetched.
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Amx {
            for p in range.clone().step_by(2) {
                let np = (range.end - p).min(2);
                let w = &ws[i][p * panel_len..(p + np) * panel_len];
                // SAFETY: the matrix unit is granted (`amx`); the tiles' rows of columns 16p..16(p+np)
                // lie inside the output, and no other task writes these columns.
                unsafe {
                    let out = out.at(p * WIDTH);
                    match np {
                        1 => super::amx::product::<1>(&tiles, (w, np * panel_len), k, out, n),
                        _ => super::amx::product::<2>(&tiles, (w, np * panel_len), k, out, n),
                    }
                }
            }
            return;
        }
        let mut p = range.start;
        while p < range.end {
            let np = if isa == Isa::Vnni512 && p + 1 < range.end { 2 } else { 1 };
            let w = &ws[i][p * panel_len..(p + np) * panel_len];
            // A pair its thread did not prefetch (the first of a run) streams from memory: its first
            // tile prefetches ahead in it. Otherwise — and in the other tiles, which find the pair
            // in cache — the tiles prefetch the next pair, each a share of it spread over its work,
            // so memory is busy while the tiles multiply.
            let cold = p == range.start && !follows;
            let (next, next_len) = next_panels(i, p + np, if isa == Isa::Vnni512 { 2 } else { 1 });
            let spreaders = tiles.len() - usize::from(cold);
            let share = (next_len / 64).div_ceil(spreaders.max(1));
            for (t, rows) in tiles.iter().enumerate() {
                let prefetch = if tiles.len() == 1 || cold && t == 0 {
                    Prefetch::Ahead(AHEAD * 64)
                } else {
                    let part = t - usize::from(cold);
                    let first = (part * share).min(next_len / 64);
                    let lines = ((part + 1) * share).min(next_len / 64) - first;
                    Prefetch::Spread { from: next.wrapping_add(first * 64), lines }
                };
                // SAFETY: the tile's rows of columns 16p..16(p+np) lie inside the output, and no
                // other task writes these columns.
                unsafe { tile(isa, rows, (w, prefetch), k, out.at(t * per_tile * n + p * WIDTH), n) };
            }
            p += np;
        }
    };
    // SAFETY: every task writes all m rows of its panels' columns.
    unsafe { for_each_panel_task(m, &panels, &work) }
}

/// Rows from which products take the matrix unit: below 8, the vector tiles are faster (MiniMind2-Small
/// decode steps, in-process: 1 row 0.86 vs 1.09 ms, 4 rows 1.27 vs 1.42, 8 rows 2.10 vs 2.01, 16 rows
/// 3.22 vs 2.88, 128-token prompts 13.0 vs 11.0).
const AMX_MIN_ROWS: usize = 8;

/// Whether the matrix unit is there and granted to this process.
fn amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::simd::matrix_unit_allowed() && super::amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}
