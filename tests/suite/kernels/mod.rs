//! Fused CPU kernels against the composed reference: values and gradients on odd shapes.

use crate::common::*;
use candle_core::{DType, Device, Tensor, Var};
use minimind::ops;

mod decode;

/// Values and input gradients of `fused`, then of `reference`, on the same inputs.
fn both_paths(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
) -> [(Tensor, Vec<Tensor>); 2] {
    let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts);
        // A fixed pattern projection makes every output element matter to the loss.
        let pattern: Vec<f32> = (0..out.elem_count()).map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5).collect();
        let proj = Tensor::from_vec(pattern, out.shape(), &Device::Cpu).unwrap();
        let grads = (&out * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let g = vars.iter().map(|v| grads.get(v.as_tensor()).expect("input without gradient").clone()).collect();
        (out.detach(), g)
    };
    [run(&fused), run(&reference)]
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
    eprintln!("BLAS: {:?}", minimind::ops::blas::blas().map(|b| &b.path));
    let (m, k, n) = (37, 19, 23);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(&if ta { [k, m] } else { [m, k] });
        let b = randn(&if tb { [n, k] } else { [k, n] });
        let run = both_paths(
            &[a, b],
            |t| ops::gemm::matmul(&t[0], &t[1], ta, tb).unwrap(),
            |t| {
                let a = if ta { t[0].t().unwrap() } else { t[0].clone() };
                let b = if tb { t[1].t().unwrap() } else { t[1].clone() };
                a.matmul(&b).unwrap()
            },
        );
        assert_close(&format!("gemm ta={ta} tb={tb}"), run, 1e-4);
    }
}

#[test]
fn linear_matmul_matches_composed() {
    let x = randn(&[3, 17, 40]);
    let w = randn(&[24, 40]);
    let run = both_paths(
        &[x, w],
        |t| ops::matmul_nt(&t[0], &t[1]).unwrap(),
        |t| t[0].broadcast_matmul(&t[1].t().unwrap()).unwrap(),
    );
    assert_close("matmul_nt", run, 1e-4);
}

#[test]
fn attention_matches_composed_on_odd_shapes() {
    // (batch, heads, kv heads, T, past, head_dim): GQA ratios 1/2/4, head_dim 64/80/96,
    // T not a multiple of the 64-row tile, batch 1, a cached prefix, and decoding one token.
    let shapes = [(1, 4, 4, 70, 0, 64), (2, 4, 2, 33, 0, 80), (1, 8, 2, 130, 0, 96), (2, 4, 1, 5, 9, 64)];
    for (b, h, kv, t, past, d) in shapes.into_iter().chain([(1, 2, 1, 1, 20, 32), (3, 8, 2, 1, 30, 64)]) {
        let q = randn(&[b, h, t, d]);
        let k = randn(&[b, kv, past + t, d]);
        let v = randn(&[b, kv, past + t, d]);
        let run = both_paths(
            &[q, k, v],
            |x| ops::attention::causal_attention(&x[0], &x[1], &x[2]).unwrap(),
            |x| ops::composed::causal_attention(&x[0], &x[1], &x[2], None).unwrap(),
        );
        assert_close(&format!("attention b{b} h{h} kv{kv} t{t} past{past} d{d}"), run, 2e-4);
    }
}

#[test]
fn attention_reads_a_strided_cache_view() {
    // Keys/values as the KV cache hands them over: a narrow of a larger pre-allocated buffer.
    let (b, h, kv, d, cap) = (2, 4, 2, 16, 40);
    let k_buf = randn(&[b, kv, cap, d]);
    let v_buf = randn(&[b, kv, cap, d]);
    let (k, v) = (k_buf.narrow(2, 0, 23).unwrap(), v_buf.narrow(2, 0, 23).unwrap());
    for t in [3, 1] {
        let q = randn(&[b, h, t, d]);
        let fused = ops::attention::causal_attention(&q, &k, &v).unwrap();
        let reference = ops::composed::causal_attention(&q, &k, &v, None).unwrap();
        assert!(max_abs_diff(&fused, &reference) < 1e-5, "{t} rows");
    }
}

