//! The two loops of one-token attention, vectorized: scores of a group's query heads against key
//! rows, and the weighted sum of value rows. Each result's bits depend only on its own query, key
//! and value rows — not on how many heads or rows share a pass — so decoding gives the same bits
//! alone and in a batch.

use super::simd::{level, LANES};

/// An element of cached keys and values: f32, f16 (half the memory a step streams) or the i8 codes
/// of an int8 cache ([`super::kv_int8`]; a quarter). These kernels widen an element to f32 exactly as
/// it is read and run the f32 arithmetic on it (i8 too, for plain rows of codes); decoding reads an
/// int8 cache, laid out in blocks, with its own integer kernels ([`super::int8_attention`],
/// [`super::int8_values`]), found through [`KvElem::codes`].
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    /// Stored as IEEE half precision.
    const HALF: bool;
    /// Stored as signed bytes.
    const BYTE: bool;
    fn widen(self) -> f32;
    /// The elements as an int8 cache's codes, if they are.
    fn codes(x: &[Self]) -> Option<&[i8]> {
        let _ = x;
        None
    }
}

impl KvElem for f32 {
    const HALF: bool = false;
    const BYTE: bool = false;
    fn widen(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    const HALF: bool = true;
    const BYTE: bool = false;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl KvElem for i8 {
    const HALF: bool = false;
    const BYTE: bool = true;
    fn widen(self) -> f32 {
        self as f32
    }
    fn codes(x: &[Self]) -> Option<&[i8]> {
        Some(x)
    }
}

/// Eight elements at `p` as f32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load8<T: KvElem>(p: *const T) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees eight readable elements.
    unsafe {
        if T::HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        } else if T::BYTE {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        } else {
            _mm256_loadu_ps(p as *const f32)
        }
    }
}

/// Sixteen elements at `p` as f32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load16<T: KvElem>(p: *const T) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees sixteen readable elements.
    unsafe {
        if T::HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else if T::BYTE {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
}

/// The vector level for caches of `T`: f16 is widened with F16C, which a (virtual) machine may hide
/// even with AVX2 or AVX-512; without it the portable loop runs.
#[cfg(target_arch = "x86_64")]
fn level_for<T: KvElem>() -> u8 {
    if T::HALF && !is_x86_feature_detected!("f16c") {
        0
    } else {
        level()
    }
}

/// Elements of one 64-byte cache line.
const fn line<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

/// Memory the calling thread reads next — the next task's keys —, asked into L2 a share a block
/// while these keys are read (by the AVX-512 f32/f16 scores and the int8 scores on AVX-512 and
/// AVX2). Inside a decode step each task's keys stream from memory (the step's weights evicted
/// them), and a stream that starts cold waits for its first lines: asked for during the task
/// before, they are on their way (16 rows × 256 positions with evicted caches, `bench attention
/// --cold`: int8 −5 %, f32 −3 %, f16 −2 %). Only a hint: the memory is never read through it.
#[derive(Clone, Copy)]
pub struct Upcoming {
    pub from: *const u8,
    pub bytes: usize,
}

impl Upcoming {
    pub const NONE: Upcoming = Upcoming { from: std::ptr::null(), bytes: 0 };
}

/// An [`Upcoming`] spread over the `blocks` blocks of a pass: each block asks for the next share.
#[cfg(target_arch = "x86_64")]
pub(super) struct Asking {
    from: *const u8,
    lines: usize,
    asked: usize,
    per_block: usize,
}

#[cfg(target_arch = "x86_64")]
impl Asking {
    pub(super) fn new(upcoming: Upcoming, blocks: usize) -> Self {
        let lines = upcoming.bytes / 64;
        Asking { from: upcoming.from, lines, asked: 0, per_block: lines.div_ceil(blocks.max(1)) }
    }

    #[inline(always)]
    pub(super) fn block(&mut self) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let end = (self.asked + self.per_block).min(self.lines);
        while self.asked < end {
            // A prefetch is only a hint: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.from.wrapping_add(self.asked * 64) as *const i8) };
            self.asked += 1;
        }
    }
}

