//! Int8 panels: [`super::panel`]'s layout and tile with int8 weights, for batched int8 inference.
//!
//! A packed weight is a u8 tensor `[n/16, k/32, 576]`: for each panel of 16 features and each group of
//! 32 inputs, the 32 × 16 int8 values (`[i][j]`, input-major as in f32 panels) and then the 16
//! features' f32 scales (little-endian), `w ≈ scale·q` with [`super::int8`]'s quantization. The tile
//! turns each input's 16 weights into f32 (`q as f32 · scale`, exactly the dequantized weight) and runs
//! the f32 panels' FMA chain: an output is bit for bit the f32 panel product of the dequantized
//! weight, for every batch size and on AVX2 and AVX-512 alike. Weights are read as bytes (≈ 3.6×
//! fewer than f32) and converted once per group of rows, not once per row.

use super::cpu::f32_slice;
use super::panel::{Isa, OutPtr, AHEAD, PANELS_PER_TASK, WIDTH};
use super::pool;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

/// Inputs per scale.
const GROUP: usize = super::int8::GROUP;
/// Bytes per (panel, group) block: 32 × 16 int8 values, then 16 f32 scales.
pub const BLOCK: usize = GROUP * WIDTH + 4 * WIDTH;

/// Whether `w` is an int8 panel weight `[n/16, k/32, 576]` (row-layout int8 weights are 2-D).
pub fn is_packed(w: &Tensor) -> bool {
    w.rank() == 3 && w.dtype() == DType::U8 && w.dims()[2] == BLOCK
}

/// Whether an f32 weight `[n, k]` has int8 panels: on the CPU, `n` a multiple of 16, `k` of 32.
pub fn packable(w: &Tensor) -> bool {
    super::panel::packable(w) && w.dims()[1].is_multiple_of(GROUP)
}

/// Quantizes an f32 weight `[n, k]` into int8 panels (per feature and group of 32 inputs:
/// `scale = max|w| / 127`, `q = round(w / scale)`, as [`super::int8::quantize`]).
pub fn quantize(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    if !packable(w) {
        candle_core::bail!("int8 panels: cannot pack a {:?} {n}×{k} weight on {:?}", w.dtype(), w.device());
    }
    let groups = k / GROUP;
    let mut out = vec![0u8; n / WIDTH * groups * BLOCK];
    super::cpu::with_f32(w, |data| {
        for (f, row) in data.chunks_exact(k).enumerate() {
            let (p, j) = (f / WIDTH, f % WIDTH);
            for (g, values) in row.chunks_exact(GROUP).enumerate() {
                let block = &mut out[(p * groups + g) * BLOCK..][..BLOCK];
                let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = max / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (i, v) in values.iter().enumerate() {
                    block[i * WIDTH + j] = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
                }
                block[GROUP * WIDTH + 4 * j..][..4].copy_from_slice(&scale.to_le_bytes());
            }
        }
    })?;
    Tensor::from_vec(out, (n / WIDTH, groups, BLOCK), w.device())
}

/// The f32 weight `[n, k]` int8 panels stand for.
pub fn dequantize(p: &Tensor) -> Result<Tensor> {
    let (panels, groups, _) = p.dims3()?;
    let bytes = p.flatten_all()?.to_vec1::<u8>()?;
    let (n, k) = (panels * WIDTH, groups * GROUP);
    let mut out = vec![0f32; n * k];
    for (b, block) in bytes.chunks_exact(BLOCK).enumerate() {
        let (panel, g) = (b / groups, b % groups);
        for j in 0..WIDTH {
            let s = &block[GROUP * WIDTH + 4 * j..][..4];
            let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            for i in 0..GROUP {
                out[(panel * WIDTH + j) * k + g * GROUP + i] = (block[i * WIDTH + j] as i8) as f32 * scale;
            }
        }
    }
    Tensor::from_vec(out, (n, k), &Device::Cpu)
}

/// `x · Wᵀ` `[m, n]` for `x` `[m, k]` (f32) and int8 panels.
pub fn matmul_nt(x: &Tensor, panels: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?.contiguous()?.apply_op2_no_bwd(&panels.contiguous()?, &Int8PanelMatmul)
}

struct Int8PanelMatmul;

impl CustomOp2 for Int8PanelMatmul {
    fn name(&self) -> &'static str {
        "int8-panel-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (panels, groups, block) = l2.shape().dims3()?;
        if groups * GROUP != k || block != BLOCK {
            candle_core::bail!("int8 panel matmul: {m}×{k} · panels {panels}×{groups}×{block}");
        }
        let w = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::U8(w), Some((start, end))) => &w[start..end],
            _ => candle_core::bail!("int8 panel matmul: the weight must be contiguous u8"),
        };
        let out = product(f32_slice(s1, l1)?, w, m, k, panels);
        Ok((CpuStorage::F32(out), Shape::from((m, panels * WIDTH))))
    }
}

