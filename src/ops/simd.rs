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
                match level() {
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}

/// 2: AVX-512F, 1: AVX2+FMA, 0: baseline (detected once).
#[cfg(target_arch = "x86_64")]
pub fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    })
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

/// Dot products of `R` rows with one `b` over 16 independent lanes per row, `b` read once. Every
/// row's sum is formed in the same order whatever `R` is, so [`dot`] and [`dot4`] give the same bits
/// for the same row (batched decoding stays identical to decoding one sequence at a time).
#[inline(always)]
fn dot_rows<const R: usize, const FMA: bool>(rows: [&[f32]; R], b: &[f32]) -> [f32; R] {
    let mut lanes = [[0f32; 16]; R];
    let whole = b.len() / 16 * 16;
    for c in (0..whole).step_by(16) {
        let y = &b[c..c + 16];
        for (lane, a) in lanes.iter_mut().zip(rows) {
            let x = &a[c..c + 16];
            for i in 0..16 {
                lane[i] = mac::<FMA>(lane[i], x[i], y[i]);
            }
        }
    }
    let mut out = [0f32; R];
    for ((o, lane), a) in out.iter_mut().zip(&lanes).zip(rows) {
        let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
        *o = lane.iter().sum::<f32>() + tail;
    }
    out
}

macro_rules! dispatch_fma {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $imp:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { $imp::<true>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { $imp::<true>($($arg),*) }
                // SAFETY: each variant runs only where its target feature was detected.
                match level() {
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            $imp::<false>($($arg),*)
        }
    };
}

#[inline(always)]
fn dot1<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    dot_rows::<1, FMA>([a], b)[0]
}

#[inline(always)]
fn dot4_imp<const FMA: bool>(a0: &[f32], a1: &[f32], a2: &[f32], a3: &[f32], b: &[f32]) -> [f32; 4] {
    dot_rows::<4, FMA>([a0, a1, a2, a3], b)
}

dispatch_fma! {
    /// `Σ a_i·b_i` over 16 independent lanes.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 = dot1
}

dispatch_fma! {
    /// [`dot`] of four rows with one `b`, read once; each result has the bits `dot` gives it.
    pub fn dot4(a0: &[f32], a1: &[f32], a2: &[f32], a3: &[f32], b: &[f32]) -> [f32; 4] = dot4_imp
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
    /// `x_i ← x_i · s`.
    pub fn scale(x: &mut [f32], s: f32) -> () {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
}

dispatch! {
    /// SwiGLU forward over a chunk: `y = g·σ(g)·u`.
    pub fn swiglu(y: &mut [f32], g: &[f32], u: &[f32]) -> () {
        for i in 0..y.len() {
            y[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
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