/// Attention scores of query heads `q` `[heads, d]` against `keys` rows of `k` (row stride `d`):
/// `scores[h·keys + j] = scale·q_h·k_j`. Each dot product runs in vector lanes over the row (16 on
/// AVX-512 when `d` is a multiple of 16, else 8 as on AVX2 and here), and the lanes of several keys
/// are summed together by a fixed tree (no per-key horizontal reduction); a score's bits depend only
/// on its query and key row. The heads of a grouped-query attention group share their key rows, so a
/// block of rows is read from memory once for all of them.
pub fn attention_scores<T: KvElem>(q: &[f32], d: usize, k: &[T], keys: usize, scale: f32, scores: &mut [f32]) {
    scores_prefetching(q, d, (k, None), keys, scale, scores, Upcoming::NONE);
}

/// [`attention_scores`] that also asks for the value rows `v` (same stride, into L2) as it reads the
/// key rows, so that the weighted sum that follows finds them in cache, and `upcoming` as it goes
/// (on AVX-512 machines; the scores are the same bits).
pub fn attention_scores_fetching_values<T: KvElem>(
    q: &[f32],
    d: usize,
    (k, v): (&[T], &[T]),
    keys: usize,
    scale: f32,
    scores: &mut [f32],
    upcoming: Upcoming,
) {
    scores_prefetching(q, d, (k, Some(v)), keys, scale, scores, upcoming);
}

/// [`attention_scores`], prefetching `values` if given, and `upcoming`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn scores_prefetching<T: KvElem>(
    q: &[f32],
    d: usize,
    (k, values): (&[T], Option<&[T]>),
    keys: usize,
    scale: f32,
    scores: &mut [f32],
    upcoming: Upcoming,
) {
    let heads = q.len() / d.max(1);
    let values_fit = values.is_none_or(|v| v.len() >= keys * d);
    let sizes = q.len() == heads * d && k.len() >= keys * d && values_fit && scores.len() >= heads * keys;
    assert!(sizes, "attention_scores: sizes");
    #[cfg(target_arch = "x86_64")]
    match level_for::<T>() {
        // SAFETY (both): the instruction set was detected; the sizes were checked above.
        2 if d.is_multiple_of(16) => {
            return unsafe { attention_scores_avx512(q, d, k, keys, scale, scores, (values, upcoming)) }
        }
        1 | 2 if d.is_multiple_of(LANES) => return unsafe { attention_scores_avx2(q, d, k, keys, scale, scores) },
        _ => {}
    }
    for (h, q) in q.chunks_exact(d).enumerate() {
        for (j, s) in scores[h * keys..(h + 1) * keys].iter_mut().enumerate() {
            let row = &k[j * d..(j + 1) * d];
            let mut lanes = [0f32; LANES];
            for (x, y) in q.chunks(LANES).zip(row.chunks(LANES)) {
                for (i, (a, b)) in x.iter().zip(y).enumerate() {
                    lanes[i] += a * b.widen();
                }
            }
            let [a, b, c, e, f, g, h, i] = lanes;
            *s = (((a + b) + (c + e)) + ((f + g) + (h + i))) * scale;
        }
    }
}

