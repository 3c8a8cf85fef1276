//! Shared helpers for the fused CPU kernels: borrowing a tensor's f32 data without copying.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

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
