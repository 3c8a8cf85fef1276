//! Attention scores over an int8 KV cache ([`super::kv_int8`]) as integer dot products. Each query
//! head is quantized as a cached row is (`q ≈ s_q·a`, `a ∈ [−127, 127]`), so that
//! `scale·q·k_j ≈ ((a·c_j)·(s_q·scale))·s_j` with `a·c_j` an exact i32: on AVX-512 VNNI one
//! `vpdpbusd` per 64 inputs of a key (its codes offset to unsigned bytes, the query's `128·Σa`
//! subtracted after), elsewhere an integer loop the compiler vectorizes. The integers are the same
//! everywhere and so are the f32 operations that follow, so a score has the same bits on every
//! instruction set ([`int8_scores_reference`]), alone or in a batch. The key codes are read once
//! for the query heads of a grouped-query group; an f16 cache's kernels spend as much on widening
//! each key to f32 as on multiplying it.

use super::kv_int8::quantize_row;
#[cfg(target_arch = "x86_64")]
use super::simd_attention::{fold_sixteen, store_sixteen};

/// Query heads of one grouped-query group, and their values, quantized on the stack (more on the
/// heap).
const MAX_HEADS: usize = 16;
const MAX_QUERY: usize = 1024;
/// Key rows asked for ahead of the one being read (the codes stream from memory; at a few cycles
/// per key the next rows must be requested well before).
const AHEAD: usize = 64;

/// `scores[h·keys + j] = scale·q_h·k_j` for query heads `q` `[heads, d]` over `keys` rows of key
/// codes `k` (row stride `d`) with scales `k_scales`; the value rows `v` (same stride) are asked into
/// L2 as the keys are read, for the weighted sum that follows (AVX-512).
pub fn int8_scores(
    q: &[f32],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    v: &[i8],
    keys: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let heads = q.len() / d.max(1);
    let sizes = q.len() == heads * d && k.len() >= keys * d && v.len() >= keys * d && k_scales.len() >= keys;
    assert!(sizes && scores.len() >= heads * keys, "int8 attention scores: sizes");
    // The query heads quantized (a grouped-query group's few heads, on the stack): codes, and per
    // head `s_q·scale` and `128·Σa`.
    let (mut codes, mut head_scales, mut offsets) = ([0u8; MAX_QUERY], [0f32; MAX_HEADS], [0i32; MAX_HEADS]);
    let (mut codes_heap, mut head_scales_heap, mut offsets_heap) = (Vec::new(), Vec::new(), Vec::new());
    let codes = on_stack_or_heap(&mut codes, &mut codes_heap, q.len());
    let head_scales = on_stack_or_heap(&mut head_scales, &mut head_scales_heap, heads);
    let offsets = on_stack_or_heap(&mut offsets, &mut offsets_heap, heads);
    for (h, (q, c)) in q.chunks_exact(d).zip(codes.chunks_exact_mut(d)).enumerate() {
        head_scales[h] = quantize_row(q, c) * scale;
        offsets[h] = 128 * super::kv_int8::as_signed(c).iter().map(|&x| x as i32).sum::<i32>();
    }
    let (a, head_scales, offsets) = (super::kv_int8::as_signed(codes), &*head_scales, &*offsets);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(64) && vnni() {
        // SAFETY: AVX-512 VNNI was detected; the sizes were checked above.
        return unsafe { scores_vnni(a, d, (k, k_scales), v, keys, (head_scales, offsets), scores) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= 1 {
        // SAFETY: AVX2 was detected.
        return unsafe { scores_avx2(a, d, (k, k_scales), keys, head_scales, scores) };
    }
    scores_portable(a, d, (k, k_scales), keys, head_scales, scores)
}

/// The first `n` values of `stack`, or of `heap` grown to `n` when the stack buffer is too small.
fn on_stack_or_heap<'a, T: Copy + Default, const N: usize>(
    stack: &'a mut [T; N],
    heap: &'a mut Vec<T>,
    n: usize,
) -> &'a mut [T] {
    if n <= N {
        &mut stack[..n]
    } else {
        heap.resize(n, T::default());
        heap
    }
}

/// Whether the CPU has AVX-512 VNNI (and the AVX-512 level is allowed).
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    super::simd::level() == 2
        && *VNNI.get_or_init(|| is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw"))
}

