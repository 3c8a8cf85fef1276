//! Attention scores over an int8 KV cache ([`super::kv_int8`]) as integer dot products. Each query
//! head is quantized as a cached row is (`q ≈ s_q·a`, `a ∈ [−127, 127]`), so that
//! `scale·q·k_j ≈ ((a·c_j)·(s_q·scale))·s_j` with `a·c_j` an exact i32. The keys are stored in blocks
//! of 16 positions with four values of each key side by side ([`super::kv_int8::Stored::Keys`]), so a
//! vector of 16 i32 lanes holds the dots of 16 keys: on AVX-512 VNNI one `vpdpbusd` per head and four
//! values of 16 keys (the key codes offset to unsigned bytes, the query's four values repeated in
//! every lane, the query's `128·Σa` subtracted after); on AVX2 `vpmaddubsw`/`vpmaddwd` on eight keys
//! (magnitudes times signed query values, exact: `2·127·127` fits an i16); elsewhere an integer
//! loop. No lane sums to fold; the integers are the same everywhere and so are the f32 operations
//! that follow, so a score has the same bits on every instruction set ([`int8_scores_reference`]),
//! alone or in a batch. The key codes are read once for the query heads of a grouped-query group.

use super::kv_int8::{quantize_row, Stored, KEY_BLOCK};
#[cfg(target_arch = "x86_64")]
use super::simd_attention::Asking;
pub use super::simd_attention::Upcoming;

/// Query heads of one grouped-query group, and their values, quantized on the stack (more on the
/// heap).
const MAX_HEADS: usize = 16;
const MAX_QUERY: usize = 1024;
/// Key rows asked for ahead of the block being read (the codes stream from memory).
const AHEAD: usize = 64;

/// `scores[h·keys + j] = scale·q_h·k_j` for query heads `q` `[heads, d]` over `keys` keys of one KV
/// head's codes `k` in blocks ([`super::kv_int8::Stored::Keys`]; the last block read whole) with
/// scales `k_scales`; the value codes `v` of those positions are asked into L2 as the keys are read,
/// for the weighted sum that follows (AVX-512), and `upcoming` is asked for as the blocks are read
/// (x86-64).
#[allow(clippy::too_many_arguments)]
pub fn int8_scores(
    q: &[f32],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    v: &[i8],
    keys: usize,
    scale: f32,
    scores: &mut [f32],
    upcoming: Upcoming,
) {
    let heads = q.len() / d.max(1);
    let blocks = keys.div_ceil(KEY_BLOCK) * KEY_BLOCK * d;
    let sizes = q.len() == heads * d && d.is_multiple_of(4) && k.len() >= blocks && v.len() >= keys * d;
    assert!(sizes && k_scales.len() >= keys && scores.len() >= heads * keys, "int8 attention scores: sizes");
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
    if vnni() {
        // SAFETY: AVX-512 VNNI was detected; the sizes were checked above.
        return unsafe { scores_vnni(a, d, (k, k_scales), v, keys, (head_scales, offsets), scores, upcoming) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() >= 1 {
        // SAFETY: AVX2 was detected; the sizes were checked above.
        return unsafe { scores_avx2(a, d, (k, k_scales), keys, head_scales, scores, upcoming) };
    }
    scores_portable(a, d, (k, k_scales), keys, head_scales, scores)
}

/// The first `n` values of `stack`, or of `heap` grown to `n` when the stack buffer is too small.
pub(super) fn on_stack_or_heap<'a, T: Copy + Default, const N: usize>(
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
pub(super) fn vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    super::simd::level() == 2
        && *VNNI.get_or_init(|| is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw"))
}

/// [`int8_scores`] by its definition, without vector code: the reference the dispatched kernels
/// must equal bit for bit. Each key's codes are found through [`Stored::offset`].
pub fn int8_scores_reference(
    q: &[f32],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    keys: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let heads = q.len() / d.max(1);
    let (codes, q_scales) = super::kv_int8::quantize_rows(q, d);
    let a = super::kv_int8::as_signed(&codes);
    for h in 0..heads {
        for j in 0..keys {
            let dot: i32 = (0..d).map(|i| a[h * d + i] as i32 * k[Stored::Keys.offset(j, i, d)] as i32).sum();
            scores[h * keys + j] = (dot as f32 * (q_scales[h] * scale)) * k_scales[j];
        }
    }
}

/// Block by block: the 16 dots of each head, four values of 16 keys at a time, then
/// `(dot·head_scale)·key_scale`.
fn scores_portable(
    a: &[i8],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    keys: usize,
    head_scales: &[f32],
    scores: &mut [f32],
) {
    for (h, (a, &hs)) in a.chunks_exact(d).zip(head_scales).enumerate() {
        for j0 in (0..keys).step_by(KEY_BLOCK) {
            let mut dots = [0i32; KEY_BLOCK];
            for (fours, a) in k[j0 * d..][..KEY_BLOCK * d].chunks_exact(4 * KEY_BLOCK).zip(a.chunks_exact(4)) {
                for (dot, c) in dots.iter_mut().zip(fours.chunks_exact(4)) {
                    *dot += a.iter().zip(c).map(|(&x, &y)| x as i32 * y as i32).sum::<i32>();
                }
            }
            let n = KEY_BLOCK.min(keys - j0);
            for (t, s) in scores[h * keys + j0..][..n].iter_mut().enumerate() {
                *s = (dots[t] as f32 * hs) * k_scales[j0 + t];
            }
        }
    }
}

/// Four values of query head `h` (from `d` codes a head) as one i32, for repeating in every lane.
///
/// # Safety
/// `4g + 4 ≤ d` and head `h` lies in `a`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn four_codes(a: &[i8], d: usize, h: usize, g: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned(a.as_ptr().add(h * d + 4 * g) as *const i32) }
}

/// `(dots·head_scale)·key_scales` for the `n ≤ 8` keys of eight lanes at `scores[at..]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn store_eight(dots: std::arch::x86_64::__m256i, hs: f32, key_scales: &[f32], scores: &mut [f32], n: usize) {
    use std::arch::x86_64::*;
    let mut lanes = [1f32; 8];
    lanes[..n].copy_from_slice(&key_scales[..n]);
    let sums =
        _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(hs)), _mm256_loadu_ps(lanes.as_ptr()));
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), sums);
    scores[..n].copy_from_slice(&out[..n]);
}