/// AVX-512: blocks of four heads × four keys in 16 accumulators of 16 lanes, each (head, key) one
/// chain of fused multiply-adds over its row in steps of 16 values; the 16 accumulators are then
/// folded into one register of 16 scores by a fixed tree of shuffles and adds (two lanes at a
/// time, as a 4 × 4 transpose of 128-bit blocks). Heads past the group's end repeat its first and
/// keys past the last read a row of zeros (their sums are discarded), so a score's bits depend
/// only on its query and key row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn attention_scores_avx512<T: KvElem>(
    q: &[f32],
    d: usize,
    k: &[T],
    keys: usize,
    scale: f32,
    scores: &mut [f32],
    (values, upcoming): (Option<&[T]>, Upcoming),
) {
    use std::arch::x86_64::*;
    let heads = q.len() / d;
    let zeros = vec![T::default(); d];
    let mut asking = Asking::new(upcoming, keys.div_ceil(4));
    for j0 in (0..keys).step_by(4) {
        asking.block();
        let rows: [*const T; 4] =
            std::array::from_fn(|t| if j0 + t < keys { k[(j0 + t) * d..].as_ptr() } else { zeros.as_ptr() });
        // The cache rows stream from memory: ask for them 16 rows ahead of the hardware.
        for line in (0..4 * d).step_by(line::<T>()) {
            _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().wrapping_add((j0 + 16) * d + line) as *const i8);
            if let Some(v) = values {
                _mm_prefetch::<_MM_HINT_T1>(v.as_ptr().wrapping_add(j0 * d + line) as *const i8);
            }
        }
        let n = (keys - j0).min(4);
        for h0 in (0..heads).step_by(4) {
            let hb = 4.min(heads - h0);
            let qs: [*const f32; 4] = std::array::from_fn(|h| q[(h0 + if h < hb { h } else { 0 }) * d..].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            for c in (0..d).step_by(16) {
                // SAFETY: c + 16 ≤ d and every row holds d values.
                let kc: [__m512; 4] = std::array::from_fn(|t| unsafe { load16(rows[t].add(c)) });
                for (h, acc) in acc.iter_mut().enumerate() {
                    let x = unsafe { _mm512_loadu_ps(qs[h].add(c)) };
                    for t in 0..4 {
                        acc[t] = _mm512_fmadd_ps(x, kc[t], acc[t]);
                    }
                }
            }
            let sums = _mm512_mul_ps(fold_sixteen(&acc, |x, y| _mm512_add_ps(x, y)), _mm512_set1_ps(scale));
            // SAFETY: heads h0..h0 + hb and keys j0..j0 + n lie inside the scores (checked sizes).
            unsafe { store_sixteen(scores, keys, (h0, hb), (j0, n), sums) };
        }
    }
}

/// The lane sums of `acc[h][t]` as lane `4h + t` of one register: pairs of lanes, then pairs of
/// pairs within each 128-bit block (per head), then the four blocks (a 4 × 4 block transpose). The
/// lanes move as bits; `add` sums them (f32 adds, or integer adds on i32 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn fold_sixteen(
    acc: &[[std::arch::x86_64::__m512; 4]; 4],
    add: impl Fn(std::arch::x86_64::__m512, std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Per head: block lanes [t0, t1, t2, t3] each summing that key's four lanes of the block.
    let per_head = acc.map(|[a, b, c, e]| {
        let ab = add(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let ce = add(_mm512_unpacklo_ps(c, e), _mm512_unpackhi_ps(c, e));
        add(_mm512_shuffle_ps::<0b01_00_01_00>(ab, ce), _mm512_shuffle_ps::<0b11_10_11_10>(ab, ce))
    });
    // Blocks: (0 + 2) and (1 + 3) of heads 0, 1 (and 2, 3), then (0 + 1) of each head.
    let pair = |x, y| add(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y));
    let (s01, s23) = (pair(per_head[0], per_head[1]), pair(per_head[2], per_head[3]));
    add(_mm512_shuffle_f32x4::<0b10_00_10_00>(s01, s23), _mm512_shuffle_f32x4::<0b11_01_11_01>(s01, s23))
}

/// Writes lanes `4h..4h + n` of `sums` (head h0 + h, keys j0..j0 + n, as [`fold_sixteen`] lays them
/// out) to `scores[(h0 + h)·keys + j0..][..n]` for the `hb` heads: a masked store whose base lies 4h
/// lanes before (those lanes are not written).
///
/// # Safety
/// Heads `h0..h0 + hb` and keys `j0..j0 + n` (n ≤ 4, hb ≤ 4) must lie inside `scores` (rows of `keys`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_sixteen(
    scores: &mut [f32],
    keys: usize,
    (h0, hb): (usize, usize),
    (j0, n): (usize, usize),
    sums: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    for h in 0..hb {
        let at = (h0 + h) * keys + j0;
        let base = scores.as_mut_ptr().wrapping_add(at).wrapping_sub(4 * h);
        // SAFETY: the written lanes are inside the head's row of scores (the caller's contract).
        unsafe { _mm512_mask_storeu_ps(base, ((1u16 << n) - 1) << (4 * h), sums) };
    }
}

