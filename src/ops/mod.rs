//! The numerical building blocks of the transformer. The model calls only these functions for its
//! matmuls, normalization, rotary embeddings, attention, activation and loss.
//!
//! Each one dispatches to a fused CPU kernel (a candle custom op with its own backward) when the
//! input lives on the CPU, and to the composed reference in [`composed`] otherwise — or always, after
//! [`set_fused(false)`](set_fused) or with `MINIMIND_KERNELS=composed` in the environment.

pub mod attention;
pub mod composed;
pub mod gemm;

use candle_core::{Device, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

pub use composed::{
    apply_rope, causal_mask, cross_entropy, dropout, log_softmax_last_dim, rms_norm, softmax_last_dim, swiglu,
    target_log_probs,
};

const UNSET: u8 = 0;
const FUSED: u8 = 1;
const COMPOSED: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNSET);

/// Chooses fused kernels (default) or the composed reference for the whole process.
pub fn set_fused(on: bool) {
    MODE.store(if on { FUSED } else { COMPOSED }, Ordering::Relaxed);
}

/// Whether fused kernels are enabled (they still apply only to CPU tensors).
pub fn fused_enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        FUSED => true,
        COMPOSED => false,
        _ => {
            let on = std::env::var("MINIMIND_KERNELS").map_or(true, |v| v != "composed");
            set_fused(on);
            on
        }
    }
}

fn fused_on(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && fused_enabled()
}

/// `x · wᵀ` for `x` `[.., in]` and a PyTorch-layout weight `w` `[out, in]` (a bias-free Linear).
/// The leading axes are flattened so one 2-D matmul serves any batch shape.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inp = dims[dims.len() - 1];
    let x2 = x.reshape((x.elem_count() / inp, inp))?;
    let y = if fused_on(x) && gemm::available(x, w) { gemm::matmul(&x2, w, false, true)? } else { x2.matmul(&w.t()?)? };
    let mut out_dims = dims.to_vec();
    out_dims[dims.len() - 1] = w.dim(0)?;
    y.reshape(out_dims)
}

/// Causal grouped-query attention `softmax(QKᵀ/√D + mask)·V`: `q` `[B, H, T, D]`, `k`/`v`
/// `[B, K, S, D]` with `S = past + T` (the cache included) and `H = K·rep`; query head `h` uses KV
/// head `h / rep`. `dropout = Some((p, seed))` drops attention probabilities (composed path only).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, dropout: Option<(f64, u64)>) -> Result<Tensor> {
    let f32s = [q, k, v].iter().all(|t| t.dtype() == candle_core::DType::F32);
    if fused_on(q) && f32s && dropout.is_none() {
        attention::causal_attention(q, k, v)
    } else {
        composed::causal_attention(q, k, v, dropout)
    }
}
