//! Shared helpers for the fused CPU kernels: borrowing a tensor's f32 data without copying, and
//! vectorized f32 ↔ f16 casts.

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

/// The contiguous f32 data behind `storage`/`layout`.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused kernel expects a contiguous tensor"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (copying only if it is not contiguous).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(f32_slice(cpu, layout)?)),
        _ => candle_core::bail!("fused kernel expects a CPU tensor"),
    }
}

/// `t` in `dtype`: between f32 and f16 on the CPU by vectorized conversions (F16C where the CPU has
/// it; candle converts element by element), the same rounding; anything else through `to_dtype`.
pub fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    if t.dtype() == dtype || !t.device().is_cpu() {
        return t.to_dtype(dtype);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (at, n, shape) = (layout.start_offset(), t.elem_count(), t.shape().clone());
    match (&*storage, dtype) {
        (Storage::Cpu(CpuStorage::F32(x)), DType::F16) => {
            let mut out = vec![half::f16::ZERO; n];
            out.convert_from_f32_slice(&x[at..at + n]);
            Tensor::from_vec(out, shape, &Device::Cpu)
        }
        (Storage::Cpu(CpuStorage::F16(x)), DType::F32) => {
            let mut out = vec![0f32; n];
            x[at..at + n].convert_to_f32_slice(&mut out);
            Tensor::from_vec(out, shape, &Device::Cpu)
        }
        _ => t.to_dtype(dtype),
    }
}

/// `op(a)·op(b)` as a new row-major `m×n` buffer: BLAS when one is loaded, else the multi-threaded
/// `gemm` crate (candle's own kernel).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(trans_a: bool, trans_b: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    if let Some(blas) = crate::ops::blas::blas() {
        return blas.sgemm(trans_a, trans_b, m, n, k, a, b);
    }
    let mut c = vec![0f32; m * n];
    // Row-major strides: element (i, j) of a non-transposed m×k matrix is at i·k + j.
    let (a_rs, a_cs) = if trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the strides describe the m×k, k×n and m×n buffers above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    c
}
