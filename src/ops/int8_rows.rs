//! Activations for the int8 panels ([`super::panel_int8`]): rows quantized per group of inputs (the
//! weight's group, [`group`]: `x ≈ s·a`, `a ∈ [−127, 127]`, as llama.cpp's q8_0 over 32), with each
//! group's `128·Σa` — what the unsigned weight bytes add to an integer dot product. [`quantize_rows`]
//! gives the plain row layout (the scheme's reference); the kernels take [`QuantizedTiles`], the same
//! values laid out tile by tile so that the innermost loop reads every row of a tile through one
//! pointer at fixed offsets.

use super::panel_int8::group;
use super::pool;
use std::mem::MaybeUninit;

/// Inputs per vector pass of the AVX2 quantizer.
const PASS: usize = 32;

/// Activation rows quantized per group of [`group`]`(k)` inputs: `x[r][i] ≈ scales[r][g]·codes[r][i]`, and
/// `offsets[r][g] = 128·Σ_{i∈g} codes[r][i]` (what the unsigned weight bytes add to a dot product).
/// Codes round half to even (the CPU's conversion), weights half away from zero (as the row layout).
pub struct QuantizedRows {
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub offsets: Vec<i32>,
}

/// Quantizes rows `[m, k]` (`k` a multiple of 32): [`QuantizedTiles`] of one row each, which is
/// the row layout.
pub fn quantize_rows(x: &[f32], k: usize) -> QuantizedRows {
    assert!(k.is_multiple_of(PASS) && x.len().is_multiple_of(k), "int8 activations: {} values in rows of {k}", x.len());
    let tiles = QuantizedTiles::new(x, k, 1);
    QuantizedRows { codes: tiles.codes, scales: tiles.scales, offsets: tiles.neg_offsets.iter().map(|o| -o).collect() }
}

/// Quantizes `row` group by group (`group` values each, a multiple of 32), each group's codes
/// straight into `codes(g)` (`group` of them) and its scale and offset `128·Σa` handed to `put`; the
/// loop runs inside the detected instruction set's code.
fn quantize_row<'c>(
    row: &[f32],
    group: usize,
    codes: &mut impl FnMut(usize) -> &'c mut [MaybeUninit<i8>],
    put: &mut impl FnMut(usize, f32, i32),
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= 1 {
        // SAFETY: AVX2 was detected (AVX-512 machines included: 16-lane groups measured no faster).
        return unsafe { quantize_row_avx2(row, group, codes, put) };
    }
    for (g, values) in row.chunks_exact(group).enumerate() {
        let (scale, offset) = quantize_group(values, codes(g));
        put(g, scale, offset);
    }
}

/// One group of activations: its codes into `codes`, its scale and offset returned.
fn quantize_group(values: &[f32], codes: &mut [MaybeUninit<i8>]) -> (f32, i32) {
    // Every code is written: the caller marks them initialized afterwards.
    assert_eq!(codes.len(), values.len(), "int8 activations: a group's codes");
    let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0;
    for (c, v) in codes.iter_mut().zip(values) {
        let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        c.write(q);
        sum += q as i32;
    }
    (scale, 128 * sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2<'c>(
    row: &[f32],
    group: usize,
    codes: &mut impl FnMut(usize) -> &'c mut [MaybeUninit<i8>],
    put: &mut impl FnMut(usize, f32, i32),
) {
    for (g, values) in row.chunks_exact(group).enumerate() {
        let (scale, offset) = quantize_group_avx2(values, codes(g));
        put(g, scale, offset);
    }
}

/// [`quantize_group`] 32 values per pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quantize_group_avx2(values: &[f32], codes: &mut [MaybeUninit<i8>]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // Every code is written: the caller marks them initialized afterwards.
    assert_eq!(codes.len(), values.len(), "int8 activations: a group's codes");
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for eight in values.chunks_exact(8) {
        // SAFETY: 8 values.
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(eight.as_ptr()) }));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let scale = max / 127.0;
    let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    // Round half to even (the default rounding mode), then clamp as the scalar path.
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let mut sum = _mm256_setzero_si256();
    for (pass, out) in values.chunks_exact(PASS).zip(codes.chunks_exact_mut(PASS)) {
        // SAFETY (loads and stores): a pass is 4 vectors of 8 values, 32 codes.
        let v: [__m256; 4] = std::array::from_fn(|h| unsafe { _mm256_loadu_ps(pass.as_ptr().add(8 * h)) });
        let q = v.map(|v| _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inv)), lo), hi));
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        // i32 → i16 → i8 packs interleave the 128-bit halves; one permutation puts them back in order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ordered) };
    }
    let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b00_00_00_01)));
    (scale, 128 * sum)
}