#[test]
fn rms_norm_matches_composed() {
    // Decode-sized rows (the calling thread) and a prompt's (the loop's pool).
    for shape in [[1, 1, 64], [2, 7, 80], [3, 5, 96], [1, 400, 96]] {
        let x = randn(&shape);
        let w = ((randn(&[shape[2]]) * 0.3).unwrap() + 1.0).unwrap();
        let run = both_paths(
            &[x, w],
            |t| ops::norm::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| ops::composed::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        );
        assert_close(&format!("rms_norm {shape:?}"), run, 1e-4);
    }
}

#[test]
fn a_residual_add_with_its_norm_gives_the_bits_of_the_two_ops() {
    // A decode step's rows (split between the threads), one row, an odd count; a bad shape fails.
    for shape in [[16, 1, 96], [1, 1, 64], [7, 1, 80]] {
        let (x, y) = (randn(&shape), randn(&shape));
        let w = ((randn(&[shape[2]]) * 0.3).unwrap() + 1.0).unwrap();
        let (h, normed) = ops::norm::add_rms_norm(&x, &y, &w, 1e-5).unwrap();
        let h_apart = ops::residual_add(&x, &y).unwrap();
        let normed_apart = ops::norm::rms_norm(&h_apart, &w, 1e-5).unwrap();
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(bits(&h), bits(&h_apart), "sum {shape:?}");
        assert_eq!(bits(&normed), bits(&normed_apart), "norm {shape:?}");
        assert_eq!(h.dims(), &shape, "shape kept");
        // The dispatcher (and the composed path it takes elsewhere) agrees.
        let (_, dispatched) = ops::residual_add_norm(&x, &y, &w, 1e-5).unwrap();
        assert_eq!(bits(&dispatched), bits(&normed_apart), "dispatched {shape:?}");
    }
    let (x, w) = (randn(&[2, 1, 64]), randn(&[64]));
    assert!(ops::norm::add_rms_norm(&x, &randn(&[2, 1, 32]), &w, 1e-5).is_err(), "shapes differ");
    assert!(ops::norm::add_rms_norm(&x, &x, &randn(&[32]), 1e-5).is_err(), "weight of another width");
}

#[test]
fn swiglu_matches_composed() {
    for shape in [[3, 11, 37], [1, 130, 520]] {
        let (g, u) = (randn(&shape), randn(&shape));
        let run = both_paths(
            &[(g * 3.0).unwrap(), u],
            |t| ops::swiglu::swiglu(&t[0], &t[1]).unwrap(),
            |t| ops::composed::swiglu(&t[0], &t[1]).unwrap(),
        );
        assert_close(&format!("swiglu {shape:?}"), run, 1e-5);
    }
}

#[test]
fn residual_add_is_the_plain_sum_in_every_size() {
    // A decode step's rows, a prompt's (the loop's pool) and a training batch's (rayon).
    for shape in [[1, 1, 512], [1, 128, 512], [2, 520, 512]] {
        let (x, y) = (randn(&shape), randn(&shape));
        let run = both_paths(&[x, y], |t| ops::residual_add(&t[0], &t[1]).unwrap(), |t| (&t[0] + &t[1]).unwrap());
        assert_close(&format!("residual add {shape:?}"), run, 0.0);
    }
}

