//! The numerical building blocks of the transformer. The model calls only these functions for its
//! matmuls, normalization, rotary embeddings, attention, activation and loss.
//!
//! Each one dispatches to a fused CPU kernel (a candle custom op with its own backward) when the
//! input lives on the CPU, and to the composed reference in [`composed`] otherwise — or always, after
//! [`set_fused(false)`](set_fused) or with `MINIMIND_KERNELS=composed` in the environment.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
pub mod blas;
pub mod composed;
pub(crate) mod cpu;
pub use cpu::cast;
pub mod decode_step;
pub mod gemm;
pub mod gemv;
pub mod heads;
pub mod int8;
pub mod int8_attention;
mod int8_rows;
mod int8_tiles;
pub mod int8_values;
pub mod kv_int8;
pub mod mlp;
pub mod norm;
pub mod panel;
pub mod panel_int8;
pub mod pool;
mod residual;
pub mod rope;
pub mod simd;
mod simd_attention;
pub mod swiglu;
pub mod xent;

pub use cpu::{f32_slice as cpu_f32_slice, with_f32 as with_cpu_f32};

use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

pub use composed::{causal_mask, dropout, log_softmax_last_dim, softmax_last_dim, target_log_probs};

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

/// Fused kernels are fp32 CPU code: every operand must be an f32 CPU tensor.
fn fused_f32(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32) && fused_on(ts[0])
}

/// [`fused_f32`] for a kernel that reads weights as plain `[out, in]` f32 matrices (not int8 or
/// panel packings, which go through [`matmul_nt`]).
fn fused_matrices(inputs: &[&Tensor], weights: &[&Tensor]) -> bool {
    weights.iter().all(|w| w.rank() == 2) && fused_f32(&[inputs, weights].concat())
}

/// RMSNorm: `y = w ⊙ x / sqrt(mean(x²) + ε)`, ε inside the root, normalized in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_f32(&[x, weight]) {
        norm::rms_norm(x, weight, eps)
    } else {
        composed::rms_norm(x, weight, eps)
    }
}

/// A residual connection and the RMSNorm after it, for inference: `(h, rms_norm(h))` with
/// `h = x + y` — in one pass on CPU fp32 ([`norm::add_rms_norm`]), else the two ops.
pub fn residual_add_norm(x: &Tensor, y: &Tensor, weight: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    if fused_f32(&[x, y, weight]) && x.shape() == y.shape() {
        norm::add_rms_norm(x, y, weight, eps)
    } else {
        let h = residual_add(x, y)?;
        let normed = rms_norm(&h, weight, eps)?;
        Ok((h, normed))
    }
}

/// A residual connection `x + y` (same shapes).
pub fn residual_add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if fused_f32(&[x, y]) && x.shape() == y.shape() {
        residual::add(x, y)
    } else {
        x + y
    }
}

/// SwiGLU's gate: `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_f32(&[gate, up]) {
        swiglu::swiglu(gate, up)
    } else {
        composed::swiglu(gate, up)
    }
}

/// Rotary position embedding (rotate_half convention) of `x` `[B, heads, T, D]` with the `[T, D]`
/// table rows of its positions.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_f32(&[x, cos, sin]) {
        rope::apply_rope(x, cos, sin)
    } else {
        composed::apply_rope(x, cos, sin)
    }
}

/// Masked mean cross-entropy `Σ mask·(−log p(y)) / Σ mask` of `logits` `[N, V]`, `targets` `[N]`
/// (u32), `mask` `[N]` (f32 weights).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if fused_f32(&[logits, mask]) {
        xent::cross_entropy(logits, targets, mask)
    } else {
        composed::cross_entropy(logits, targets, mask)
    }
}

/// A packed weight's own `x · Wᵀ`.
type PackedProduct = fn(&Tensor, &Tensor) -> Result<Tensor>;