/// Activation rows quantized as [`QuantizedRows`], laid out for the tiles: rows `t·per_tile..` form
/// tile t, which holds its codes as `[group][row][group size]` and its scales and negated offsets as
/// `[group][row]`, so that the innermost loop reads every row through one pointer at fixed offsets
/// (and a row's group is quantized straight into its place).
pub(super) struct QuantizedTiles {
    m: usize,
    k: usize,
    per_tile: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    neg_offsets: Vec<i32>,
}

/// One tile of [`QuantizedTiles`].
pub(super) struct TileRows<'a> {
    pub(super) rows: usize,
    pub(super) codes: &'a [i8],
    pub(super) scales: &'a [f32],
    pub(super) neg_offsets: &'a [i32],
}

impl QuantizedTiles {
    /// Quantizes rows `[m, k]` straight into the tiles' layout, in parallel for prompts.
    pub(super) fn new(x: &[f32], k: usize, per_tile: usize) -> Self {
        let (m, size) = (x.len() / k, group(k));
        let groups = k / size;
        // Every value is written below before the lengths are set (no zero-filling first).
        let mut q = QuantizedTiles {
            m,
            k,
            per_tile,
            codes: Vec::with_capacity(x.len()),
            scales: Vec::with_capacity(m * groups),
            neg_offsets: Vec::with_capacity(m * groups),
        };
        let n = m * groups;
        let codes = pool::Disjoint::new(&mut q.codes.spare_capacity_mut()[..x.len()]);
        let scales = pool::Disjoint::new(&mut q.scales.spare_capacity_mut()[..n]);
        let neg = pool::Disjoint::new(&mut q.neg_offsets.spare_capacity_mut()[..n]);
        // Rows per parallel task: a few thousand values, so one decode row stays on the calling thread.
        let per_task = (4096 / k).max(1);
        pool::for_each(m.div_ceil(per_task), &|t| {
            for r in t * per_task..((t + 1) * per_task).min(m) {
                let (t0, i) = (r - r % per_tile, r % per_tile);
                let rows = per_tile.min(m - t0);
                // SAFETY (both closures): row r's codes, scales and offsets (in tile t0) are written
                // by this task alone.
                let mut place = |g: usize| unsafe { codes.part(t0 * k + (g * rows + i) * size, size) };
                quantize_row(&x[r * k..][..k], size, &mut place, &mut |g, scale, offset| {
                    let at = t0 * groups + g * rows + i;
                    unsafe {
                        scales.part(at, 1)[0].write(scale);
                        neg.part(at, 1)[0].write(-offset);
                    }
                });
            }
        });
        // SAFETY: the tasks wrote every row's codes, scales and offsets, and have all finished.
        unsafe {
            q.codes.set_len(x.len());
            q.scales.set_len(m * groups);
            q.neg_offsets.set_len(m * groups);
        }
        q
    }

    /// The tiles, in row order.
    pub(super) fn tiles(&self) -> Vec<TileRows<'_>> {
        let groups = self.k / group(self.k);
        (0..self.m)
            .step_by(self.per_tile)
            .map(|t0| {
                let rows = self.per_tile.min(self.m - t0);
                TileRows {
                    rows,
                    codes: &self.codes[t0 * self.k..][..rows * self.k],
                    scales: &self.scales[t0 * groups..][..rows * groups],
                    neg_offsets: &self.neg_offsets[t0 * groups..][..rows * groups],
                }
            })
            .collect()
    }
}
