//! `minimind bench parity`: one training step of a small model on a device and precision against
//! the CPU in fp32 (the fused kernels) — the loss and every parameter's gradient. What a new device
//! or dtype must pass before its figures mean anything (`tools/gpu-check.sh` runs it on CUDA).

use crate::model::checkpoint::init_model;
use crate::model::params::InitScheme;
use crate::model::{ModelConfig, Precision};
use crate::ops;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Max relative error allowed: fp32 differs only by summation order (1e-4 of the largest value);
/// bf16 keeps 8 mantissa bits (2⁻⁹ relative rounding per value), which after a few layers of
/// matmuls is about 1-3% of a gradient's norm (measured on the CPU), so 5% of its norm.
fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-4,
        Precision::Bf16 => 5e-2,
    }
}

/// Every parameter's gradient by name (`None` for an expert no token was routed to).
type NamedGrads = Vec<(String, Option<Tensor>)>;

/// The loss and the gradient of every parameter (by name) of one step, on `device` in `precision`
/// (`None` for an expert no token was routed to).
fn one_step(config: &ModelConfig, device: &Device, precision: Precision) -> Result<(f64, NamedGrads)> {
    let (mut model, params) = init_model(config, InitScheme::Minimind2, 7, device)?;
    model.set_compute_dtype(precision.dtype());
    let (b, t) = (2, 64);
    let ids: Vec<u32> = (0..b * (t + 1)).map(|i| ((i * 7919 + 13) % config.vocab_size) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, t + 1), device)?;
    let (x, y) = (ids.narrow(1, 0, t)?, ids.narrow(1, 1, t)?.flatten_all()?);
    let mask = Tensor::ones(b * t, DType::F32, device)?;
    let out = model.forward_train(&x, None)?;
    let loss = out.moe.add_aux(ops::cross_entropy(&out.logits, &y, &mask)?)?;
    let grads = loss.backward()?;
    let mut named = Vec::new();
    for (name, var) in &params.entries {
        let grad = grads.get(var.as_tensor()).map(|g| g.to_device(&Device::Cpu)?.to_dtype(DType::F32)).transpose()?;
        named.push((name.clone(), grad));
    }
    Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64, named))
}

/// ‖a − b‖_∞ / ‖b‖_∞ for fp32 (element-wise agreement), ‖a − b‖₂ / ‖b‖₂ for bf16.
fn relative_error(a: &Tensor, b: &Tensor, precision: Precision) -> Result<f64> {
    let diff = (a - b)?;
    let (num, den) = match precision {
        Precision::F32 => (diff.abs()?.flatten_all()?.max(0)?, b.abs()?.flatten_all()?.max(0)?),
        Precision::Bf16 => (diff.sqr()?.sum_all()?.sqrt()?, b.sqr()?.sum_all()?.sqrt()?),
    };
    Ok(num.to_scalar::<f32>()? as f64 / (den.to_scalar::<f32>()? as f64).max(1e-30))
}

/// Prints the comparison; an error when anything is beyond tolerance.
pub fn run(preset: &str, device: &Device, precision: Precision) -> Result<()> {
    let config = ModelConfig { max_position_embeddings: 512, ..ModelConfig::preset(preset)? }.resolved()?;
    let (ref_loss, ref_grads) = one_step(&config, &Device::Cpu, Precision::F32)?;
    let (loss, grads) = one_step(&config, device, precision)?;
    let limit = tolerance(precision);
    let loss_error = (loss - ref_loss).abs() / ref_loss.abs();
    let mut worst = (String::from("loss"), loss_error);
    for ((name, g), (_, r)) in grads.iter().zip(&ref_grads) {
        let e = match (g, r) {
            (Some(g), Some(r)) => relative_error(g, r, precision)?,
            (None, None) if name.contains(".experts.") => continue,
            _ => bail!("{name} has a gradient in one run only (on {device:?}: {})", g.is_some()),
        };
        if e > worst.1 {
            worst = (name.clone(), e);
        }
    }
    println!(
        "parity {preset} on {device:?} in {precision} vs cpu fp32: loss {loss:.6} vs {ref_loss:.6} (rel. error {loss_error:.2e}); \
         {} gradients, worst {} at {:.2e} (tolerance {limit:.0e})",
        grads.len(),
        worst.0,
        worst.1
    );
    if worst.1 > limit {
        bail!("parity failed: {} differs by {:.2e}, beyond {limit:.0e}", worst.0, worst.1);
    }
    println!("parity ok");
    Ok(())
}
