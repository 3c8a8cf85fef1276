//! An int8 KV cache: each cached row — one position's key or value for one KV head, `D` values — is
//! stored as `D` signed bytes and one f32 scale, `x ≈ s·c` with `s = max|x|/127` and
//! `c = round(x/s) ∈ [−127, 127]`: half the bytes of an f16 cache (llama.cpp's `q8_0` cache type
//! scales every 32 values instead of every row). The codes live in a `U8` tensor (their bits are
//! `i8`), the scales in an f32 tensor with one axis fewer.
//!
//! Decoding reads the codes as they are stored and applies each row's scale once: a key's scale
//! multiplies its score (`q·k = s·(q·c)`), a value's scale its softmax weight
//! (`Σ p_j·v_j = Σ (p_j·s_j)·c_j`). Prompts, which attend with matmuls, read the rows dequantized.
//!
//! Both are stored for the vector instructions that read them, in blocks of [`KEY_BLOCK`] positions
//! ([`Stored::offset`]). Keys: inside a block, four values of each key side by side, key after key
//! (`[p/16][i/4][p%16][i%4]`): the 64 bytes at `(block, i/4)` are values `i..i+4` of 16 keys, the
//! operand of one AVX-512 VNNI `vpdpbusd` against four query values repeated, which leaves one score
//! per lane — no sums across a register to fold. Values: each value of two positions side by side
//! (`[p/2][i][p%2]`): 32 bytes widened to 16-bit are 16 values of two positions, the operand of one
//! `vpdpwssd` against the two positions' weights ([`super::int8_values`]). A cache's capacity is
//! rounded up to whole blocks.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Storage, Tensor};

super::simd::dispatch! {
    /// Codes and scale of one row: `s = max|x|/127`, codes rounded half to even (as the int8
    /// activations are), clamped to ±127.
    pub fn quantize_row(x: &[f32], codes: &mut [u8]) -> f32 {
        let scale = row_scale(x);
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (c, v) in codes.iter_mut().zip(x) {
            *c = round_half_even((v * inv).clamp(-127.0, 127.0)) as u8;
        }
        scale
    }
}

/// `y` (|y| < 2²²) rounded to an integer, half to even. Adding 1.5·2²³ leaves the integer in the low
/// bits of the sum (whose unit in the last place is 1): plain arithmetic that vectorizes, where
/// `round_ties_even` is a library call without SSE4.1.
#[inline(always)]
pub(super) fn round_half_even(y: f32) -> i32 {
    const ROUND: f32 = 12_582_912.0;
    (y + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as i32
}

/// A row's scale, `max|x|/127` — NaN if a value is NaN, so that it reaches the scores as an f32
/// cache's NaN would (its codes are 0). In 16 lanes without branches, so that it vectorizes.
#[inline(always)]
fn row_scale(x: &[f32]) -> f32 {
    let (mut max, mut nan) = ([0f32; 16], [false; 16]);
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        let chunk: &[f32; 16] = chunk.try_into().expect("a whole chunk");
        for l in 0..16 {
            max[l] = max[l].max(chunk[l].abs());
            nan[l] |= chunk[l].is_nan();
        }
    }
    // (The tail apart: indexing the lanes with it would keep them out of registers.)
    if nan.iter().any(|&n| n) || tail.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    max.iter().chain(tail).fold(0f32, |m, &v| m.max(v.abs())) / 127.0
}

/// Rows of `d` values quantized: codes (`i8` bits) and one scale per row.
pub fn quantize_rows(x: &[f32], d: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; x.len()];
    let scales = x.chunks_exact(d).zip(codes.chunks_exact_mut(d)).map(|(x, c)| quantize_row(x, c)).collect();
    (codes, scales)
}

/// The codes as the signed bytes they are, to write.
pub fn as_signed_mut(codes: &mut [u8]) -> &mut [i8] {
    // SAFETY: as `as_signed`; the borrow is handed on whole.
    unsafe { std::slice::from_raw_parts_mut(codes.as_mut_ptr() as *mut i8, codes.len()) }
}

/// The codes as the signed bytes they are.
pub fn as_signed(codes: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(codes.as_ptr() as *const i8, codes.len()) }
}

/// Positions per block of an int8 cache's codes.
pub const KEY_BLOCK: usize = 16;

/// A capacity rounded up to whole blocks (an int8 cache is allocated so).
pub fn block_capacity(capacity: usize) -> usize {
    capacity.next_multiple_of(KEY_BLOCK)
}

/// How an int8 cache lays out one KV head's codes, `d` (a multiple of 4) values a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// `[p/16][i/4][p%16][i%4]`: four values of each of 16 keys side by side.
    Keys,
    /// `[p/2][i][p%2]`: each value of two positions side by side.
    Values,
}

