//! The int8 tiles: a few activation rows ([`super::int8_rows`]'s tile layout) against one or two
//! int8 panels ([`super::panel_int8`]), on AVX-512 VNNI (`vpdpbusd`), AVX2 (`vpmaddubsw`) or portable
//! code — the same integers and the same f32 operations on each, so every instruction set gives the
//! same bits. A tile keeps its sums in registers: per group of inputs, an i32 sum per row and panel,
//! scaled into an f32 sum when the group ends; and it prefetches the weights its thread reads next
//! while it multiplies ([`Prefetch`]).

use super::int8_rows::TileRows;
use super::panel::WIDTH;
#[cfg(target_arch = "x86_64")]
use super::panel_int8::CHUNK;
use super::panel_int8::{block_bytes, code_at, group, Isa, NARROW, WIDE};

/// A tile's rows against one int8 panel, or two adjacent ones on AVX-512 (`w` holding both): row r's
/// 16 products with panel q go to `out + r·row_stride + 16q`, prefetching as `prefetch` says.
///
/// # Safety
/// `out` must be valid for those writes, and no other thread may access them meanwhile.
pub(super) unsafe fn tile(
    isa: Isa,
    x: &TileRows<'_>,
    (w, prefetch): (&[u8], Prefetch),
    k: usize,
    out: *mut f32,
    row_stride: usize,
) {
    let (group, block) = (group(k), block_bytes(group(k)));
    let groups = k / group;
    let rows = x.rows;
    let pair = w.len() == 2 * groups * block;
    assert!(
        (1..=isa.rows()).contains(&rows)
            && x.codes.len() == rows * k
            && x.scales.len() == rows * groups
            && x.neg_offsets.len() == rows * groups
            && (w.len() == groups * block || pair && isa == Isa::Vnni512),
        "int8 panel tile: bad sizes"
    );
    macro_rules! rows {
        ($f:ident<$g:ident>, $($r:literal)*) => {
            match rows { $($r => $f::<$r, $g>(x, (w, prefetch), k, out, row_stride),)* _ => unreachable!("rows ≤ tile rows") }
        };
        ($f:ident<$g:ident, $p:literal>, $($r:literal)*) => {
            match rows { $($r => $f::<$r, $p, $g>(x, (w, prefetch), k, out, row_stride),)* _ => unreachable!("rows ≤ tile rows") }
        };
    }
    macro_rules! isas {
        ($g:ident) => {
            match isa {
                Isa::Amx => unreachable!("the matrix unit takes whole panels (see `product`)"),
                #[cfg(target_arch = "x86_64")]
                Isa::Vnni512 if pair => rows!(tile_vnni512<$g, 2>, 1 2 3 4 5 6),
                #[cfg(target_arch = "x86_64")]
                Isa::Vnni512 => rows!(tile_vnni512<$g, 1>, 1 2 3 4 5 6),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => rows!(tile_avx2<$g>, 1 2 3 4),
                _ => rows!(tile_portable<$g>, 1 2 3 4),
            }
        };
    }
    // SAFETY: the instruction set was detected; the sizes were checked above; `out` is the caller's.
    unsafe {
        if group == WIDE {
            isas!(WIDE)
        } else {
            isas!(NARROW)
        }
    }
}

/// Chunks a tile multiplies between two steps of its [`Spread`] prefetch: its bookkeeping between
/// every chunk's products cost more than it hid (AVX-512, in process: 16-row int8 decode steps 3–8 %
/// slower, one-row steps 15–19 %).
const SPREAD: usize = 4;

/// What a tile prefetches while it multiplies (only the x86-64 kernels prefetch).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) enum Prefetch {
    /// Its weights this many bytes past each block, at the block's start (a stream read first here).
    Ahead(usize),
    /// `lines` 64-byte lines from `from` (weights the thread reads next), spread over the tile's work.
    Spread { from: *const u8, lines: usize },
}

