//! Vectorized inner loops for the fused kernels. Each loop is written so the compiler can vectorize
//! it (independent lanes, no branches) and is compiled three times — for AVX-512, AVX2 and the
//! baseline — with the widest one this CPU supports chosen once at run time.

/// `e^x` in f32 (a few ulp), branch-free so it vectorizes: `x = n·ln2 + r` with `|r| ≤ ln2/2`,
/// `e^r` by a polynomial, `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.37); // e^88.37 is near f32's largest finite value
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 split into a part exact in f32 and the rest, so n·ln2 subtracts without rounding error.
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    // Cephes' minimax polynomial for e^r on [−ln2/2, ln2/2].
    let q = 1.987_569_2e-4;
    let q = q * r + 1.398_199_9e-3;
    let q = q * r + 8.333_452e-3;
    let q = q * r + 4.166_579_6e-2;
    let q = q * r + 1.666_666_5e-1;
    let q = q * r + 0.5;
    let p = q * r * r + r + 1.0;
    // 2^n from its exponent bits. Adding 2^23 + 127 puts the integer n + 127 ∈ [1, 254] in the low
    // mantissa bits; shifting it into the exponent field avoids a float→int conversion, which Rust's
    // saturating `as` turns into scalar code and which would cost more than the rest of this function.
    let biased = (n + (8_388_608.0 + 127.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { imp($($arg),*) }
                // SAFETY: each variant runs only where its target feature was detected.
                match $crate::ops::simd::level() {
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}
/// For the int8 kernels' scalar-looking loops (quantizing a row), compiled the same three ways.
pub(crate) use dispatch;

/// 2: AVX-512F, 1: AVX2+FMA, 0: baseline (detected once). `MINIMIND_SIMD=avx2` or `portable` picks a
/// lower level than the CPU has, to measure or test that path (`avx512`: AVX-512 without AMX, see
/// [`matrix_unit_allowed`]).
#[cfg(target_arch = "x86_64")]
pub fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = if is_x86_feature_detected!("avx512f") {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        };
        match std::env::var("MINIMIND_SIMD").as_deref() {
            Ok("avx2") => detected.min(1),
            Ok("portable") => 0,
            _ => detected,
        }
    })
}

/// Whether the int8 kernels may use the CPU's matrix unit (AMX) where it has one: not after
/// `MINIMIND_SIMD=avx512` (or a lower level), which keeps them on the vector tiles.
pub fn matrix_unit_allowed() -> bool {
    use std::sync::OnceLock;
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| !matches!(std::env::var("MINIMIND_SIMD").as_deref(), Ok("avx512" | "avx2" | "portable")))
}

/// `acc + x·y`, fused (one rounding) where the CPU has FMA.
#[inline(always)]
fn mac<const FMA: bool>(acc: f32, x: f32, y: f32) -> f32 {
    if FMA {
        x.mul_add(y, acc)
    } else {
        acc + x * y
    }
}

/// Lanes of a decode dot product: each (row, feature) product is summed in 8 independent lanes.
pub(super) const LANES: usize = 8;

/// The dot products of `R` rows with `F` weight rows — an `R × F` tile of `x·wᵀ`, each weight and
/// each row chunk loaded once for the whole tile. Every product is formed in the same order whatever
/// the tile's shape (8 lanes over k, then the lanes summed in order, then the tail), so a row gets
/// the same bits alone (`R = 1`) as in a batch (`R = 4`): batched decoding stays identical to
/// decoding one sequence at a time.
#[inline(always)]
fn dot_tile<const R: usize, const F: usize, const FMA: bool>(rows: [&[f32]; R], ws: [&[f32]; F]) -> [[f32; F]; R] {
    let mut acc = [[[0f32; LANES]; F]; R];
    let k = ws[0].len();
    let whole = k / LANES * LANES;
    let mut c = 0;
    while c < whole {
        for f in 0..F {
            let y: &[f32; LANES] = ws[f][c..c + LANES].try_into().expect("a whole chunk");
            for r in 0..R {
                let x: &[f32; LANES] = rows[r][c..c + LANES].try_into().expect("a whole chunk");
                for i in 0..LANES {
                    acc[r][f][i] = mac::<FMA>(acc[r][f][i], x[i], y[i]);
                }
            }
        }
        c += LANES;
    }
    let mut out = [[0f32; F]; R];
    for r in 0..R {
        for f in 0..F {
            let tail: f32 = rows[r][whole..].iter().zip(&ws[f][whole..]).map(|(x, y)| x * y).sum();
            out[r][f] = acc[r][f].iter().sum::<f32>() + tail;
        }
    }
    out
}