/// AVX2: blocks of eight key rows (prefetched two blocks ahead), each against pairs of heads, four
/// keys at a time (8 accumulators of the 16 registers): each loaded key chunk serves two heads, each
/// query chunk four keys. Every (head, key) product is the same 8-lane chain over `d` and the same
/// tree of adds, so a score's bits depend only on its query and key row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attention_scores_avx2<T: KvElem>(q: &[f32], d: usize, k: &[T], keys: usize, scale: f32, scores: &mut [f32]) {
    const HB: usize = 2;
    use std::arch::x86_64::*;
    let heads = q.len() / d;
    let zeros = vec![T::default(); d];
    for j0 in (0..keys).step_by(8) {
        // Past the last key, rows of zeros (their sums are discarded).
        let rows: [*const T; 8] =
            std::array::from_fn(|t| if j0 + t < keys { k[(j0 + t) * d..].as_ptr() } else { zeros.as_ptr() });
        // The cache rows stream from memory: ask for the block after next ahead of the hardware.
        for line in (0..8 * d).step_by(line::<T>()) {
            _mm_prefetch::<_MM_HINT_T0>(k.as_ptr().wrapping_add((j0 + 16) * d + line) as *const i8);
        }
        for h0 in (0..heads).step_by(HB) {
            let hb = HB.min(heads - h0);
            for half in (0..2).take_while(|half| j0 + 4 * half < keys) {
                let row4: [*const T; 4] = std::array::from_fn(|t| rows[4 * half + t]);
                let mut acc = [[_mm256_setzero_ps(); 4]; HB];
                for c in (0..d).step_by(LANES) {
                    // SAFETY: c + 8 ≤ d, every row holds d values, heads past `hb` repeat the
                    // group's first (their sums are discarded).
                    let kc: [__m256; 4] = std::array::from_fn(|t| unsafe { load8(row4[t].add(c)) });
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
                    let (from, n) = (j0 + 4 * half, (keys - j0 - 4 * half).min(4));
                    let at = (h0 + h) * keys + from;
                    if n == 4 {
                        // SAFETY: at + 4 ≤ (h0 + h + 1)·keys ≤ scores.len() (checked by the caller).
                        unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(at), sums) };
                    } else {
                        let mut out = [0f32; 4];
                        unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
                        for (s, &x) in scores[at..at + n].iter_mut().zip(&out) {
                            *s = x;
                        }
                    }
                }
            }
        }
    }
}

