//! An int8 KV cache: each cached row — one position's key or value for one KV head, `D` values — is
//! stored as `D` signed bytes and one f32 scale, `x ≈ s·c` with `s = max|x|/127` and
//! `c = round(x/s) ∈ [−127, 127]`: half the bytes of an f16 cache (llama.cpp's `q8_0` cache type
//! scales every 32 values instead of every row). The codes live in a `U8` tensor (their bits are
//! `i8`), the scales in an f32 tensor with one axis fewer.
//!
//! Decoding reads the codes as they are stored and applies each row's scale once: a key's scale
//! multiplies its score (`q·k = s·(q·c)`), a value's scale its softmax weight
//! (`Σ p_j·v_j = Σ (p_j·s_j)·c_j`). Prompts, which attend with matmuls, read the rows dequantized.

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Storage, Tensor};

/// Codes and scale of one row: `s = max|x|/127`, codes rounded half to even (as the int8
/// activations are), clamped to ±127.
pub(super) fn quantize_row(x: &[f32], codes: &mut [u8]) -> f32 {
    let scale = row_scale(x);
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    // Adding 1.5·2²³ rounds y ∈ [−127, 127] to an integer n, half to even, and leaves n in the low
    // bits of the sum (whose unit in the last place is 1): plain arithmetic that vectorizes, where
    // `round_ties_even` is a library call without SSE4.1.
    const ROUND: f32 = 12_582_912.0;
    for (c, v) in codes.iter_mut().zip(x) {
        let y = (v * inv).clamp(-127.0, 127.0);
        *c = (y + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as u8;
    }
    scale
}

/// A row's scale, `max|x|/127` — NaN if a value is NaN, so that it reaches the scores as an f32
/// cache's NaN would (its codes are 0).
fn row_scale(x: &[f32]) -> f32 {
    if x.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0
}

/// Rows of `d` values quantized: codes (`i8` bits) and one scale per row.
pub fn quantize_rows(x: &[f32], d: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; x.len()];
    let scales = x.chunks_exact(d).zip(codes.chunks_exact_mut(d)).map(|(x, c)| quantize_row(x, c)).collect();
    (codes, scales)
}

/// The codes as the signed bytes they are.
pub fn as_signed(codes: &[u8]) -> &[i8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(codes.as_ptr() as *const i8, codes.len()) }
}

/// `x` `[…, D]` (f32) as codes `[…, D]` (U8) and scales `[…]` (f32), on the CPU.
pub fn quantize(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (dims, d) = (x.dims().to_vec(), x.dim(candle_core::D::Minus1)?);
    if d == 0 {
        candle_core::bail!("int8 KV rows of no values: {dims:?}");
    }
    let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let (codes, scales) = quantize_rows(&values, d);
    Ok((
        Tensor::from_vec(codes, dims.as_slice(), &Device::Cpu)?,
        Tensor::from_vec(scales, &dims[..dims.len() - 1], &Device::Cpu)?,
    ))
}

/// Rows `c·s` of codes `[…, D]` and scales `[…]`, as f32 `[…, D]`: what the cache holds.
pub fn dequantize(codes: &Tensor, scales: &Tensor) -> Result<Tensor> {
    let d = codes.dim(candle_core::D::Minus1)?;
    let c = codes.flatten_all()?.to_vec1::<u8>()?;
    let s = scales.flatten_all()?.to_vec1::<f32>()?;
    if d == 0 || c.len() != s.len() * d {
        candle_core::bail!("int8 KV rows: {:?} codes for {:?} scales", codes.dims(), scales.dims());
    }
    let mut values = vec![0f32; c.len()];
    for ((out, row), &s) in values.chunks_exact_mut(d).zip(as_signed(&c).chunks_exact(d)).zip(&s) {
        out.iter_mut().zip(row).for_each(|(o, &c)| *o = c as f32 * s);
    }
    Tensor::from_vec(values, codes.shape(), &Device::Cpu)
}

/// The f32 storage behind a CPU tensor (the scales) and its layout, handed to `f`.
pub(crate) fn with_scales<R>(scales: &Tensor, f: impl FnOnce(&[f32], &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = scales.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(s)) => f(s, layout),
        _ => candle_core::bail!("int8 KV: the scales must be an f32 CPU tensor"),
    }
}

/// Writes row b of `x` `[1, K, B, D]` (a decode step's new keys or values, f32) quantized into the
/// pool `codes` `[S, K, C, D]` and `scales` `[S, K, C]` at slot `places[b].0`, position `places[b].1`:
/// each row quantized once, then one in-place copy per tensor.
pub fn pool_write(codes: &Tensor, scales: &Tensor, x: &Tensor, places: &[(usize, usize)]) -> Result<()> {
    let (slots, kv, capacity, d) = codes.dims4()?;
    let (one, kx, b, dx) = x.dims4()?;
    let bad = places.iter().any(|&(s, at)| s >= slots || at >= capacity);
    let dtypes = codes.dtype() == DType::U8 && scales.dtype() == DType::F32 && x.dtype() == DType::F32;
    if one != 1 || kx != kv || dx != d || b != places.len() || bad || scales.dims() != [slots, kv, capacity] || !dtypes
    {
        candle_core::bail!("int8 pool write: {:?} into {:?} at {places:?}", x.dims(), codes.dims());
    }
    // Row (g, b) of x goes to pool row (slot_b, g, at_b).
    let rows: Vec<(usize, usize)> = places
        .iter()
        .enumerate()
        .flat_map(|(row, &(slot, at))| (0..kv).map(move |g| ((slot * kv + g) * capacity + at, g * b + row)))
        .collect();
    let (x_codes, x_scales) = super::cpu::with_f32(x, |x| quantize_rows(x, d))?;
    let quantized = QuantizedRows { rows: &rows, codes: &x_codes, scales: &x_scales, d };
    codes.inplace_op1(&quantized)?;
    scales.inplace_op1(&quantized)
}

/// Rows of `d` codes and their scales, quantized once, copied to rows `to` of a contiguous pool
/// from rows `from`: the codes into a U8 pool, the scales into an f32 one.
struct QuantizedRows<'a> {
    /// `(to, from)` per row.
    rows: &'a [(usize, usize)],
    codes: &'a [u8],
    scales: &'a [f32],
    d: usize,
}

impl InplaceOp1 for QuantizedRows<'_> {
    fn name(&self) -> &'static str {
        "int8-pool-rows"
    }

    fn cpu_fwd(&self, pool: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((start, _)) = layout.contiguous_offsets() else {
            candle_core::bail!("int8 pool write: the pool must be contiguous");
        };
        let d = self.d;
        match pool {
            CpuStorage::U8(pool) => self.rows.iter().for_each(|&(to, from)| {
                pool[start + to * d..][..d].copy_from_slice(&self.codes[from * d..][..d]);
            }),
            CpuStorage::F32(pool) => self.rows.iter().for_each(|&(to, from)| pool[start + to] = self.scales[from]),
            _ => candle_core::bail!("int8 pool write: U8 codes and f32 scales"),
        }
        Ok(())
    }
}
