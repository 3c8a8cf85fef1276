//! The weighted sum of an int8 cache's value rows, `out_h = Σ_j w_hj·c_j`, as integer dot products.
//! The weights `w_hj` are a head's softmax weights already multiplied by their value rows' scales
//! (so the rows are their codes `c_j`). Each head's weights are quantized to 16-bit integers,
//! `u_j = round(w_j·t)`, with the largest `t` that keeps every `u_j` in an i16 and every sum in an
//! i32 — `t = min(32767/max w, 2³⁰/(127·Σw))`; 2³⁰ rather than 2³¹ leaves room for each weight's
//! rounding up by half a unit —, the sums `Σ_j u_j·c_j` taken exactly, then scaled back,
//! `out = Σ·(1/t)`. A weight is off by at most half a unit, `1/(2t)`: `max w/65534`, or
//! `127·Σw/2³¹` when the weights are so flat that `Σw > 258·max w` (a value code itself is off by up
//! to `max|v|/254`): the weighted values are as exact as the cache they read.
//!
//! The values are stored with each value of two positions side by side
//! ([`super::kv_int8::Stored::Values`]), so 32 bytes widened to i16 are 16 values of two positions:
//! one AVX-512 VNNI `vpdpwssd` per head adds both positions' products into 16 lanes of sums (64
//! multiply-adds an instruction, where an f32 fused multiply-add does 16 and the codes must first
//! be widened to f32); AVX2 `vpmaddwd` does eight lanes. The integers are the same everywhere and
//! so are the f32 operations around them: the same bits on every instruction set
//! ([`int8_weighted_reference`]), alone or in a batch.

use super::int8_attention::on_stack_or_heap;
use super::kv_int8::Stored;

/// Pairs of positions whose codes are asked for ahead of the pair being read (64 positions: inside
/// a decode step the values stream from memory, the step's weights having evicted them).
const AHEAD_PAIRS: usize = 32;

