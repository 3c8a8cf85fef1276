//! Int8 weight-only quantization for CPU inference.
//!
//! Decoding one token reads every weight once, so its speed is memory bandwidth divided by the bytes
//! of the weights. Storing each weight in one byte instead of four, with one f32 scale per group of
//! 32 (symmetric: `w ≈ scale·q`, `q ∈ [−127, 127]`, `scale = max|w_group| / 127`), reads ≈ 3.6× fewer
//! bytes; activations stay f32 and every product accumulates in f32.
//!
//! A quantized weight `[n, k]` is one u8 tensor `[n, 9·k'/8]` (k' = k rounded up to 32): each row holds
//! its k' int8 values, then its k'/32 scales as little-endian f32 bytes. Rows are self-contained, so
//! threads split the output features as in [`super::gemv`]. Inference only: there is no backward.

use super::cpu::f32_slice;
use super::simd;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Weights per scale.
pub const GROUP: usize = 32;

/// Rows up to which the int8 gemv is used; more rows (prefill) expand the weight to f32 for BLAS.
/// The f32 gemv's limit: a batch of decoding rows (continuous batching) stays on the kernel that
/// computes each row on its own, and expanding the weight would cost a pass over all of it per step.
pub const MAX_ROWS: usize = super::gemv::MAX_ROWS;

fn padded(k: usize) -> usize {
    k.div_ceil(GROUP) * GROUP
}

/// Bytes per packed row for `k` inputs.
pub fn row_bytes(k: usize) -> usize {
    padded(k) + 4 * padded(k) / GROUP
}

pub fn is_int8(w: &Tensor) -> bool {
    w.dtype() == DType::U8
}

/// Packs an f32 weight `[n, k]` into the int8 layout above.
pub fn quantize(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let kp = padded(k);
    let mut out = vec![0u8; n * row_bytes(k)];
    out.par_chunks_mut(row_bytes(k)).zip(values.par_chunks(k)).for_each(|(packed, row)| {
        let (q, scales) = packed.split_at_mut(kp);
        for (g, (qg, sg)) in q.chunks_mut(GROUP).zip(scales.chunks_mut(4)).enumerate() {
            let group = &row[(g * GROUP).min(k)..((g + 1) * GROUP).min(k)];
            let max = group.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (slot, v) in qg.iter_mut().zip(group) {
                *slot = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
            sg.copy_from_slice(&scale.to_le_bytes());
        }
    });
    Tensor::from_vec(out, (n, row_bytes(k)), w.device())
}

/// The f32 weight `[n, k]` a packed one stands for.
pub fn dequantize(q: &Tensor, k: usize) -> Result<Tensor> {
    let (n, width) = q.dims2()?;
    check_width(width, k)?;
    let bytes = q.flatten_all()?.to_vec1::<u8>()?;
    let kp = padded(k);
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(k).zip(bytes.par_chunks(width)).for_each(|(row, packed)| {
        let scales = scales_of(&packed[kp..]);
        for (i, v) in row.iter_mut().enumerate() {
            *v = (packed[i] as i8) as f32 * scales[i / GROUP];
        }
    });
    Tensor::from_vec(out, (n, k), q.device())
}

fn check_width(width: usize, k: usize) -> Result<()> {
    if width != row_bytes(k) {
        candle_core::bail!("int8 weight rows of {width} bytes do not fit {k} inputs (expected {})", row_bytes(k));
    }
    Ok(())
}

fn scales_of(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// `x · wᵀ` for `x` `[m, k]` (f32) and a packed int8 `w`: a gemv for decode-sized `m`, otherwise
/// the weight is expanded to f32 for one matrix product (prefill, scoring).
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    if m > MAX_ROWS || !matches!(x.device(), candle_core::Device::Cpu) {
        let dense = dequantize(w, k)?;
        return super::matmul_nt(x, &dense.to_dtype(x.dtype())?);
    }
    x.to_dtype(DType::F32)?.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &Int8Gemv)?.to_dtype(x.dtype())
}

struct Int8Gemv;

impl CustomOp2 for Int8Gemv {
    fn name(&self) -> &'static str {
        "int8-gemv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, width) = l2.shape().dims2()?;
        check_width(width, k)?;
        let x = f32_slice(s1, l1)?;
        let w = match s2 {
            CpuStorage::U8(w) => &w[l2.start_offset()..l2.start_offset() + n * width],
            _ => candle_core::bail!("int8-gemv: the weight must be u8"),
        };
        let kp = padded(k);
        // Inputs zero-padded to whole groups, so every dot product runs over full groups.
        let mut xs = vec![0f32; m * kp];
        for r in 0..m {
            xs[r * kp..r * kp + k].copy_from_slice(&x[r * k..(r + 1) * k]);
        }
        let weight = |j: usize| -> (&[i8], &[u8]) {
            let (q, scales) = w[j * width..(j + 1) * width].split_at(kp);
            // SAFETY: i8 and u8 have the same size and alignment.
            (unsafe { std::slice::from_raw_parts(q.as_ptr().cast(), q.len()) }, scales)
        };
        let row = |r: usize| &xs[r * kp..(r + 1) * kp];
        let out = super::gemv::by_feature4(
            m,
            n,
            |r, j| {
                let (q, scales) = weight(j);
                simd::dot_int8(row(r), q, scales)
            },
            |r, j| {
                let (q, scales) = weight(j);
                simd::dot_int8_4(row(r), row(r + 1), row(r + 2), row(r + 3), q, scales)
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}
