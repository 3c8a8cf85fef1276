//! The two loops of one-token attention, vectorized: scores of a group's query heads against key
//! rows, and the weighted sum of value rows. Each result's bits depend only on its own query, key
//! and value rows — not on how many heads or rows share a pass — so decoding gives the same bits
//! alone and in a batch.

use super::simd::{level, LANES};

/// Attention scores of query heads `q` `[heads, d]` against `keys` rows of `k` (row stride `d`):
/// `scores[h·keys + j] = scale·q_h·k_j`. Each dot product runs in 8 lanes over the row, and eight
/// keys' lanes are summed together as a tree of pairwise adds (no per-key horizontal reduction); a
/// score's bits depend only on its query and key row. The heads of a grouped-query attention group
/// share their key rows, so a block of eight rows is read from memory once for all of them.
pub fn attention_scores(q: &[f32], d: usize, k: &[f32], keys: usize, scale: f32, scores: &mut [f32]) {
    let heads = q.len() / d.max(1);
    assert!(q.len() == heads * d && k.len() >= keys * d && scores.len() >= heads * keys, "attention_scores: sizes");
    #[cfg(target_arch = "x86_64")]
    if level() >= 1 && d.is_multiple_of(LANES) {
        // SAFETY: the instruction set was detected; the sizes were checked above.
        return unsafe {
            match level() {
                2 => attention_scores_avx512(q, d, k, keys, scale, scores),
                _ => attention_scores_avx2(q, d, k, keys, scale, scores),
            }
        };
    }
    for (h, q) in q.chunks_exact(d).enumerate() {
        for (j, s) in scores[h * keys..(h + 1) * keys].iter_mut().enumerate() {
            let row = &k[j * d..(j + 1) * d];
            let mut lanes = [0f32; LANES];
            for (x, y) in q.chunks(LANES).zip(row.chunks(LANES)) {
                for (i, (a, b)) in x.iter().zip(y).enumerate() {
                    lanes[i] += a * b;
                }
            }
            let [a, b, c, e, f, g, h, i] = lanes;
            *s = (((a + b) + (c + e)) + ((f + g) + (h + i))) * scale;
        }
    }
}

/// AVX2: two heads at a time (8 accumulators of 16 registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_scores_avx2(q: &[f32], d: usize, k: &[f32], keys: usize, scale: f32, scores: &mut [f32]) {
    unsafe { scores_blocks::<2>(q, d, k, keys, scale, scores) }
}

/// AVX-512 machines: four heads at a time in 256-bit registers (16 accumulators; the extra
/// registers of AVX-512VL), the same lanes and sums as AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
unsafe fn attention_scores_avx512(q: &[f32], d: usize, k: &[f32], keys: usize, scale: f32, scores: &mut [f32]) {
    unsafe { scores_blocks::<4>(q, d, k, keys, scale, scores) }
}

/// Blocks of eight key rows (prefetched two blocks ahead), each against groups of up to `HB`
/// heads, four keys at a time: each loaded key chunk serves `HB` heads, each query chunk four keys.
/// Every (head, key) product is the same 8-lane chain over `d` and the same tree of adds whatever
/// `HB`, so a score's bits depend only on its query and key row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_blocks<const HB: usize>(q: &[f32], d: usize, k: &[f32], keys: usize, scale: f32, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let heads = q.len() / d;
    let zeros = vec![0f32; d];
    for j0 in (0..keys).step_by(8) {
        // Past the last key, rows of zeros (their sums are discarded).
        let rows: [*const f32; 8] =
            std::array::from_fn(|t| if j0 + t < keys { k[(j0 + t) * d..].as_ptr() } else { zeros.as_ptr() });
        // The cache rows stream from memory: ask for the block after next ahead of the hardware.
        for line in (0..8 * d).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().wrapping_add((j0 + 16) * d + line) as *const i8);
        }
        for h0 in (0..heads).step_by(HB) {
            let hb = HB.min(heads - h0);
            for half in (0..2).take_while(|half| j0 + 4 * half < keys) {
                let row4: [*const f32; 4] = std::array::from_fn(|t| rows[4 * half + t]);
                let mut acc = [[_mm256_setzero_ps(); 4]; HB];
                for c in (0..d).step_by(LANES) {
                    // SAFETY: c + 8 ≤ d, every row holds d values, heads past `hb` repeat the
                    // group's first (their sums are discarded).
                    let kc: [__m256; 4] = std::array::from_fn(|t| unsafe { _mm256_loadu_ps(row4[t].add(c)) });
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let head = h0 + if h < hb { h } else { 0 };
                        let x = unsafe { _mm256_loadu_ps(q.as_ptr().add(head * d + c)) };
                        for t in 0..4 {
                            acc[t] = _mm256_fmadd_ps(x, kc[t], acc[t]);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate().take(hb) {
                    // Lanes (0+1)+(2+3) and (4+5)+(6+7) of each key by two rounds of pairwise
                    // adds, then the halves.
                    let u = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
                    let sums = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u));
                    let sums = _mm_mul_ps(sums, _mm_set1_ps(scale));
                    let mut out = [0f32; 4];
                    unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
                    let (from, n) = (j0 + 4 * half, (keys - j0 - 4 * half).min(4));
                    let at = (h0 + h) * keys + from;
                    scores[at..at + n].copy_from_slice(&out[..n]);
                }
            }
        }
    }
}