/// `x · wᵀ` for `x` `[.., in]` and a PyTorch-layout weight `w` `[out, in]` (a bias-free Linear),
/// f32, packed int8 ([`int8`]) or f32 panels ([`panel`]). The leading axes are flattened so one 2-D
/// matmul serves any batch shape.
pub fn matmul_nt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inp = dims[dims.len() - 1];
    let rows = x.elem_count() / inp;
    // A packed weight's own product, and its output width.
    let packed: Option<(PackedProduct, usize)> = if panel_int8::is_packed(w) {
        Some((panel_int8::matmul_nt, w.dim(0)? * panel::WIDTH))
    } else if int8::is_int8(w) {
        Some((int8::matmul_nt, w.dim(0)?))
    } else if panel::is_packed(w) {
        Some((panel::matmul_nt, w.dim(0)? * panel::WIDTH))
    } else {
        None
    };
    if let Some((product, out)) = packed {
        let mut out_dims = dims.to_vec();
        out_dims[dims.len() - 1] = out;
        return product(&x.reshape((rows, inp))?, w)?.reshape(out_dims);
    }
    if fused_f32(&[x, w]) && rows > gemv::MAX_ROWS {
        return gemm::matmul(x, w, false, true); // keeps x's batch axes itself
    }
    let x2 = x.reshape((rows, inp))?;
    let y = if fused_f32(&[x, w]) { gemv::matmul_nt(&x2, w)? } else { x2.matmul(&w.t()?)? };
    let mut out_dims = dims.to_vec();
    out_dims[dims.len() - 1] = w.dim(0)?;
    y.reshape(out_dims)
}

/// Causal grouped-query attention `softmax(QKᵀ/√D + mask)·V`: `q` `[B, H, T, D]`, `k`/`v`
/// `[B, K, S, D]` with `S = past + T` (the cache included) and `H = K·rep`; query head `h` uses KV
/// head `h / rep`. `dropout = Some((p, seed))` drops attention probabilities (composed path only).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, dropout: Option<(f64, u64)>) -> Result<Tensor> {
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        // An f16 KV cache under f32 activations: one token reads it as stored (the fused kernel
        // widens as it reads); otherwise it is widened first.
        let one_token = q.dim(2)? == 1 && dropout.is_none();
        if fused_f32(&[q]) && k.dtype() == DType::F16 && v.dtype() == DType::F16 && one_token {
            return attention::causal_attention(q, k, v);
        }
        return causal_attention(q, &cpu::cast(k, q.dtype())?, &cpu::cast(v, q.dtype())?, dropout);
    }
    if fused_f32(&[q, k, v]) && dropout.is_none() {
        attention::causal_attention(q, k, v)
    } else {
        composed::causal_attention(q, k, v, dropout)
    }
}

/// Attention's input projection: `x` `[B, T, d]` times `w` `[n·D, d]`, split into heads
/// `[B, n, T, D]`, with RoPE (the `[T, D]` table rows of these positions) when given.
pub fn project_heads(x: &Tensor, w: &Tensor, heads: usize, rope: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
    let tables_f32 = rope.is_none_or(|(c, s)| c.dtype() == DType::F32 && s.dtype() == DType::F32);
    if fused_matrices(&[x], &[w]) && tables_f32 && rows > gemv::MAX_ROWS {
        heads::project_heads(x, w, heads, rope)
    } else {
        // Decoding (a few rows) goes through `matmul_nt`'s decode path, then RoPE as its own op
        // (fused on the CPU), exactly as continuous batching's decode step applies it.
        let z = composed::split_heads(&matmul_nt(x, w)?, heads, None)?;
        match rope {
            Some((cos, sin)) => apply_rope(&z, cos, sin),
            None => Ok(z),
        }
    }
}

/// `x · wᵢᵀ` for weights that share the input `x` (q, k and v; gate and up): weights packed alike
/// (f32 or int8 panels) go through one parallel loop, with int8 activations quantized once; others
/// through [`matmul_nt`] one by one.
pub fn matmul_nt_many(x: &Tensor, ws: &[&Tensor]) -> Result<Vec<Tensor>> {
    let many: fn(&Tensor, &[&Tensor]) -> Result<Vec<Tensor>> = if ws.iter().all(|w| panel_int8::is_packed(w)) {
        panel_int8::matmul_nt_many
    } else if ws.iter().all(|w| panel::is_packed(w)) {
        panel::matmul_nt_many
    } else {
        return ws.iter().map(|w| matmul_nt(x, w)).collect();
    };
    let dims = x.dims();
    let inp = dims[dims.len() - 1];
    let ys = many(&x.reshape((x.elem_count() / inp, inp))?, ws)?;
    ys.into_iter()
        .map(|y| {
            let mut out_dims = dims.to_vec();
            out_dims[dims.len() - 1] = y.dim(1)?;
            y.reshape(out_dims)
        })
        .collect()
}

