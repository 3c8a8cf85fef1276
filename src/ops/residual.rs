//! The residual connection `x + y` for CPU fp32 tensors of one shape: a decode step's few rows on the
//! calling thread, a prompt's on the decode loop's pool (candle's element-wise pool would wake one
//! more spinning thread beside the loop's), a training batch's on rayon. The gradient flows to both
//! inputs unchanged.

use super::cpu::f32_slice;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Values per parallel chunk (a decode step's rows are one chunk: no fork-join).
const CHUNK: usize = 1 << 13;

struct Add;

/// `x + y`, same shape, f32 on the CPU.
pub fn add(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&y.contiguous()?, Add)
}

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "residual-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, y) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("residual add: {:?} + {:?}", l1.dims(), l2.dims());
        }
        // SAFETY: each piece's every value is written.
        let out = unsafe {
            super::pool::par_written(x.len(), CHUNK, |c, out| {
                let (x, y) = (&x[c * CHUNK..][..out.len()], &y[c * CHUNK..][..out.len()]);
                for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
                    o.write(a + b);
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.clone())))
    }
}