/// A [`Prefetch::Spread`] in step with a tile's progress: at the start of its chunk `c` of `chunks`,
/// the first `lines · (c + 1) / chunks` lines are requested — a few at a time between the products,
/// where a burst would stall them.
#[cfg(target_arch = "x86_64")]
struct Spread {
    from: *const u8,
    lines: usize,
    requested: usize,
    /// Lines per chunk, in 1/65,536ths.
    step: u64,
}

#[cfg(target_arch = "x86_64")]
impl Spread {
    fn new(prefetch: Prefetch, chunks: usize) -> Self {
        match prefetch {
            Prefetch::Spread { from, lines } => {
                Spread { from, lines, requested: 0, step: ((lines as u64) << 16).div_ceil(chunks.max(1) as u64) }
            }
            Prefetch::Ahead(_) => Spread { from: std::ptr::null(), lines: 0, requested: 0, step: 0 },
        }
    }

    #[inline(always)]
    fn advance(&mut self, chunk: usize) {
        let due = ((((chunk + 1) as u64 * self.step) >> 16) as usize).min(self.lines);
        while self.requested < due {
            // A prefetch is only a hint: it never faults, whatever the address.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.from.wrapping_add(self.requested * 64) as *const i8)
            };
            self.requested += 1;
        }
    }
}

/// Row `r`'s 4 activation codes of chunk `c` in group `g` (of `G` inputs) of an `R`-row tile, as one
/// 32-bit lane (unchecked: this is the innermost loop's load).
///
/// # Safety
/// `R` must be the tile's rows, and `r`, `g` and `c` must lie inside the tile that [`tile`] checked.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lane<const R: usize, const G: usize>(x: &TileRows<'_>, r: usize, g: usize, c: usize) -> i32 {
    unsafe { (x.codes.as_ptr().add((g * R + r) * G + c * CHUNK) as *const i32).read_unaligned() }
}

/// Row `r`'s scale and negated offset of group `g` (unchecked, as [`lane`]).
///
/// # Safety
/// As [`lane`].
#[inline(always)]
unsafe fn group_of<const R: usize>(x: &TileRows<'_>, r: usize, g: usize) -> (f32, i32) {
    unsafe { (*x.scales.get_unchecked(g * R + r), *x.neg_offsets.get_unchecked(g * R + r)) }
}

/// `R` rows against `P` panels (one after the other in `w`): per group, each row's 8 activation
/// lanes are broadcast once and multiplied into all P panels' integer sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile_vnni512<const R: usize, const P: usize, const G: usize>(
    x: &TileRows<'_>,
    (w, prefetch): (&[u8], Prefetch),
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    let block = block_bytes(G);
    let panel_len = k / G * block;
    debug_assert_eq!(w.len(), P * panel_len);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut spread = Spread::new(prefetch, k / CHUNK / SPREAD);
    for g in 0..k / G {
        let at: [*const u8; P] = std::array::from_fn(|p| w.as_ptr().wrapping_add(p * panel_len + g * block));
        if let Prefetch::Ahead(ahead) = prefetch {
            for at in at {
                for line in 0..block / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(ahead + line * 64) as *const i8);
                }
            }
        }
        // Σ (q + 128)·a over the group, less the activations' 128·Σa.
        let mut dot: [[__m512i; P]; R] =
            std::array::from_fn(|r| [_mm512_set1_epi32(unsafe { group_of::<R>(x, r, g) }.1); P]);
        for c4 in (0..G / CHUNK).step_by(SPREAD) {
            spread.advance((g * (G / CHUNK) + c4) / SPREAD);
            for c in c4..c4 + SPREAD {
                // SAFETY (all loads): `tile` checked the sizes; `out` is the caller's.
                let q: [__m512i; P] =
                    std::array::from_fn(|p| unsafe { _mm512_loadu_si512(at[p].add(c * 64) as *const __m512i) });
                for (r, dot) in dot.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(unsafe { lane::<R, G>(x, r, g, c) });
                    for (dot, q) in dot.iter_mut().zip(q) {
                        *dot = _mm512_dpbusd_epi32(*dot, q, a);
                    }
                }
            }
        }
        let scale: [__m512; P] =
            std::array::from_fn(|p| unsafe { _mm512_loadu_ps(at[p].add(G * WIDTH) as *const f32) });
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_set1_ps(unsafe { group_of::<R>(x, r, g) }.0);
            for p in 0..P {
                let product = _mm512_mul_ps(_mm512_cvtepi32_ps(dot[r][p]), scale[p]);
                acc[p] = _mm512_fmadd_ps(product, s, acc[p]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (p, acc) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(out.add(r * stride + p * WIDTH), *acc) };
        }
    }
}