/// AVX2: each block of 16 keys as two halves of eight, against four heads at a time (eight
/// accumulators): `vpmaddubsw` multiplies the keys' magnitudes `|c|` by the query values carrying
/// the keys' signs (`vpsignb`) into pairs of i16 sums (at most `2·127·127`, exact), `vpmaddwd` adds
/// the pairs into i32 lanes — one per key.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scores_avx2(
    a: &[i8],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    keys: usize,
    head_scales: &[f32],
    scores: &mut [f32],
    upcoming: Upcoming,
) {
    use std::arch::x86_64::*;
    let (heads, ones) = (a.len() / d, _mm256_set1_epi16(1));
    let mut asking = Asking::new(upcoming, keys.div_ceil(KEY_BLOCK));
    for j0 in (0..keys).step_by(KEY_BLOCK) {
        asking.block();
        let block = &k[j0 * d..][..KEY_BLOCK * d];
        let n = KEY_BLOCK.min(keys - j0);
        for h0 in (0..heads).step_by(4) {
            let hb = 4.min(heads - h0);
            // Heads past the group's end repeat its first (their sums are discarded).
            let head = |h: usize| h0 + if h < hb { h } else { 0 };
            let mut acc = [[_mm256_setzero_si256(); 2]; 4];
            for g in 0..d / 4 {
                // SAFETY: 4g + 4 ≤ d, so the block holds these 64 bytes.
                let c: [__m256i; 2] = std::array::from_fn(|half| unsafe {
                    _mm256_loadu_si256(block.as_ptr().add(64 * g + 32 * half) as _)
                });
                let magnitude = c.map(|c| _mm256_sign_epi8(c, c));
                for (h, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: 4g + 4 ≤ d and the head lies in the group.
                    let x = _mm256_set1_epi32(unsafe { four_codes(a, d, head(h), g) });
                    for half in 0..2 {
                        let pairs = _mm256_maddubs_epi16(magnitude[half], _mm256_sign_epi8(x, c[half]));
                        acc[half] = _mm256_add_epi32(acc[half], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate().take(hb) {
                let row = &mut scores[(h0 + h) * keys + j0..];
                for (half, &dots) in acc.iter().enumerate() {
                    let m = n.saturating_sub(8 * half).min(8);
                    if m > 0 {
                        store_eight(dots, head_scales[h0 + h], &k_scales[j0 + 8 * half..], &mut row[8 * half..], m);
                    }
                }
            }
        }
    }
}

/// AVX-512 VNNI: each block of 16 keys against four heads at a time, one `vpdpbusd` per head and
/// four values (the key codes XOR 0x80 are the unsigned bytes `c + 128`, the query's four values the
/// signed operand repeated, so the sums exceed `a·c` by `128·Σa`), even and odd fours in separate
/// accumulators (eight chains in flight); then the offsets subtracted and the f32 scales applied in
/// the portable order, 16 scores a store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_vnni(
    a: &[i8],
    d: usize,
    (k, k_scales): (&[i8], &[f32]),
    v: &[i8],
    keys: usize,
    (head_scales, offsets): (&[f32], &[i32]),
    scores: &mut [f32],
    upcoming: Upcoming,
) {
    use std::arch::x86_64::*;
    let (heads, fours) = (a.len() / d, d / 4);
    let flip = _mm512_set1_epi8(-128);
    let mut asking = Asking::new(upcoming, keys.div_ceil(KEY_BLOCK));
    for j0 in (0..keys).step_by(KEY_BLOCK) {
        asking.block();
        let block = &k[j0 * d..][..KEY_BLOCK * d];
        let n = KEY_BLOCK.min(keys - j0);
        for line in (0..KEY_BLOCK * d).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().wrapping_add((j0 + AHEAD) * d + line));
            _mm_prefetch::<_MM_HINT_T1>(v.as_ptr().wrapping_add(j0 * d + line));
        }
        let mask = ((1u32 << n) - 1) as u16;
        // SAFETY: the masked lanes are keys j0..j0 + n, which have scales (checked sizes).
        let key_scales = unsafe { _mm512_maskz_loadu_ps(mask, k_scales.as_ptr().add(j0)) };
        let load = |g: usize| {
            // SAFETY: 4g + 4 ≤ d, so the block holds these 64 bytes.
            _mm512_xor_si512(unsafe { _mm512_loadu_si512(block.as_ptr().add(64 * g) as _) }, flip)
        };
        for h0 in (0..heads).step_by(4) {
            let hb = 4.min(heads - h0);
            let head = |h: usize| h0 + if h < hb { h } else { 0 };
            let mut acc = [[_mm512_setzero_si512(); 2]; 4];
            for g in (0..fours).step_by(2) {
                let c = [load(g), if g + 1 < fours { load(g + 1) } else { flip }];
                for (h, acc) in acc.iter_mut().enumerate() {
                    for (odd, acc) in acc.iter_mut().enumerate().take(fours - g) {
                        // SAFETY: 4(g + odd) + 4 ≤ d and the head lies in the group.
                        let x = _mm512_set1_epi32(unsafe { four_codes(a, d, head(h), g + odd) });
                        *acc = _mm512_dpbusd_epi32(*acc, c[odd], x);
                    }
                }
            }
            for (h, [even, odd]) in acc.iter().enumerate().take(hb) {
                let dots = _mm512_sub_epi32(_mm512_add_epi32(*even, *odd), _mm512_set1_epi32(offsets[h0 + h]));
                let sums = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(dots), _mm512_set1_ps(head_scales[h0 + h])),
                    key_scales,
                );
                // SAFETY: keys j0..j0 + n of head h0 + h lie inside the scores (checked sizes).
                unsafe { _mm512_mask_storeu_ps(scores.as_mut_ptr().add((h0 + h) * keys + j0), mask, sums) };
            }
        }
    }
}
