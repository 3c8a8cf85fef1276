//! Fused rotary embedding for CPU fp32 (rotate_half convention), with its backward. For frequency i
//! the pair `(x_i, x_{i+D/2})` rotates by φ: `y_i = x_i·cos − x_{i+D/2}·sin`,
//! `y_{i+D/2} = x_{i+D/2}·cos + x_i·sin`; the backward rotates `dy` by −φ.

use super::cpu::{f32_slice, with_f32};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct Rope;

/// `x` `[B, H, T, D]`, `cos`/`sin` `[T, D]` (the halves repeated, as the tables store them).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
}

/// Rotates every `[T, D]` head block of `x` by `sign·φ` into `y`.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], t: usize, d: usize, sign: f32) -> Vec<f32> {
    let half = d / 2;
    let head = |(y, x): (&mut [std::mem::MaybeUninit<f32>], &[f32])| {
        for p in 0..t {
            let (c, s) = (&cos[p * d..p * d + half], &sin[p * d..p * d + half]);
            let (x, y) = (&x[p * d..(p + 1) * d], &mut y[p * d..(p + 1) * d]);
            for i in 0..half {
                let (a, b, sn) = (x[i], x[i + half], sign * s[i]);
                y[i].write(a * c[i] - b * sn);
                y[i + half].write(b * c[i] + a * sn);
            }
        }
    };
    // SAFETY: each head block's every value is written (`d` is even: pairs cover it).
    unsafe { super::pool::written(x.len(), t * d, |i, y| head((y, &x[i * t * d..][..t * d]))) }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, _, t, d) = l1.shape().dims4()?;
        if l2.dims() != [t, d] || l3.dims() != [t, d] || d % 2 != 0 {
            candle_core::bail!("rope: tables {:?} for input {:?}", l2.dims(), l1.dims());
        }
        let y = rotate(f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?, t, d, 1.0);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, t, d) = x.dims4()?;
        let dx = with_f32(grad, |dy| with_f32(cos, |c| with_f32(sin, |s| rotate(dy, c, s, t, d, -1.0))))???;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None, None))
    }
}