/// As [`super::panel`]'s product: threads take four panels, every row group runs against each.
fn product(x: &[f32], w: &[u8], m: usize, k: usize, panels: usize) -> Vec<f32> {
    let isa = Isa::detect();
    let group = rows_per_tile(isa);
    let (n, panel_len) = (panels * WIDTH, k / GROUP * BLOCK);
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let base = OutPtr(out.as_mut_ptr());
    pool::for_each(panels.div_ceil(PANELS_PER_TASK), &|c| {
        for p in c * PANELS_PER_TASK..((c + 1) * PANELS_PER_TASK).min(panels) {
            let ws = &w[p * panel_len..(p + 1) * panel_len];
            for r0 in (0..m).step_by(group) {
                let rows = group.min(m - r0);
                // SAFETY: rows r0.. of columns 16p..16p+16 lie inside `out`'s capacity, and no
                // other task writes these columns.
                unsafe { tile(isa, rows, &x[r0 * k..(r0 + rows) * k], ws, k, base.at(r0 * n + p * WIDTH), n) };
            }
        }
    });
    // SAFETY: the tasks above wrote every (row, column) of the m·n values, and all have finished.
    unsafe { out.set_len(m * n) };
    out
}

/// Rows per tile: each input's weights are converted once per tile, so AVX-512 takes 16 rows (16
/// accumulators of 32 registers) where the f32 tile takes 8.
fn rows_per_tile(isa: Isa) -> usize {
    if isa == Isa::Avx512 {
        16
    } else {
        isa.group()
    }
}

/// `rows` rows (`x` `[rows, k]`) against one int8 panel; row r's 16 products go to
/// `out + r·row_stride`.
///
/// # Safety
/// `out` must be valid for those writes, and no other thread may access them meanwhile.
unsafe fn tile(isa: Isa, rows: usize, x: &[f32], w: &[u8], k: usize, out: *mut f32, row_stride: usize) {
    assert!(
        (1..=rows_per_tile(isa)).contains(&rows) && x.len() == rows * k && w.len() == k / GROUP * BLOCK,
        "int8 panel tile: bad sizes"
    );
    macro_rules! rows {
        ($f:ident, $($r:literal)*) => {
            match rows { $($r => $f::<$r>(x, w, k, out, row_stride),)* _ => unreachable!("rows ≤ group") }
        };
    }
    // SAFETY: the instruction set was detected; the sizes were checked above; `out` is the caller's.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => rows!(tile_avx512, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => rows!(tile_avx2, 1 2 3 4 5 6),
            _ => rows!(tile_portable, 1 2 3 4),
        }
    }
}

/// The 16 scales of a block.
fn scales(block: &[u8]) -> [f32; WIDTH] {
    std::array::from_fn(|j| {
        let s = &block[GROUP * WIDTH + 4 * j..][..4];
        f32::from_le_bytes([s[0], s[1], s[2], s[3]])
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(x: &[f32], w: &[u8], k: usize, out: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); R];
    for (g, block) in w.chunks_exact(BLOCK).enumerate() {
        let s = scales(block);
        // SAFETY (all loads): `tile` checked the sizes; `out` is the caller's.
        let scale = unsafe { _mm512_loadu_ps(s.as_ptr()) };
        _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(AHEAD * 64) as *const i8);
        for i in 0..GROUP {
            let q = unsafe { _mm_loadu_si128(block.as_ptr().add(i * WIDTH) as *const __m128i) };
            let wv = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), scale);
            let at = g * GROUP + i;
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *x.as_ptr().add(r * k + at) }), wv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        unsafe { _mm512_storeu_ps(out.add(r * stride), *acc) };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(x: &[f32], w: &[u8], k: usize, out: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (g, block) in w.chunks_exact(BLOCK).enumerate() {
        let s = scales(block);
        // SAFETY (all loads): `tile` checked the sizes; `out` is the caller's.
        let scale = unsafe { [_mm256_loadu_ps(s.as_ptr()), _mm256_loadu_ps(s.as_ptr().add(8))] };
        _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(AHEAD * 64) as *const i8);
        for i in 0..GROUP {
            let q = |h: usize| unsafe { _mm_loadl_epi64(block.as_ptr().add(i * WIDTH + 8 * h) as *const __m128i) };
            let wv = [0, 1].map(|h| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q(h))), scale[h]));
            let at = g * GROUP + i;
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(unsafe { *x.as_ptr().add(r * k + at) });
                acc[0] = _mm256_fmadd_ps(xv, wv[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(xv, wv[1], acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        unsafe {
            _mm256_storeu_ps(out.add(r * stride), acc[0]);
            _mm256_storeu_ps(out.add(r * stride + 8), acc[1]);
        }
    }
}

/// Without AVX2/FMA: the same chain with a separate multiply and add.
unsafe fn tile_portable<const R: usize>(x: &[f32], w: &[u8], k: usize, out: *mut f32, stride: usize) {
    let mut acc = [[0f32; WIDTH]; R];
    for (g, block) in w.chunks_exact(BLOCK).enumerate() {
        let s = scales(block);
        for i in 0..GROUP {
            let wv: [f32; WIDTH] = std::array::from_fn(|j| (block[i * WIDTH + j] as i8) as f32 * s[j]);
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = x[r * k + g * GROUP + i];
                for j in 0..WIDTH {
                    acc[j] += xv * wv[j];
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller's contract (see `tile`).
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * stride), WIDTH) };
    }
}