/// The integer dot product of query codes `a` and key codes `c`.
#[inline(always)]
fn dot(a: &[i8], c: &[i8]) -> i32 {
    a.iter().zip(c).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// [`int8_scores`] by its definition, without vector code: the reference the dispatched kernels
/// must equal bit for bit.
pub fn int8_scores_reference(q: &[f32], d: usize, k: (&[i8], &[f32]), keys: usize, scale: f32, scores: &mut [f32]) {
    let heads = q.len() / d.max(1);
    let (codes, q_scales) = super::kv_int8::quantize_rows(q, d);
    let head_scales: Vec<f32> = q_scales.iter().map(|s| s * scale).collect();
    scores_portable(super::kv_int8::as_signed(&codes), d, k, keys, &head_scales, &mut scores[..heads * keys]);
}

/// Every (head, key) score by [`dot`], then `(dot·head_scale)·key_scale`.
#[inline(always)]
fn scores_portable(
    a: &[i8],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    keys: usize,
    head_scales: &[f32],
    scores: &mut [f32],
) {
    for (h, (a, &hs)) in a.chunks_exact(d).zip(head_scales).enumerate() {
        for (j, s) in scores[h * keys..(h + 1) * keys].iter_mut().enumerate() {
            *s = (dot(a, &k[j * d..][..d]) as f32 * hs) * k_scales[j];
        }
    }
}

/// [`scores_portable`] compiled for AVX2 (the integer dot vectorizes to `vpmaddwd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2(a: &[i8], d: usize, k: (&[i8], &[f32]), keys: usize, head_scales: &[f32], scores: &mut [f32]) {
    scores_portable(a, d, k, keys, head_scales, scores)
}

/// AVX-512 VNNI: blocks of four keys × four heads in 16 accumulators, one `vpdpbusd` per (head, key)
/// and 64 inputs (the key's codes XOR 0x80 are its unsigned bytes `c + 128`, the query's the signed
/// operand, so the sums exceed `a·c` by `128·Σa`); the accumulators are folded into one register of
/// 16 sums as the f32 kernels fold theirs (with integer adds), the offsets subtracted, then the f32
/// scales applied in the portable order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_vnni(
    a: &[i8],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    v: &[i8],
    keys: usize,
    (head_scales, offsets): (&[f32], &[i32]),
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let heads = a.len() / d;
    let flip = _mm512_set1_epi8(-128);
    for h0 in (0..heads).step_by(4) {
        let hb = 4.min(heads - h0);
        // Heads past the group's end repeat its first (their sums are discarded). Lanes 4h..4h + 3
        // carry head h's offset and scale.
        let head = |h: usize| h0 + if h < hb { h } else { 0 };
        let lanes = |f: &dyn Fn(usize) -> i32| {
            let [w, x, y, z] = [f(0), f(1), f(2), f(3)];
            _mm512_setr_epi32(w, w, w, w, x, x, x, x, y, y, y, y, z, z, z, z)
        };
        let offset = lanes(&|h| offsets[head(h)]);
        let head_scale = _mm512_castsi512_ps(lanes(&|h| head_scales[head(h)].to_bits() as i32));
        for j0 in (0..keys).step_by(4) {
            let n = (keys - j0).min(4);
            // Past the last key, the last key again (its sums are discarded).
            let rows: [*const i8; 4] = std::array::from_fn(|t| k[(j0 + t.min(n - 1)) * d..].as_ptr());
            if h0 == 0 {
                for line in (0..4 * d).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().wrapping_add((j0 + AHEAD) * d + line));
                    _mm_prefetch::<_MM_HINT_T1>(v.as_ptr().wrapping_add(j0 * d + line));
                }
            }
            // Lane 4h + t: key j0 + t's scale (1 past the last key).
            let key_scales = if n == 4 {
                // SAFETY: keys j0..j0 + 4 have scales (checked sizes).
                _mm512_broadcast_f32x4(unsafe { _mm_loadu_ps(k_scales.as_ptr().add(j0)) })
            } else {
                let mut padded = [1f32; 4];
                padded[..n].copy_from_slice(&k_scales[j0..j0 + n]);
                _mm512_broadcast_f32x4(_mm_loadu_ps(padded.as_ptr()))
            };
            let mut acc = [[_mm512_setzero_si512(); 4]; 4];
            for c in (0..d).step_by(64) {
                // SAFETY: c + 64 ≤ d and every row holds d codes.
                let kc: [__m512i; 4] =
                    std::array::from_fn(|t| _mm512_xor_si512(unsafe { _mm512_loadu_si512(rows[t].add(c) as _) }, flip));
                for (h, acc) in acc.iter_mut().enumerate() {
                    let x = unsafe { _mm512_loadu_si512(a.as_ptr().add(head(h) * d + c) as _) };
                    for t in 0..4 {
                        acc[t] = _mm512_dpbusd_epi32(acc[t], kc[t], x);
                    }
                }
            }
            // The integer sums folded as the f32 kernels fold theirs, with integer adds.
            let as_lanes = acc.map(|acc| acc.map(|a| _mm512_castsi512_ps(a)));
            let add = |x: __m512, y: __m512| {
                _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(x), _mm512_castps_si512(y)))
            };
            let dots = _mm512_sub_epi32(_mm512_castps_si512(fold_sixteen(&as_lanes, add)), offset);
            let sums = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dots), head_scale), key_scales);
            // SAFETY: heads h0..h0 + hb and keys j0..j0 + n lie inside the scores (checked sizes).
            unsafe { store_sixteen(scores, keys, (h0, hb), (j0, n), sums) };
        }
    }
}