impl Stored {
    /// Where value `i` of position `p` lies.
    #[inline(always)]
    pub fn offset(self, p: usize, i: usize, d: usize) -> usize {
        match self {
            Stored::Keys => (p / KEY_BLOCK) * KEY_BLOCK * d + (i / 4) * 4 * KEY_BLOCK + (p % KEY_BLOCK) * 4 + i % 4,
            Stored::Values => (p / 2) * 2 * d + 2 * i + p % 2,
        }
    }

    /// The rows `c·s` of one KV head's `codes` (laid out so) into `out`, one row per scale in `s`:
    /// block by block, in the order the codes lie.
    fn unpack(self, codes: &[i8], s: &[f32], d: usize, out: &mut [f32]) {
        match self {
            Stored::Keys => {
                for (block, codes) in codes.chunks_exact(KEY_BLOCK * d).enumerate() {
                    for (g, fours) in codes.chunks_exact(4 * KEY_BLOCK).enumerate() {
                        for (t, four) in fours.chunks_exact(4).enumerate() {
                            let p = block * KEY_BLOCK + t;
                            if p < s.len() {
                                let row = &mut out[p * d + 4 * g..][..4];
                                row.iter_mut().zip(four).for_each(|(o, &c)| *o = c as f32 * s[p]);
                            }
                        }
                    }
                }
            }
            Stored::Values => {
                for (m, pair) in codes.chunks_exact(2 * d).enumerate().take(s.len().div_ceil(2)) {
                    for (half, s) in s[2 * m..].iter().take(2).enumerate() {
                        let row = &mut out[(2 * m + half) * d..][..d];
                        row.iter_mut().zip(pair.iter().skip(half).step_by(2)).for_each(|(o, &c)| *o = c as f32 * s);
                    }
                }
            }
        }
    }

    /// Writes one row of codes as position `at` of one KV head's codes (laid out so).
    pub fn place<B: Copy>(self, row: &[B], at: usize, to: &mut [B]) {
        let d = row.len();
        match self {
            // Four values at a time: each four are side by side in the block.
            Stored::Keys => row.chunks_exact(4).enumerate().for_each(|(i, four)| {
                to[Stored::Keys.offset(at, 4 * i, d)..][..4].copy_from_slice(four);
            }),
            Stored::Values => row.iter().enumerate().for_each(|(i, &c)| to[Stored::Values.offset(at, i, d)] = c),
        }
    }

    /// Rows of `d` codes each laid out so (the last block's missing positions are zeros).
    pub fn lay_out(self, rows: &[u8], d: usize) -> Vec<u8> {
        let mut stored = vec![0u8; block_capacity(rows.len() / d) * d];
        for (p, row) in rows.chunks_exact(d).enumerate() {
            row.iter().enumerate().for_each(|(i, &c)| stored[self.offset(p, i, d)] = c);
        }
        stored
    }
}

/// Whether a cache of `capacity` positions of `d` values can hold blocks.
pub(super) fn holds_blocks(capacity: usize, d: usize) -> bool {
    capacity.is_multiple_of(KEY_BLOCK) && d.is_multiple_of(4)
}

/// Positions `0..len` of an int8 cache — codes `[B, K, C, D]` laid out as `layout` and scales
/// `[B, K, C]` — as the f32 rows `c·s` `[B, K, len, D]` it holds.
pub fn dequantize(codes: &Tensor, scales: &Tensor, len: usize, layout: Stored) -> Result<Tensor> {
    let (b, kv, capacity, d) = codes.dims4()?;
    let stored = block_capacity(len);
    if d == 0 || stored > capacity || !holds_blocks(capacity, d) || scales.dims() != [b, kv, capacity] {
        candle_core::bail!("int8 KV: {len} rows of {:?} codes with {:?} scales", codes.dims(), scales.dims());
    }
    let c = codes.narrow(2, 0, stored)?.flatten_all()?.to_vec1::<u8>()?;
    let s = scales.narrow(2, 0, len)?.flatten_all()?.to_vec1::<f32>()?;
    let mut values = vec![0f32; b * kv * len * d];
    if len > 0 {
        for (head, (out, s)) in values.chunks_exact_mut(len * d).zip(s.chunks_exact(len)).enumerate() {
            layout.unpack(as_signed(&c[head * stored * d..][..stored * d]), s, d, out);
        }
    }
    Tensor::from_vec(values, (b, kv, len, d), &Device::Cpu)
}

/// The f32 storage behind a CPU tensor (the scales) and its layout, handed to `f`.
pub(crate) fn with_scales<R>(scales: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = scales.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(s)) => f(s, layout),
        _ => candle_core::bail!("int8 KV: the scales must be an f32 CPU tensor"),
    }
}