/// AVX2+FMA tiles with intrinsics: `acc[r][f]` one 8-lane register per (row, feature), the same
/// fused multiply-adds in the same order for every tile shape, the lanes summed in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const F: usize>(rows: [&[f32]; R], ws: [&[f32]; F]) -> [[f32; F]; R] {
    use std::arch::x86_64::*;
    let k = ws[0].len();
    let whole = k / LANES * LANES;
    let mut acc = [[_mm256_setzero_ps(); F]; R];
    let mut c = 0;
    while c < whole {
        let mut w = [_mm256_setzero_ps(); F];
        for f in 0..F {
            // SAFETY: c + 8 ≤ whole ≤ k = every row's and weight's length.
            w[f] = unsafe { _mm256_loadu_ps(ws[f].as_ptr().add(c)) };
        }
        for r in 0..R {
            let x = unsafe { _mm256_loadu_ps(rows[r].as_ptr().add(c)) };
            for f in 0..F {
                acc[r][f] = _mm256_fmadd_ps(x, w[f], acc[r][f]);
            }
        }
        c += LANES;
    }
    let mut out = [[0f32; F]; R];
    for r in 0..R {
        for f in 0..F {
            let mut lanes = [0f32; LANES];
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][f]) };
            let tail: f32 = rows[r][whole..].iter().zip(&ws[f][whole..]).map(|(x, y)| x * y).sum();
            out[r][f] = lanes.iter().sum::<f32>() + tail;
        }
    }
    out
}

/// An `R × F` tile of dot products: AVX2 intrinsics where the CPU has AVX2+FMA (AVX-512 machines
/// included), portable code otherwise; within one process every shape gives a pair the same bits.
#[inline(always)]
fn tile<const R: usize, const F: usize>(rows: [&[f32]; R], ws: [&[f32]; F]) -> [[f32; F]; R] {
    debug_assert!(rows.iter().all(|r| r.len() == ws[0].len()) && ws.iter().all(|w| w.len() == ws[0].len()));
    #[cfg(target_arch = "x86_64")]
    if level() >= 1 {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { tile_avx2::<R, F>(rows, ws) };
    }
    dot_tile::<R, F, false>(rows, ws)
}

/// `Σ a_i·b_i` (8 lanes; the same bits as the pair gets from [`dot_1x4`] and [`dot_4x3`]).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    tile::<1, 1>([a], [b])[0][0]
}

/// One row against four weight rows.
pub fn dot_1x4(x: &[f32], w: [&[f32]; 4]) -> [f32; 4] {
    tile::<1, 4>([x], w)[0]
}

/// Four rows against three weight rows (12 accumulators: with the loads, AVX2's 16 registers).
pub fn dot_4x3(x: [&[f32]; 4], w: [&[f32]; 3]) -> [[f32; 3]; 4] {
    tile::<4, 3>(x, w)
}

dispatch! {
    /// `Σ x_i·scale_g·q_i` for int8 `q` in groups of 32, each group's f32 scale stored as 4
    /// little-endian bytes in `scales`; `x.len()` a multiple of 32.
    pub fn dot_int8(x: &[f32], q: &[i8], scales: &[u8]) -> f32 {
        let mut acc = [0f32; 16];
        for ((xg, qg), s) in x.chunks_exact(32).zip(q.chunks_exact(32)).zip(scales.chunks_exact(4)) {
            let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let mut lanes = [0f32; 16];
            for i in 0..16 {
                lanes[i] += xg[i] * qg[i] as f32 + xg[16 + i] * qg[16 + i] as f32;
            }
            for i in 0..16 {
                acc[i] += lanes[i] * scale;
            }
        }
        acc.iter().sum()
    }
}

dispatch! {
    /// [`dot_int8`] of four rows with one int8 weight row, each group converted to f32 once for the
    /// four; every row's sum is formed exactly as `dot_int8` forms it (the same bits).
    pub fn dot_int8_4(x0: &[f32], x1: &[f32], x2: &[f32], x3: &[f32], q: &[i8], scales: &[u8]) -> [f32; 4] {
        let xs = [x0, x1, x2, x3];
        let mut acc = [[0f32; 16]; 4];
        for (g, (qg, s)) in q.chunks_exact(32).zip(scales.chunks_exact(4)).enumerate() {
            let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let mut wq = [0f32; 32];
            for i in 0..32 {
                wq[i] = qg[i] as f32;
            }
            for (acc, x) in acc.iter_mut().zip(xs) {
                let xg = &x[g * 32..g * 32 + 32];
                let mut lanes = [0f32; 16];
                for i in 0..16 {
                    lanes[i] += xg[i] * wq[i] + xg[16 + i] * wq[16 + i];
                }
                for i in 0..16 {
                    acc[i] += lanes[i] * scale;
                }
            }
        }
        [acc[0].iter().sum(), acc[1].iter().sum(), acc[2].iter().sum(), acc[3].iter().sum()]
    }
}