#[test]
fn rope_matches_composed() {
    for (b, h, t, d) in [(1, 1, 1, 64), (2, 3, 13, 80), (1, 2, 70, 96), (1, 4, 120, 96)] {
        let x = randn(&[b, h, t, d]);
        let config = minimind::ModelConfig { hidden_size: d * 8, max_position_embeddings: 128, ..Default::default() };
        let rope = minimind::model::RotaryEmbedding::new(&config, &Device::Cpu).unwrap();
        let (cos, sin) = (rope.cos.narrow(0, 5, t).unwrap(), rope.sin.narrow(0, 5, t).unwrap());
        let run = both_paths(
            &[x],
            |x| ops::rope::apply_rope(&x[0], &cos, &sin).unwrap(),
            |x| ops::composed::apply_rope(&x[0], &cos, &sin).unwrap(),
        );
        assert_close(&format!("rope {b}x{h}x{t}x{d}"), run, 1e-5);
    }
    // Pairs (x_i, x_{i+D/2}) need an even head size: an odd one is an error, not unwritten values.
    let odd = randn(&[1, 1, 2, 5]);
    assert!(ops::rope::apply_rope(&odd, &randn(&[2, 5]), &randn(&[2, 5])).is_err());
}

#[test]
fn cross_entropy_matches_composed_with_masked_rows() {
    let (n, v) = (37, 101);
    let logits = (randn(&[n, v]) * 4.0).unwrap();
    let targets = random_ids(1, n, v, 3).flatten_all().unwrap();
    let mask: Vec<f32> = (0..n)
        .map(|i| {
            if i % 5 == 0 {
                0.0
            } else if i % 7 == 0 {
                10.0
            } else {
                1.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, n, &Device::Cpu).unwrap();
    let run = both_paths(
        &[logits],
        |x| ops::xent::cross_entropy(&x[0], &targets, &mask).unwrap(),
        |x| ops::composed::cross_entropy(&x[0], &targets, &mask).unwrap(),
    );
    assert_close("cross_entropy", run, 1e-5);
    // Nothing supervised: loss 0 and zero gradients on both paths, not 0/0.
    let none = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let run = both_paths(
        &[randn(&[n, v])],
        |x| ops::xent::cross_entropy(&x[0], &targets, &none).unwrap(),
        |x| ops::composed::cross_entropy(&x[0], &targets, &none).unwrap(),
    );
    assert_eq!(run[0].0.to_scalar::<f32>().unwrap(), 0.0);
    assert_close("cross_entropy, empty mask", run, 0.0);
    // A target outside the vocabulary is an error, not a read past the row.
    let bad = Tensor::from_vec(vec![v as u32; n], n, &Device::Cpu).unwrap();
    assert!(ops::xent::cross_entropy(&randn(&[n, v]), &bad, &mask).is_err());
}

#[test]
fn in_place_adamw_matches_composed_update() {
    use minimind::train::optim::{AdamW, AdamWConfig};
    let (model_a, params_a) = micro_model(8);
    let (_, params_b) = micro_model(8);
    let ids = random_ids(2, 9, 97, 4);
    let (x, y) = (ids.narrow(1, 0, 8).unwrap(), ids.narrow(1, 1, 8).unwrap().flatten_all().unwrap());
    let mask = Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap();
    let loss = ops::cross_entropy(&model_a.forward_train(&x, None).unwrap().logits, &y, &mask).unwrap();
    let store = loss.backward().unwrap();
    let grads: Vec<Tensor> = params_a.vars().map(|v| store.get(v.as_tensor()).unwrap().detach()).collect();
    let mut fused = AdamW::new(&params_a, AdamWConfig::default()).unwrap();
    let mut reference = AdamW::composed(&params_b, AdamWConfig::default()).unwrap();
    for step in 0..3 {
        fused.step(&grads, 1e-2, 0.5).unwrap();
        reference.step(&grads, 1e-2, 0.5).unwrap();
        for ((name, a), (_, b)) in params_a.entries.iter().zip(&params_b.entries) {
            let d = max_abs_diff(a.as_tensor(), b.as_tensor());
            assert!(d < 1e-6, "step {step}: {name} differs by {d}");
        }
    }
    let moved = max_abs_diff(params_a.entries[1].1.as_tensor(), micro_model(8).1.entries[1].1.as_tensor());
    assert!(moved > 1e-3, "parameters did not move");
}

#[test]
fn gemv_matches_composed_for_decode_rows() {
    for m in 1..=4 {
        let x = randn(&[m, 67]);
        let w = randn(&[45, 67]);
        let run = both_paths(
            &[x, w],
            |t| ops::gemv::matmul_nt(&t[0], &t[1]).unwrap(),
            |t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        );
        assert_close(&format!("gemv m={m}"), run, 1e-4);
    }
}

#[test]
fn head_projections_match_composed() {
    for (b, t, d_model, n, d) in [(1, 7, 48, 2, 80), (2, 13, 40, 4, 64), (2, 5, 96, 3, 96)] {
        let config = minimind::ModelConfig { hidden_size: 8 * d, max_position_embeddings: 64, ..Default::default() };
        let rope = minimind::model::RotaryEmbedding::new(&config, &Device::Cpu).unwrap();
        let (cos, sin) = (rope.cos.narrow(0, 3, t).unwrap(), rope.sin.narrow(0, 3, t).unwrap());
        let x = randn(&[b, t, d_model]);
        let w = randn(&[n * d, d_model]);
        for with_rope in [true, false] {
            let tables = with_rope.then_some((&cos, &sin));
            let run = both_paths(
                &[x.clone(), w.clone()],
                |a| ops::heads::project_heads(&a[0], &a[1], n, tables).unwrap(),
                |a| ops::composed::project_heads(&a[0], &a[1], n, tables).unwrap(),
            );
            assert_close(&format!("project_heads {b}x{t}x{d_model}→{n}x{d} rope={with_rope}"), run, 2e-4);
        }
        let y = randn(&[b, n, t, d]);
        let wo = randn(&[d_model, n * d]);
        let run = both_paths(
            &[y, wo],
            |a| ops::heads::merge_heads(&a[0], &a[1]).unwrap(),
            |a| ops::composed::merge_heads(&a[0], &a[1]).unwrap(),
        );
        assert_close(&format!("merge_heads {b}x{n}x{t}x{d}→{d_model}"), run, 2e-4);
    }
}

#[test]
fn swiglu_input_half_matches_composed() {
    let x = randn(&[2, 9, 40]);
    let (wg, wu) = (randn(&[56, 40]), randn(&[56, 40]));
    let run = both_paths(
        &[x, wg, wu],
        |a| ops::mlp::swiglu_in(&a[0], &a[1], &a[2]).unwrap(),
        |a| {
            let proj = |w: &Tensor| a[0].broadcast_matmul(&w.t().unwrap()).unwrap();
            ops::composed::swiglu(&proj(&a[1]), &proj(&a[2])).unwrap()
        },
    );
    assert_close("swiglu_in", run, 2e-4);
}

#[test]
fn vectorized_helpers_match_scalar_math() {
    use minimind::ops::simd;
    let mut worst = 0f64;
    for i in 0..20_000 {
        let x = -87.0 + i as f32 * (87.0 + 80.0) / 20_000.0;
        let (fast, exact) = (simd::exp(x) as f64, (x as f64).exp());
        worst = worst.max((fast - exact).abs() / exact);
    }
    assert!(worst < 5e-7, "relative error of exp: {worst}");
    let xs: Vec<f32> = (0..37).map(|i| ((i * 17) % 11) as f32 * 0.7 - 3.0).collect();
    let ys: Vec<f32> = (0..37).map(|i| ((i * 5) % 7) as f32 * 0.3 - 1.0).collect();
    let dot: f32 = xs.iter().zip(&ys).map(|(a, b)| a * b).sum();
    assert!((simd::dot(&xs, &ys) - dot).abs() < 1e-4);
    assert_eq!(simd::max(&xs), xs.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let sum: f32 = xs.iter().map(|v| (v - 1.5).exp()).sum();
    assert!((simd::exp_sum(&xs, 1.5) - sum).abs() / sum < 1e-5);
    let mut e = xs.clone();
    assert!((simd::exp_shifted_sum(&mut e, 1.5) - sum).abs() / sum < 1e-5);
    assert!((e[3] - (xs[3] - 1.5).exp()).abs() < 1e-5);
}

#[test]
fn attention_accepts_size_one_axes_with_any_stride() {
    // [1, K, 1, D] made by transposing [1, 1, K, D]: contiguous for candle, odd strides on size-1 axes.
    let k = randn(&[1, 1, 2, 16]).transpose(1, 2).unwrap();
    let v = randn(&[1, 1, 2, 16]).transpose(1, 2).unwrap();
    let q = randn(&[1, 4, 1, 16]);
    let fused = ops::attention::causal_attention(&q, &k, &v).unwrap();
    let reference = ops::composed::causal_attention(&q, &k, &v, None).unwrap();
    assert!(max_abs_diff(&fused, &reference) < 1e-5);
}

#[test]
fn panels_pack_unpack_and_refuse_what_they_cannot_hold() {
    let w = randn(&[48, 37]);
    let packed = ops::panel::pack(&w).unwrap();
    assert_eq!(packed.dims(), &[3, 37, 16]);
    assert!(ops::panel::is_packed(&packed) && !ops::panel::is_packed(&w));
    assert_eq!(max_abs_diff(&ops::panel::unpack(&packed).unwrap(), &w), 0.0);
    // panel[p][i][j] = W[16p + j][i]
    let (p, i, j) = (2, 5, 7);
    let at = packed.get(p).unwrap().get(i).unwrap().get(j).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(at, w.get(16 * p + j).unwrap().get(i).unwrap().to_scalar::<f32>().unwrap());
    assert!(!ops::panel::packable(&randn(&[45, 37])), "45 features are not whole panels");
    assert!(!ops::panel::packable(&w.to_dtype(candle_core::DType::BF16).unwrap()));
    assert!(ops::panel::pack(&randn(&[45, 37])).is_err());
}

#[test]
fn panel_products_match_composed_and_give_a_row_the_same_bits_in_any_batch() {
    // 3 panels (a pair and a single on AVX-512), inputs not a multiple of any vector width; and 75
    // panels, which a few threads take several at a time (the last task odd).
    for n in [48, 1200] {
        let w = randn(&[n, 67]);
        let packed = ops::panel::pack(&w).unwrap();
        let x = randn(&[70, 67]);
        let all = ops::panel::matmul_nt(&x, &packed).unwrap();
        assert!(max_abs_diff(&all, &x.matmul(&w.t().unwrap()).unwrap()) < 1e-4);
        // Through the model's dispatch, with batch axes.
        let x3 = x.reshape((7, 10, 67)).unwrap();
        assert_eq!(max_abs_diff(&ops::matmul_nt(&x3, &packed).unwrap().reshape((70, n)).unwrap(), &all), 0.0);
        for (start, rows) in [(0, 1), (5, 1), (3, 4), (9, 8), (2, 9), (40, 17), (0, 64)] {
            let part = ops::panel::matmul_nt(&x.narrow(0, start, rows).unwrap(), &packed).unwrap();
            let same = all.narrow(0, start, rows).unwrap();
            assert_eq!(max_abs_diff(&part, &same), 0.0, "{n} features, rows {start}..{} alone", start + rows);
        }
    }
}

#[test]
fn weights_sharing_an_input_multiply_as_one_product_each() {
    // q, k, v-like widths (f32 panels, int8 panels, plain weights) over 5 and 40 rows with batch axes.
    let plain: Vec<Tensor> = [64, 16, 32].iter().map(|&n| randn(&[n, 96])).collect();
    let f32_panels: Vec<Tensor> = plain.iter().map(|w| ops::panel::pack(w).unwrap()).collect();
    let int8_panels: Vec<Tensor> = plain.iter().map(|w| ops::panel_int8::quantize(w).unwrap()).collect();
    let row_int8 = ops::int8::quantize(&plain[1]).unwrap();
    let mixed = vec![f32_panels[0].clone(), row_int8, plain[2].clone()];
    for rows in [5, 40] {
        let x = randn(&[1, rows, 96]);
        for ws in [&plain, &f32_panels, &int8_panels, &mixed] {
            let refs: Vec<&Tensor> = ws.iter().collect();
            let many = ops::matmul_nt_many(&x, &refs).unwrap();
            assert_eq!(many.len(), 3);
            for (y, w) in many.iter().zip(ws) {
                let one = ops::matmul_nt(&x, w).unwrap();
                assert_eq!(y.dims(), one.dims());
                assert_eq!(max_abs_diff(y, &one), 0.0, "{rows} rows, weight {:?}", w.dims());
            }
        }
    }
}

#[test]
fn inference_loads_f32_models_as_panels_and_int8_models_as_int8() {
    let dir = tempfile::tempdir().unwrap();
    let folder = micro_v2_folder(dir.path());
    let cpu = Device::Cpu;
    let (packed, _) = minimind::infer::load(&folder, &cpu, &Default::default()).unwrap();
    let attention = &packed.model.layers[0].self_attn;
    assert!(ops::panel::is_packed(&attention.q_proj.weight) && ops::panel::is_packed(&packed.lm_head.weight));
    // The packed model computes what the checkpoint does, to rounding.
    let (plain, _) = minimind::model::checkpoint::load_model(&folder, &cpu, candle_core::DType::F32, false).unwrap();
    let ids = Tensor::new(&[[1u32, 200, 300, 4000, 17]], &cpu).unwrap();
    let d = max_abs_diff(&packed.forward(&ids, None).unwrap(), &plain.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "packed logits differ by {d}");
    let options = minimind::infer::LoadOptions { int8: true, ..Default::default() };
    let (int8, _) = minimind::infer::load(&folder, &cpu, &options).unwrap();
    assert!(int8.is_int8() && !ops::panel::is_packed(&int8.model.layers[0].self_attn.q_proj.weight));
}

#[test]
fn casts_between_f32_and_f16_round_as_candle_does() {
    // A transposed (non-contiguous) tensor with values needing rounding, tiny, huge and negative.
    let x = (randn(&[3, 37]) * 1000.0).unwrap().t().unwrap();
    let half = ops::cast(&x, DType::F16).unwrap();
    assert_eq!(half.dims(), &[37, 3]);
    let reference = x.to_dtype(DType::F16).unwrap();
    let bits = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(bits(&half), bits(&reference));
    let back = ops::cast(&half, DType::F32).unwrap();
    assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), bits(&reference));
    // Same dtype: the tensor itself.
    assert_eq!(max_abs_diff(&ops::cast(&x, DType::F32).unwrap(), &x), 0.0);
}

#[test]
fn runs_of_a_parallel_loop_take_every_index_once_and_say_which_follow_on_their_thread() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let threads = ops::pool::threads();
    for n in [0usize, 1, 2, 3, 17, 1000, 20_000] {
        // Each thread's indices in the order it ran them, with what it was told.
        let seen: Mutex<HashMap<std::thread::ThreadId, Vec<(usize, bool)>>> = Mutex::new(HashMap::new());
        ops::pool::for_each_in_runs(n, &|i, follows| {
            // Some work outside the lock, so that the threads run side by side.
            std::hint::black_box((0..2_000).fold(i, |a, b| a ^ b));
            seen.lock().unwrap().entry(std::thread::current().id()).or_default().push((i, follows));
        });
        let seen = seen.into_inner().unwrap();
        let mut all: Vec<usize> = seen.values().flatten().map(|&(i, _)| i).collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "n = {n}: every index exactly once");
        for order in seen.values() {
            for (j, &(i, follows)) in order.iter().enumerate() {
                // `follows` only when this thread ran i − 1 just before (it may not know it did).
                if follows {
                    assert!(
                        j > 0 && order[j - 1].0 + 1 == i,
                        "n = {n}: {i} said to follow {:?}",
                        order.get(j.wrapping_sub(1))
                    );
                }
            }
        }
        if n >= 8 * threads {
            // Runs: most indices follow their predecessor on the same thread.
            let following = seen.values().flatten().filter(|&&(_, f)| f).count();
            assert!(following * 2 > n, "n = {n}: only {following} indices followed their predecessor");
        }
    }
}