/// Two passes of 8 features (16 registers hold 4 rows' i32 and f32 accumulators for 8 features).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const G: usize>(
    x: &TileRows<'_>,
    (w, prefetch): (&[u8], Prefetch),
    k: usize,
    out: *mut f32,
    stride: usize,
) {
    use std::arch::x86_64::*;
    debug_assert_eq!(w.len(), k / G * block_bytes(G));
    let (ones, flip) = (_mm256_set1_epi16(1), _mm256_set1_epi8(-128));
    let mut spread = Spread::new(prefetch, 2 * k / CHUNK / SPREAD);
    for half in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for (g, block) in w.chunks_exact(block_bytes(G)).enumerate() {
            let at = block.as_ptr();
            // The first pass streams the panel; the second finds it in cache.
            if let (Prefetch::Ahead(ahead), 0) = (prefetch, half) {
                for line in 0..block_bytes(G) / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(ahead + line * 64) as *const i8);
                }
            }
            let mut dot = [_mm256_setzero_si256(); R];
            for c4 in (0..G / CHUNK).step_by(SPREAD) {
                spread.advance(((half * (k / G) + g) * (G / CHUNK) + c4) / SPREAD);
                for c in c4..c4 + SPREAD {
                    // SAFETY (all loads): `tile` checked the sizes; `out` is the caller's.
                    let bytes = unsafe { _mm256_loadu_si256(at.add(c * 64 + 32 * half) as *const __m256i) };
                    let q = _mm256_xor_si256(bytes, flip);
                    let magnitude = _mm256_abs_epi8(q);
                    for (r, dot) in dot.iter_mut().enumerate() {
                        // |q|·(a with q's sign): each pair of products fits an i16 (≤ 2·127·127).
                        let a = _mm256_set1_epi32(unsafe { lane::<R, G>(x, r, g, c) });
                        let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(a, q));
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            let scale = unsafe { _mm256_loadu_ps(at.add(G * WIDTH + 32 * half) as *const f32) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let product = _mm256_mul_ps(_mm256_cvtepi32_ps(dot[r]), scale);
                *acc = _mm256_fmadd_ps(product, _mm256_set1_ps(unsafe { group_of::<R>(x, r, g) }.0), *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(out.add(r * stride + 8 * half), *acc) };
        }
    }
}

/// Without AVX2: the same integers and the same f32 operations, one feature at a time.
unsafe fn tile_portable<const R: usize, const G: usize>(
    x: &TileRows<'_>,
    (w, _prefetch): (&[u8], Prefetch),
    _k: usize,
    out: *mut f32,
    stride: usize,
) {
    let mut acc = [[0f32; WIDTH]; R];
    for (g, block) in w.chunks_exact(block_bytes(G)).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = &x.codes[(g * R + r) * G..][..G];
            for (j, acc) in acc.iter_mut().enumerate() {
                let dot: i32 = (0..G).map(|i| ((block[code_at(j, i)] ^ 0x80) as i8 as i32) * a[i] as i32).sum();
                let s = &block[G * WIDTH + 4 * j..][..4];
                let product = dot as f32 * f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                // SAFETY: `tile` checked the sizes.
                *acc = product.mul_add(unsafe { group_of::<R>(x, r, g) }.0, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller's contract (see `tile`).
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * stride), WIDTH) };
    }
}