dispatch! {
    /// `x_i ← e^(x_i − shift)` in place; returns `Σ e^(x_i − shift)`.
    pub fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
        let mut lanes = [0f32; 16];
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            for i in 0..16 {
                c[i] = exp(c[i] - shift);
                lanes[i] += c[i];
            }
        }
        let mut tail = 0f32;
        for v in chunks.into_remainder() {
            *v = exp(*v - shift);
            tail += *v;
        }
        lanes.iter().sum::<f32>() + tail
    }
}

dispatch! {
    /// Largest element (−∞ for an empty slice).
    pub fn max(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for c in chunks {
            for i in 0..16 {
                lanes[i] = lanes[i].max(c[i]);
            }
        }
        lanes.iter().copied().fold(tail, f32::max)
    }
}

dispatch! {
    /// The first index of the largest element (0 for an empty slice or one of only NaN and −∞), and
    /// whether an element is NaN or +∞: the maximum and the check in 16 lanes, then the first
    /// chunk of 16 holding the maximum (compared a whole chunk at a time).
    pub fn argmax_checked(x: &[f32]) -> (usize, bool) {
        let (mut max, mut bad) = ([f32::NEG_INFINITY; 16], [false; 16]);
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder();
        for chunk in chunks.clone() {
            let chunk: &[f32; 16] = chunk.try_into().expect("a whole chunk");
            for l in 0..16 {
                max[l] = max[l].max(chunk[l]);
                bad[l] |= chunk[l].is_nan() | (chunk[l] == f32::INFINITY);
            }
        }
        let bad = bad.iter().any(|&b| b) || tail.iter().any(|v| v.is_nan() || *v == f32::INFINITY);
        let max = max.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let found = chunks.enumerate().find_map(|(c, chunk)| {
            let chunk: &[f32; 16] = chunk.try_into().expect("a whole chunk");
            let hits = (0..16).fold(0u32, |hits, l| hits | u32::from(chunk[l] == max) << l);
            (hits != 0).then(|| c * 16 + hits.trailing_zeros() as usize)
        });
        let at = found.or_else(|| tail.iter().position(|&v| v == max).map(|j| x.len() - tail.len() + j));
        (at.unwrap_or(0), bad)
    }
}

dispatch! {
    /// `x_i ← (x_i · s) · w_i`.
    pub fn scale_weighted(x: &mut [f32], s: f32, w: &[f32]) -> () {
        for (x, w) in x.iter_mut().zip(w) {
            *x = *x * s * w;
        }
    }
}

dispatch! {
    /// `x_i ← x_i · s`.
    pub fn scale(x: &mut [f32], s: f32) -> () {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}

dispatch! {
    /// SwiGLU forward over a chunk: `y = g·σ(g)·u`, every value of `y` written.
    pub fn swiglu(y: &mut [std::mem::MaybeUninit<f32>], g: &[f32], u: &[f32]) -> () {
        for i in 0..y.len() {
            y[i].write(g[i] / (1.0 + exp(-g[i])) * u[i]);
        }
    }
}

dispatch! {
    /// SwiGLU backward over a chunk: `du = dy·g·σ(g)`, `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`.
    pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]) -> () {
        for i in 0..dg.len() {
            let s = 1.0 / (1.0 + exp(-g[i]));
            du[i] = dy[i] * g[i] * s;
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

dispatch! {
    /// `Σ e^(x_i − shift)`, leaving `x` unchanged.
    pub fn exp_sum(x: &[f32], shift: f32) -> f32 {
        let mut lanes = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| exp(v - shift)).sum();
        for c in chunks {
            for i in 0..16 {
                lanes[i] += exp(c[i] - shift);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }
}

dispatch! {
    /// `y_i ← s · e^(x_i − shift)`.
    pub fn scaled_exp(y: &mut [f32], x: &[f32], shift: f32, s: f32) -> () {
        for i in 0..y.len() {
            y[i] = s * exp(x[i] - shift);
        }
    }
}

pub use super::simd_attention::{attention_scores, attention_scores_fetching_values, weighted_rows, KvElem};