/// `out_h = Σ_j p[h][j]·v_j` for weights `p` `[heads, keys]` over `keys` rows of `v` (row stride `d`),
/// `out` `[heads, d]`: each output element one chain of fused multiply-adds over j in order (a
/// separate multiply and add without FMA), so its bits do not depend on the vector width, on `d`
/// or on how many heads share the pass. AVX-512 runs up to four heads of a group at once, each
/// value row loaded once for all of them.
pub fn weighted_rows(p: &[f32], keys: usize, v: &[f32], d: usize, out: &mut [f32]) {
    let heads = out.len() / d.max(1);
    assert!(out.len() == heads * d && p.len() >= heads * keys && v.len() >= keys * d, "weighted_rows: sizes");
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY (both): the instruction set was detected; the sizes were checked above.
        2 if d.is_multiple_of(64) => return unsafe { weighted_rows_avx512(p, keys, v, d, out) },
        1 | 2 => return unsafe { weighted_rows_avx2(p, keys, v, d, out) },
        _ => {}
    }
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        out.fill(0.0);
        for (j, &pj) in p[h * keys..(h + 1) * keys].iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *o += pj * x;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_avx512(p: &[f32], keys: usize, v: &[f32], d: usize, out: &mut [f32]) {
    let heads = out.len() / d;
    for h0 in (0..heads).step_by(4) {
        // SAFETY (all): the caller checked the sizes; d is a multiple of 64.
        unsafe {
            match heads - h0 {
                1 => weighted_heads_avx512::<1>(p, keys, v, d, out, h0),
                2 => weighted_heads_avx512::<2>(p, keys, v, d, out, h0),
                3 => weighted_heads_avx512::<3>(p, keys, v, d, out, h0),
                _ => weighted_heads_avx512::<4>(p, keys, v, d, out, h0),
            }
        }
    }
}

/// Heads `h0..h0 + H`, 64 output values (four registers) per head at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_heads_avx512<const H: usize>(
    p: &[f32],
    keys: usize,
    v: &[f32],
    d: usize,
    out: &mut [f32],
    h0: usize,
) {
    use std::arch::x86_64::*;
    for c in (0..d).step_by(64) {
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for j in 0..keys {
            for line in (0..64).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add((j + 8) * d + c + line) as *const i8);
            }
            // SAFETY: c + 64 ≤ d, j < keys, v holds keys rows of d values, p holds the heads' rows.
            let row: [__m512; 4] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(v.as_ptr().add(j * d + c + 16 * i)) });
            for (h, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(unsafe { *p.get_unchecked((h0 + h) * keys + j) });
                for i in 0..4 {
                    acc[i] = _mm512_fmadd_ps(w, row[i], acc[i]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (i, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((h0 + h) * d + c + 16 * i), *a) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_avx2(p: &[f32], keys: usize, v: &[f32], d: usize, out: &mut [f32]) {
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        let p = &p[h * keys..(h + 1) * keys];
        let mut c = 0;
        // SAFETY (all): each pass stays inside the row (c + width ≤ d); the caller checked sizes.
        unsafe {
            while c + 64 <= d {
                weighted_chunk_avx2::<8>(p, v, d, out, c);
                c += 64;
            }
            while c + 8 <= d {
                weighted_chunk_avx2::<1>(p, v, d, out, c);
                c += 8;
            }
        }
        for (e, o) in out.iter_mut().enumerate().skip(c) {
            *o = p.iter().enumerate().fold(0f32, |acc, (j, &pj)| pj.mul_add(v[j * d + e], acc));
        }
    }
}

/// Values `c..c + 8N` of one head, N registers held across the pass over the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_chunk_avx2<const N: usize>(p: &[f32], v: &[f32], d: usize, out: &mut [f32], c: usize) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    for (j, &pj) in p.iter().enumerate() {
        for line in (0..8 * N).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add((j + 8) * d + c + line) as *const i8);
        }
        let w = _mm256_set1_ps(pj);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: c + 8N ≤ d and v holds p.len() rows of d values.
            *a = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(v.as_ptr().add(j * d + c + 8 * i)) }, *a);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * i), *a) };
    }
}