/// `out_h = Σ_j p[h][j]·v_j` for weights `p` `[heads, keys]` over `keys` rows of `v` (row stride `d`),
/// `out` `[heads, d]`: each output element one chain of fused multiply-adds over j in order (a
/// separate multiply and add without FMA), so its bits do not depend on the vector width, on `d`
/// or on how many heads share the pass. AVX-512 runs up to four heads of a group at once, AVX2 two, each
/// value row loaded once for all of them.
pub fn weighted_rows<T: KvElem>(p: &[f32], keys: usize, v: &[T], d: usize, out: &mut [f32]) {
    let heads = out.len() / d.max(1);
    assert!(out.len() == heads * d && p.len() >= heads * keys && v.len() >= keys * d, "weighted_rows: sizes");
    #[cfg(target_arch = "x86_64")]
    match level_for::<T>() {
        // SAFETY (both): the instruction set was detected; the sizes were checked above.
        2 if d.is_multiple_of(64) => return unsafe { weighted_rows_avx512(p, keys, v, d, out) },
        1 | 2 => return unsafe { weighted_rows_avx2(p, keys, v, d, out) },
        _ => {}
    }
    for (h, out) in out.chunks_exact_mut(d).enumerate() {
        out.fill(0.0);
        for (j, &pj) in p[h * keys..(h + 1) * keys].iter().enumerate() {
            for (o, &x) in out.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *o += pj * x.widen();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn weighted_rows_avx512<T: KvElem>(p: &[f32], keys: usize, v: &[T], d: usize, out: &mut [f32]) {
    let heads = out.len() / d;
    for h0 in (0..heads).step_by(4) {
        // SAFETY (all): the caller checked the sizes; d is a multiple of 64.
        unsafe {
            match heads - h0 {
                1 => weighted_heads_avx512::<T, 1>(p, keys, v, d, out, h0),
                2 => weighted_heads_avx512::<T, 2>(p, keys, v, d, out, h0),
                3 => weighted_heads_avx512::<T, 3>(p, keys, v, d, out, h0),
                _ => weighted_heads_avx512::<T, 4>(p, keys, v, d, out, h0),
            }
        }
    }
}

/// Heads `h0..h0 + H`, 64 output values (four registers) per head at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn weighted_heads_avx512<T: KvElem, const H: usize>(
    p: &[f32],
    keys: usize,
    v: &[T],
    d: usize,
    out: &mut [f32],
    h0: usize,
) {
    use std::arch::x86_64::*;
    for c in (0..d).step_by(64) {
        let mut acc = [[_mm512_setzero_ps(); 4]; H];
        for j in 0..keys {
            for line in (0..64).step_by(line::<T>()) {
                // Rows of bytes go by faster: asked for further ahead.
                let ahead = if T::BYTE { 32 } else { 8 };
                _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add((j + ahead) * d + c + line) as *const i8);
            }
            // SAFETY: c + 64 ≤ d, j < keys, v holds keys rows of d values, p holds the heads' rows.
            let row: [__m512; 4] = std::array::from_fn(|i| unsafe { load16(v.as_ptr().add(j * d + c + 16 * i)) });
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

/// AVX2: pairs of heads, 32 output values (four registers) per head at a time, each value row's
/// chunk loaded once for both heads; a last odd head and a tail of `d` past the last 32 run alone.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_rows_avx2<T: KvElem>(p: &[f32], keys: usize, v: &[T], d: usize, out: &mut [f32]) {
    let heads = out.len() / d;
    let wide = d - d % 32;
    for h0 in (0..heads).step_by(2) {
        for c in (0..wide).step_by(32) {
            // SAFETY (both): c + 32 ≤ d; the caller checked the sizes.
            unsafe {
                match heads - h0 {
                    1 => weighted_chunk_avx2::<T, 1, 4>(p, keys, v, d, out, h0, c),
                    _ => weighted_chunk_avx2::<T, 2, 4>(p, keys, v, d, out, h0, c),
                }
            }
        }
        for h in h0..heads.min(h0 + 2) {
            let mut c = wide;
            while c + 8 <= d {
                // SAFETY: c + 8 ≤ d.
                unsafe { weighted_chunk_avx2::<T, 1, 1>(p, keys, v, d, out, h, c) };
                c += 8;
            }
            for (e, o) in out[h * d..(h + 1) * d].iter_mut().enumerate().skip(c) {
                let p = &p[h * keys..(h + 1) * keys];
                *o = p.iter().enumerate().fold(0f32, |acc, (j, &pj)| pj.mul_add(v[j * d + e].widen(), acc));
            }
        }
    }
}

/// Values `c..c + 8N` of heads `h0..h0 + H`, H·N registers held across the pass over the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_chunk_avx2<T: KvElem, const H: usize, const N: usize>(
    p: &[f32],
    keys: usize,
    v: &[T],
    d: usize,
    out: &mut [f32],
    h0: usize,
    c: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); N]; H];
    for j in 0..keys {
        for line in (0..8 * N).step_by(line::<T>()) {
            _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().wrapping_add((j + 8) * d + c + line) as *const i8);
        }
        // SAFETY: c + 8N ≤ d, j < keys, v holds keys rows of d values, p holds the heads' rows.
        let row: [__m256; N] = std::array::from_fn(|i| unsafe { load8(v.as_ptr().add(j * d + c + 8 * i)) });
        for (h, acc) in acc.iter_mut().enumerate() {
            let w = _mm256_set1_ps(unsafe { *p.get_unchecked((h0 + h) * keys + j) });
            for i in 0..N {
                acc[i] = _mm256_fmadd_ps(w, row[i], acc[i]);
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        for (i, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((h0 + h) * d + c + 8 * i), *a) };
        }
    }
}