thread_local! {
    /// The quantized weights of a call's heads, kept for the thread's next call.
    static WEIGHTS: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[h] = Σ_j w[h·keys + j]·c_j` for `out` `[heads, d]` over `keys` positions of one KV head's
/// value codes `v` in pairs ([`Stored::Values`]; a last odd position's pair read whole).
pub fn int8_weighted(w: &[f32], keys: usize, v: &[i8], d: usize, out: &mut [f32]) {
    let heads = out.len() / d.max(1);
    let pairs = keys.div_ceil(2);
    let sizes = out.len() == heads * d && w.len() >= heads * keys && v.len() >= pairs * 2 * d;
    assert!(sizes, "int8 weighted values: sizes");
    if keys == 0 {
        return out.fill(0.0);
    }
    WEIGHTS.with_borrow_mut(|u| {
        if u.len() < heads * pairs * 2 {
            u.resize(heads * pairs * 2, 0);
        }
        weighted_quantized(w, keys, v, d, &mut u[..heads * pairs * 2], out)
    })
}

/// [`int8_weighted`] with `u` to quantize the weights into.
fn weighted_quantized(w: &[f32], keys: usize, v: &[i8], d: usize, u: &mut [i16], out: &mut [f32]) {
    let (heads, pairs) = (out.len() / d, keys.div_ceil(2));
    // Each head's weights as i16 (a last odd position's partner weighs 0), and its 1/t.
    let (mut inv_t, mut inv_t_heap) = ([0f32; 16], Vec::new());
    let inv_t = on_stack_or_heap(&mut inv_t, &mut inv_t_heap, heads);
    for (h, (u, inv_t)) in u.chunks_exact_mut(pairs * 2).zip(inv_t.iter_mut()).enumerate() {
        *inv_t = quantize_weights(&w[h * keys..][..keys], u);
    }
    let (u, inv_t) = (&*u, &*inv_t);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(64) && super::int8_attention::vnni() {
        // SAFETY: AVX-512 VNNI was detected; the sizes were checked above.
        return unsafe { weighted_vnni(u, pairs, v, d, inv_t, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(32) && super::simd::level() >= 1 {
        // SAFETY: AVX2 was detected; the sizes were checked above.
        return unsafe { weighted_avx2(u, pairs, v, d, inv_t, out) };
    }
    weighted_portable(u, pairs, v, d, inv_t, out)
}

super::simd::dispatch! {
    /// Weights `w` as `u_j = round(w_j·t)` into `u` (zeros past `w`); returns `1/t` — 0 when every
    /// weight is 0, NaN when one is not finite (so that the output is, as an f32 cache's would be).
    pub fn quantize_weights(w: &[f32], u: &mut [i16]) -> f32 {
        u[w.len()..].fill(0);
        let (max, total) = max_and_sum(w);
        if !total.is_finite() || max <= 0.0 {
            u[..w.len()].fill(0);
            return if total.is_finite() { 0.0 } else { f32::NAN };
        }
        let t = (32767.0 / max).min((1u32 << 30) as f32 / (127.0 * total));
        for (u, &x) in u.iter_mut().zip(w) {
            *u = super::kv_int8::round_half_even((x * t).max(0.0)) as i16;
        }
        1.0 / t
    }
}

/// The largest of `w` (at least 0) and their sum (in 16 lanes, then the lanes in order, then the
/// tail: a fixed order the compiler can vectorize) — NaN if one is NaN.
#[inline(always)]
fn max_and_sum(w: &[f32]) -> (f32, f32) {
    let mut lanes = [0f32; 16];
    let chunks = w.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            lanes[i] += c[i];
        }
    }
    (super::simd::max(w).max(0.0), lanes.iter().sum::<f32>() + tail)
}

/// [`int8_weighted`] by its definition, without vector code: the reference the dispatched kernels
/// must equal bit for bit. Each value's code is found through [`Stored::offset`].
pub fn int8_weighted_reference(w: &[f32], keys: usize, v: &[i8], d: usize, out: &mut [f32]) {
    let mut u = vec![0i16; keys];
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        let inv_t = quantize_weights(&w[h * keys..][..keys], &mut u);
        for (i, o) in out.iter_mut().enumerate() {
            let sum: i32 = (0..keys).map(|j| u[j] as i32 * v[Stored::Values.offset(j, i, d)] as i32).sum();
            *o = sum as f32 * inv_t;
        }
    }
}

/// Pair by pair, every output value's two products added to its sum.
fn weighted_portable(u: &[i16], pairs: usize, v: &[i8], d: usize, inv_t: &[f32], out: &mut [f32]) {
    let mut sums = vec![0i32; d];
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        sums.fill(0);
        for (m, w) in u[h * pairs * 2..][..pairs * 2].chunks_exact(2).enumerate() {
            for (s, c) in sums.iter_mut().zip(v[m * 2 * d..][..2 * d].chunks_exact(2)) {
                *s += w[0] as i32 * c[0] as i32 + w[1] as i32 * c[1] as i32;
            }
        }
        out.iter_mut().zip(&sums).for_each(|(o, &s)| *o = s as f32 * inv_t[h]);
    }
}

/// A head's two weights of pair `m` as one i32, for repeating in every lane: the even position's in
/// the low half, so that lane k of `vpdpwssd`/`vpmaddwd` adds `u_even·c[2k] + u_odd·c[2k + 1]` — the
/// two positions' codes of value k, side by side.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn weight_pair(u: &[i16], pairs: usize, h: usize, m: usize) -> i32 {
    let at = h * pairs * 2 + 2 * m;
    (u[at] as u16 as u32 | (u[at + 1] as u16 as u32) << 16) as i32
}

/// AVX-512 VNNI: four heads at a time (heads past the group's end repeat its first, their sums
/// discarded) and 64 values of each (16 accumulators); per pair, four loads of 32 codes widened to
/// i16 serve the four heads' `vpdpwssd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn weighted_vnni(u: &[i16], pairs: usize, v: &[i8], d: usize, inv_t: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let heads = out.len() / d;
    for h0 in (0..heads).step_by(4) {
        let hb = 4.min(heads - h0);
        let head = |h: usize| h0 + if h < hb { h } else { 0 };
        // Values i0..i0 + 64, a quarter (16 values) a register.
        for i0 in (0..d).step_by(64) {
            let mut acc = [[_mm512_setzero_si512(); 4]; 4];
            for m in 0..pairs {
                // The 128 bytes of these 64 values' codes in the pair AHEAD_PAIRS on (once for the heads).
                if h0 == 0 {
                    for line in (0..128).step_by(64) {
                        let at = (m + AHEAD_PAIRS) * 2 * d + 2 * i0 + line;
                        _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add(at));
                    }
                }
                // SAFETY: pair m holds 2d codes and i0 + 64 ≤ d.
                let codes: [__m512i; 4] = std::array::from_fn(|quarter| unsafe {
                    let at = m * 2 * d + 2 * (i0 + 16 * quarter);
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(v.as_ptr().add(at) as _))
                });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_epi32(weight_pair(u, pairs, head(h), m));
                    for quarter in 0..4 {
                        acc[quarter] = _mm512_dpwssd_epi32(acc[quarter], codes[quarter], w);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate().take(hb) {
                let scale = _mm512_set1_ps(inv_t[h0 + h]);
                for (quarter, &sums) in acc.iter().enumerate() {
                    let values = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), scale);
                    // SAFETY: head h0 + h's values i0 + 16·quarter.. lie inside `out`.
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr().add((h0 + h) * d + i0 + 16 * quarter), values) };
                }
            }
        }
    }
}

/// AVX2: two heads at a time and 32 values of each (eight accumulators); per pair, four loads of 16
/// codes widened to i16 serve both heads' `vpmaddwd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_avx2(u: &[i16], pairs: usize, v: &[i8], d: usize, inv_t: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let heads = out.len() / d;
    for h0 in (0..heads).step_by(2) {
        let hb = 2.min(heads - h0);
        let head = |h: usize| h0 + if h < hb { h } else { 0 };
        // Values i0..i0 + 32, a quarter (8 values) a register.
        for i0 in (0..d).step_by(32) {
            let mut acc = [[_mm256_setzero_si256(); 4]; 2];
            for m in 0..pairs {
                // The 64 bytes of these 32 values' codes in the pair AHEAD_PAIRS on (once for the heads).
                if h0 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add((m + AHEAD_PAIRS) * 2 * d + 2 * i0));
                }
                // SAFETY: pair m holds 2d codes and i0 + 32 ≤ d.
                let codes: [__m256i; 4] = std::array::from_fn(|quarter| unsafe {
                    let at = m * 2 * d + 2 * (i0 + 8 * quarter);
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(v.as_ptr().add(at) as _))
                });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let w = _mm256_set1_epi32(weight_pair(u, pairs, head(h), m));
                    for quarter in 0..4 {
                        acc[quarter] = _mm256_add_epi32(acc[quarter], _mm256_madd_epi16(codes[quarter], w));
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate().take(hb) {
                let scale = _mm256_set1_ps(inv_t[h0 + h]);
                for (quarter, &sums) in acc.iter().enumerate() {
                    let values = _mm256_mul_ps(_mm256_cvtepi32_ps(sums), scale);
                    // SAFETY: head h0 + h's values i0 + 8·quarter.. lie inside `out`.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((h0 + h) * d + i0 + 8 * quarter), values) };
                }
            }
        }
    }
}
