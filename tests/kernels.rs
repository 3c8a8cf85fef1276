//! Fused CPU kernels against the composed reference: values and gradients on odd shapes.
mod common;

use candle_core::{Device, Tensor, Var};
use common::*;
use minimind::ops;

/// Values and input gradients of `f` with fused kernels on, then with the composed reference.
fn both_paths(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) -> [(Tensor, Vec<Tensor>); 2] {
    [true, false].map(|fused| {
        ops::set_fused(fused);
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts);
        // A fixed random projection of the output makes every output element matter to the loss.
        let pattern: Vec<f32> = (0..out.elem_count()).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect();
        let proj = Tensor::from_vec(pattern, out.shape(), &Device::Cpu).unwrap().to_dtype(out.dtype()).unwrap();
        let grads = (&out * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let g = vars.iter().map(|v| grads.get(v.as_tensor()).expect("input without gradient").clone()).collect();
        ops::set_fused(true);
        (out.detach(), g)
    })
}

fn assert_close(name: &str, [(a, ga), (b, gb)]: [(Tensor, Vec<Tensor>); 2], tol: f32) {
    let d = max_abs_diff(&a, &b);
    assert!(d <= tol, "{name}: values differ by {d}");
    for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
        let d = max_abs_diff(x, y);
        assert!(d <= tol, "{name}: gradient of input {i} differs by {d}");
    }
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap()
}

#[test]
fn gemm_all_transpositions() {
    // With a BLAS library on the machine this exercises it; without one, candle's fallback.
    eprintln!("BLAS: {:?}", minimind::blas::blas().map(|b| &b.path));
    let (m, k, n) = (37, 19, 23);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(&if ta { [k, m] } else { [m, k] });
        let b = randn(&if tb { [n, k] } else { [k, n] });
        let [fused, _] = both_paths(&[a.clone(), b.clone()], |t| ops::gemm::matmul(&t[0], &t[1], ta, tb).unwrap());
        let reference = both_paths(&[a, b], |t| {
            let a = if ta { t[0].t().unwrap() } else { t[0].clone() };
            let b = if tb { t[1].t().unwrap() } else { t[1].clone() };
            a.matmul(&b).unwrap()
        });
        assert_close(&format!("gemm ta={ta} tb={tb}"), [fused, reference[1].clone()], 1e-4);
    }
}

#[test]
fn linear_matmul_matches_composed() {
    let x = randn(&[3, 17, 40]);
    let w = randn(&[24, 40]);
    assert_close("matmul_nt", both_paths(&[x, w], |t| ops::matmul_nt(&t[0], &t[1]).unwrap()), 1e-4);
}