/// One of [`project_heads_many`]'s projections: the weight, its heads, its RoPE tables if rotated.
pub type Projection<'a> = (&'a Tensor, usize, Option<(&'a Tensor, &'a Tensor)>);

/// [`project_heads`] for several weights of one input: q, k and v. Packed (inference) weights share
/// one product ([`matmul_nt_many`]).
pub fn project_heads_many(x: &Tensor, projections: &[Projection]) -> Result<Vec<Tensor>> {
    if projections.iter().any(|(w, ..)| w.rank() == 2) {
        return projections.iter().map(|&(w, heads, rope)| project_heads(x, w, heads, rope)).collect();
    }
    let ws: Vec<&Tensor> = projections.iter().map(|(w, ..)| *w).collect();
    matmul_nt_many(x, &ws)?
        .iter()
        .zip(projections)
        .map(|(z, &(_, heads, rope))| {
            let z = composed::split_heads(z, heads, None)?;
            match rope {
                Some((cos, sin)) => apply_rope(&z, cos, sin),
                None => Ok(z),
            }
        })
        .collect()
}

/// Attention's output projection: heads `[B, H, T, D]` concatenated per position, times `w`
/// `[d, H·D]` → `[B, T, d]`.
pub fn merge_heads(y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = y.dims4()?;
    if fused_matrices(&[y], &[w]) && b * t > gemv::MAX_ROWS {
        heads::merge_heads(y, w)
    } else {
        matmul_nt(&y.transpose(1, 2)?.reshape((b, t, h * d))?, w)
    }
}

/// The SwiGLU block's input half: `silu(x·W_gateᵀ) ⊙ (x·W_upᵀ)` for `x` `[.., d]`, weights `[F, d]`.
pub fn swiglu_in(x: &Tensor, w_gate: &Tensor, w_up: &Tensor) -> Result<Tensor> {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
    if fused_matrices(&[x], &[w_gate, w_up]) && rows > gemv::MAX_ROWS {
        mlp::swiglu_in(x, w_gate, w_up)
    } else {
        let gate_up = matmul_nt_many(x, &[w_gate, w_up])?;
        swiglu(&gate_up[0], &gate_up[1])
    }
}

/// Whether a decode step's rotation, KV writes and attention run as one op
/// ([`decode_step::decode_step`]): f32 projections on the CPU over an f32 or f16 pool, or an int8
/// one (its codes U8, `int8` its scales present).
pub fn fused_decode_step(q: &Tensor, k_pool: &Tensor, int8: bool) -> bool {
    let pool = matches!((k_pool.dtype(), int8), (DType::F32 | DType::F16, false) | (DType::U8, true));
    pool && fused_f32(&[q]) && k_pool.device().is_cpu()
}

/// Continuous batching's decode attention, composed (the reference of [`decode_step`], and the path
/// of devices without it): `q` `[1, H, B, D]` (row b's heads at time index b), KV pools
/// `[slots, K, capacity, D]` (f32, f16, or an int8 cache's codes with `row_scales`
/// `[slots, K, capacity]`); row b attends to positions `0..rows[b].len` of slot `rows[b].slot`.
/// Returns `[1, B, H, D]`, each row's heads together.
pub fn pool_attention(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    row_scales: Option<(&Tensor, &Tensor)>,
    rows: &[decode_step::PoolRow],
) -> Result<Tensor> {
    let per_row = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // (An int8 pool's codes are in blocks of positions.)
            let slot = |pool: &Tensor, scales: Option<&Tensor>, layout: kv_int8::Stored| -> Result<Tensor> {
                let pool = pool.narrow(0, r.slot, 1)?;
                match scales {
                    Some(s) => kv_int8::dequantize(&pool, &s.narrow(0, r.slot, 1)?, r.len, layout),
                    None => cpu::cast(&pool.narrow(2, 0, r.len)?, q.dtype()),
                }
            };
            let (k, v) = (
                slot(k, row_scales.map(|s| s.0), kv_int8::Stored::Keys)?,
                slot(v, row_scales.map(|s| s.1), kv_int8::Stored::Values)?,
            );
            composed::causal_attention(&q.narrow(2, i, 1)?, &k, &v, None)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&per_row, 2)?.transpose(1, 2)
}