/// Writes `x` `[B, K, T, D]` (f32) quantized into an int8 cache — codes `[B, K, C, D]` laid out as
/// `layout` and scales `[B, K, C]` — at positions `at..at + T` of every sequence.
pub fn cache_write(codes: &Tensor, scales: &Tensor, x: &Tensor, at: usize, layout: Stored) -> Result<()> {
    let (b, kv, t, _) = x.dims4()?;
    if codes.dims().get(..2) != Some(&[b, kv][..]) {
        candle_core::bail!("int8 KV write: rows {:?} for a cache of {:?}", x.dims(), codes.dims());
    }
    // Row (head, j) of x — head a flattened (sequence, KV head) — goes to position at + j.
    let rows: Vec<Row> = (0..b * kv).flat_map(|head| (0..t).map(move |j| (head, at + j, head * t + j))).collect();
    write_rows(codes, scales, x, &rows, layout)
}

/// Writes row b of `x` `[1, K, B, D]` (a decode step's new keys or values, f32) quantized into the
/// pool — codes `[S, K, C, D]` laid out as `layout` and scales `[S, K, C]` — at slot `places[b].0`,
/// position `places[b].1`.
pub fn pool_write(
    codes: &Tensor,
    scales: &Tensor,
    x: &Tensor,
    places: &[(usize, usize)],
    layout: Stored,
) -> Result<()> {
    let (one, kv, b, _) = x.dims4()?;
    if one != 1 || b != places.len() || codes.dims().get(1) != Some(&kv) {
        candle_core::bail!("int8 pool write: {:?} for {} places", x.dims(), places.len());
    }
    // Row (g, b) of x goes to (slot_b, g) at position at_b.
    let rows: Vec<Row> = places
        .iter()
        .enumerate()
        .flat_map(|(row, &(slot, at))| (0..kv).map(move |g| (slot * kv + g, at, g * b + row)))
        .collect();
    write_rows(codes, scales, x, &rows, layout)
}

/// Where one row goes: (head — the flattened first two axes of the cache —, position, row of x).
type Row = (usize, usize, usize);

/// Each row of `x` quantized once, then one in-place copy into the codes and one into the scales.
fn write_rows(codes: &Tensor, scales: &Tensor, x: &Tensor, rows: &[Row], layout: Stored) -> Result<()> {
    let (b, kv, capacity, d) = codes.dims4()?;
    let x_rows = x.elem_count() / d.max(1);
    let dtypes = codes.dtype() == DType::U8 && scales.dtype() == DType::F32 && x.dtype() == DType::F32;
    let outside = rows.iter().find(|&&(head, at, from)| head >= b * kv || at >= capacity || from >= x_rows);
    if x.dim(candle_core::D::Minus1)? != d || scales.dims() != [b, kv, capacity] || !dtypes {
        candle_core::bail!("int8 KV write: f32 rows {:?} into U8 codes {:?} with f32 scales", x.dims(), codes.dims());
    }
    if !holds_blocks(capacity, d) {
        candle_core::bail!(
            "int8 KV write: codes {:?} are not whole blocks of 16 positions of 4·n values",
            codes.dims()
        );
    }
    if let Some(&(head, at, _)) = outside {
        candle_core::bail!("int8 KV write: position {at} of head {head} is outside codes {:?}", codes.dims());
    }
    let (x_codes, x_scales) = super::cpu::with_f32(x, |x| quantize_rows(x, d))?;
    let quantized = QuantizedRows { rows, codes: &x_codes, scales: &x_scales, d, capacity, layout };
    codes.inplace_op1(&quantized)?;
    scales.inplace_op1(&quantized)
}

/// Rows of `d` codes and their scales, quantized once, copied into a contiguous cache: the codes
/// into its U8 tensor (each row spread over its block), the scales into its f32 one.
struct QuantizedRows<'a> {
    rows: &'a [Row],
    codes: &'a [u8],
    scales: &'a [f32],
    d: usize,
    capacity: usize,
    layout: Stored,
}

impl InplaceOp1 for QuantizedRows<'_> {
    fn name(&self) -> &'static str {
        "int8-kv-rows"
    }

    fn cpu_fwd(&self, cache: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((start, _)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8 KV write: the cache must be contiguous");
        };
        let (d, capacity) = (self.d, self.capacity);
        match cache {
            CpuStorage::U8(cache) => self.rows.iter().for_each(|&(head, at, from)| {
                self.layout.place(&self.codes[from * d..][..d], at, &mut cache[start + head * capacity * d..])
            }),
            CpuStorage::F32(cache) => {
                self.rows.iter().for_each(|&(head, at, from)| cache[start + head * capacity + at] = self.scales[from])
            }
            _ => candle_core::bail!("int8 KV write: U8 codes and f32 scales"),
        }
        Ok(())
    }
}
