//! Int8 weight-only inference: packing, the int8 gemv against the dequantized product, a quantized
//! model's decoding against its own prefill and against f32, and perplexity.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::ops::{self, int8};

fn weights(n: usize, k: usize, seed: u64) -> Tensor {
    crate::common::pth::random_normal(&[n, k], seed)
}

#[test]
fn packing_rounds_each_weight_to_half_a_step_of_its_group() {
    for k in [64, 70, 512] {
        let w = weights(9, k, k as u64);
        let q = int8::quantize(&w).unwrap();
        assert_eq!(q.dims(), &[9, int8::row_bytes(k)]);
        let back = int8::dequantize(&q, k).unwrap();
        let (w, back) = (w.to_vec2::<f32>().unwrap(), back.to_vec2::<f32>().unwrap());
        for (row, row_back) in w.iter().zip(&back) {
            for (g, (group, group_back)) in row.chunks(int8::GROUP).zip(row_back.chunks(int8::GROUP)).enumerate() {
                let step = group.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                for (a, b) in group.iter().zip(group_back) {
                    assert!((a - b).abs() <= step / 2.0 + 1e-6, "k {k} group {g}: {a} → {b}");
                }
            }
        }
    }
    // All-zero groups stay zero (no division by a zero scale).
    let zeros = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
    let back = int8::dequantize(&int8::quantize(&zeros).unwrap(), 32).unwrap();
    assert_eq!(max_abs_diff(&back, &zeros), 0.0);
}

#[test]
fn int8_products_equal_the_dequantized_weight_products() {
    for (m, k, n) in [(1, 64, 7), (3, 70, 130), (4, 512, 300), (8, 64, 33), (9, 96, 65)] {
        let w = weights(n, k, 3);
        let q = int8::quantize(&w).unwrap();
        let dense = int8::dequantize(&q, k).unwrap();
        let x = crate::common::pth::random_normal(&[m, k], 11);
        let expected = x.matmul(&dense.t().unwrap()).unwrap();
        let got = ops::matmul_nt(&x, &q).unwrap();
        assert_eq!(got.dims(), &[m, n]);
        let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(max_abs_diff(&got, &expected) <= 1e-5 * scale.max(1.0), "m {m} k {k} n {n}");
    }
}

#[test]
fn concurrent_callers_get_their_own_results() {
    let w = weights(257, 128, 5);
    let q = int8::quantize(&w).unwrap();
    let xs: Vec<Tensor> = (0..6).map(|i| crate::common::pth::random_normal(&[1, 128], 20 + i)).collect();
    let serial: Vec<Tensor> = xs.iter().map(|x| ops::matmul_nt(x, &q).unwrap()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = xs
            .iter()
            .map(|x| {
                let q = &q;
                s.spawn(move || {
                    (0..49).for_each(|_| drop(ops::matmul_nt(x, q).unwrap()));
                    ops::matmul_nt(x, q).unwrap()
                })
            })
            .collect();
        for (h, expected) in handles.into_iter().zip(&serial) {
            assert_eq!(max_abs_diff(&h.join().unwrap(), expected), 0.0);
        }
    });
}

#[test]
fn a_quantized_model_decodes_as_it_prefills_and_stays_near_f32() {
    let (model, _) = micro_model(21);
    let mut q = model.clone();
    q.quantize_int8().unwrap();
    assert!(q.is_int8() && !model.is_int8());
    let ids = random_ids(1, 12, 97, 2);
    let full = q.forward(&ids, None).unwrap();
    // Token by token through the KV cache (the int8 gemv path) equals the prefill (dequantized path).
    let mut cache = minimind::KvCache::new(&q.config, 1, 32, DType::F32, &Device::Cpu).unwrap();
    for t in 0..12 {
        let step = q.forward_last(&ids.narrow(1, t, 1).unwrap(), Some(&mut cache)).unwrap();
        let expected = full.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&step, &expected) < 1e-4, "position {t}");
    }
    let reference = model.forward(&ids, None).unwrap();
    let spread = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let d = max_abs_diff(&full, &reference);
    assert!(d > 0.0 && d < 0.02 * spread, "int8 logits differ from f32 by {d} (logits up to {spread})");
}

#[test]
fn perplexity_is_the_exponential_of_the_mean_token_loss() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = minimind::Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let config = micro_config(tokenizer.vocab_size(), 4, 2, 16);
    let (model, _) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        4,
        &Device::Cpu,
    )
    .unwrap();
    let data = dir.path().join("eval.jsonl");
    std::fs::write(&data, "{\"text\": \"春风又绿江南岸\"}\n{\"text\": \"明月何时照我还，一二三\"}\n").unwrap();
    let p = minimind::eval::perplexity(&model, &tokenizer, &data, 32, 1, None).unwrap();
    // By hand: every next token of [bos] text [eos], both rows pooled.
    let (mut nll, mut count) = (0f64, 0usize);
    for text in ["春风又绿江南岸", "明月何时照我还，一二三"] {
        let mut ids = vec![tokenizer.bos_id().unwrap()];
        ids.extend(tokenizer.encode(text).unwrap());
        ids.push(tokenizer.eos_id().unwrap());
        let n = ids.len();
        let logits =
            model.forward(&Tensor::new(&ids[..n - 1], &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), 1).unwrap().to_vec2::<f32>().unwrap();
        for (j, row) in logp.iter().enumerate() {
            nll -= row[ids[j + 1] as usize] as f64;
        }
        count += n - 1;
    }
    assert_eq!(p.tokens, count);
    assert!((p.nll - nll / count as f64).abs() < 1e-4, "{} vs {}", p.nll, nll / count as f64);
    assert!((p.value() - (nll / count as f64).exp()).abs() / p.value() < 1e-3);
}

#[test]
fn int8_panels_multiply_int8_activations_exactly_in_any_batch() {
    // 96 inputs: groups of 32 (q8_0's); 256: groups of 128 (whole multiples of 128 take the wide groups).
    for (k, group) in [(96, 32), (256, 128)] {
        int8_panels_are_exact(k, group);
    }
    // Shapes without whole panels and groups keep the row layout.
    use minimind::ops::panel_int8;
    assert!(!panel_int8::packable(&weights(45, 96, 1)) && !panel_int8::packable(&weights(48, 40, 1)));
}

fn int8_panels_are_exact(k: usize, group: usize) {
    use minimind::ops::panel_int8;
    let (n, groups) = (48, k / group);
    assert_eq!(panel_int8::group(k), group);
    let w = weights(n, k, 5);
    let packed = panel_int8::quantize(&w).unwrap();
    assert!(panel_int8::is_packed(&packed) && !panel_int8::is_packed(&int8::quantize(&w).unwrap()));
    assert_eq!(packed.dims(), &[3, groups, panel_int8::block_bytes(group)]);
    // Each weight within half a step of its group's scale (the row layout's rounding; the same
    // weights when the groups are the row layout's 32).
    let dense = panel_int8::dequantize(&packed).unwrap();
    let (q, ws) = panel_int8::codes(&packed).unwrap();
    for (at, (v, d)) in w
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .zip(dense.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .enumerate()
    {
        let scale = ws[at / group];
        assert!((v - d).abs() <= scale / 2.0 + 1e-6 && d == q[at] as f32 * scale, "weight {at}: {v} → {d}");
    }
    if group == int8::GROUP {
        assert_eq!(max_abs_diff(&dense, &int8::dequantize(&int8::quantize(&w).unwrap(), k).unwrap()), 0.0);
    }
    // Activations: scale max|x|/127, codes rounded half to even (on every instruction set), offsets 128·Σa.
    let x = Tensor::randn(0f32, 1., (70, k), &Device::Cpu).unwrap();
    let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let a = panel_int8::quantize_rows(&xs, k);
    for (g, values) in xs.chunks(group).enumerate() {
        let codes = &a.codes[g * group..][..group];
        assert_eq!(a.scales[g], values.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0);
        assert_eq!(a.offsets[g], 128 * codes.iter().map(|&c| c as i32).sum::<i32>());
        for (v, &c) in values.iter().zip(codes) {
            assert_eq!(c as f32, (v * (1.0 / a.scales[g])).round_ties_even(), "group {g}: {v}");
        }
    }
    let zeros = panel_int8::quantize_rows(&vec![0.0; group], group);
    assert_eq!((zeros.codes, zeros.scales, zeros.offsets), (vec![0; group], vec![0.0], vec![0]));
    // The kernel (whichever of AMX, AVX-512 VNNI, AVX2 or portable this CPU or MINIMIND_SIMD picks) is
    // bit for bit the integer dot product of each group, scaled and accumulated in order.
    let mut expected = vec![0f32; 70 * n];
    for (r, f) in (0..70).flat_map(|r| (0..n).map(move |f| (r, f))) {
        let mut acc = 0f32;
        for g in 0..groups {
            let dot: i32 = (g * group..(g + 1) * group).map(|i| q[f * k + i] as i32 * a.codes[r * k + i] as i32).sum();
            acc = (dot as f32 * ws[f * groups + g]).mul_add(a.scales[r * groups + g], acc);
        }
        expected[r * n + f] = acc;
    }
    let all = ops::matmul_nt(&x, &packed).unwrap();
    assert_eq!(all.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected, "k {k}");
    for (start, rows) in [(0, 1), (7, 1), (3, 5), (10, 16), (20, 50)] {
        let part = ops::matmul_nt(&x.narrow(0, start, rows).unwrap(), &packed).unwrap();
        assert_eq!(max_abs_diff(&part, &all.narrow(0, start, rows).unwrap()), 0.0, "k {k}, rows {start}+{rows}");
    }
    // And near the f32 product.
    let exact = x.matmul(&w.t().unwrap()).unwrap();
    let spread = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max_abs_diff(&all, &exact) < 0.02 * spread, "{} of {spread}", max_abs_diff(&all, &exact));
    // 75 panels, which a few threads take several at a time (the last task odd): the same bits too.
    let wide = panel_int8::quantize(&weights(1200, k, 6)).unwrap();
    let all = ops::matmul_nt(&x, &wide).unwrap();
    for (start, rows) in [(0, 1), (7, 1), (3, 5), (10, 16), (20, 50)] {
        let part = ops::matmul_nt(&x.narrow(0, start, rows).unwrap(), &wide).unwrap();
        assert_eq!(max_abs_diff(&part, &all.narrow(0, start, rows).unwrap()), 0.0, "75 panels, rows {start}+{rows}");
    }
}

#[test]
fn int8_kv_scores_equal_their_reference_bit_for_bit() {
    use minimind::ops::int8_attention::{int8_scores, int8_scores_reference, Upcoming};
    use minimind::ops::kv_int8::{as_signed, quantize_rows, Stored};
    // Query heads of one grouped-query group against cached key rows quantized and laid out in
    // blocks of 16 positions as the cache holds them; AVX-512 VNNI or AVX2 where the CPU has them
    // (odd numbers of four values: d = 36, 20); key counts that leave a partial last block, heads
    // past a multiple of four. More heads or values than the stack buffers hold (20 heads;
    // 5 × 256 values) take the heap.
    let shapes = [(4, 64, 37), (3, 64, 8), (4, 128, 5), (2, 32, 19), (5, 64, 1), (20, 64, 9), (5, 256, 3), (4, 64, 48)];
    for (heads, d, keys) in shapes.into_iter().chain([(4, 36, 17), (1, 20, 33), (7, 16, 16)]) {
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) % 2001).map(|x| x as f32 / 1000.0 - 1.0).collect()
        };
        let q = values(heads * d, 7);
        let (codes, scales) = quantize_rows(&values(keys * d, 11), d);
        let blocked = Stored::Keys.lay_out(&codes, d);
        let v = vec![0i8; keys * d];
        let (mut ours, mut reference) = (vec![0f32; heads * keys], vec![0f32; heads * keys]);
        // Asking for memory read next (here: a buffer of 5 KiB) changes nothing.
        let upcoming = vec![1u8; 5 << 10];
        let next = Upcoming { from: upcoming.as_ptr(), bytes: upcoming.len() };
        int8_scores(&q, d, (as_signed(&blocked), &scales), &v, keys, 0.125, &mut ours, next);
        int8_scores_reference(&q, d, (as_signed(&blocked), &scales), keys, 0.125, &mut reference);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ours), bits(&reference), "heads {heads}, d {d}, keys {keys}");
        // And close to the f32 scores of the rows as cached (the queries are quantized too).
        let rows: Vec<f32> = as_signed(&codes)
            .iter()
            .zip(scales.iter().flat_map(|&s| std::iter::repeat_n(s, d)))
            .map(|(&c, s)| c as f32 * s)
            .collect();
        for h in 0..heads {
            for j in 0..keys {
                let exact: f32 = (0..d).map(|i| q[h * d + i] * rows[j * d + i]).sum::<f32>() * 0.125;
                let got = ours[h * keys + j];
                assert!((got - exact).abs() < 0.02 * (1.0 + exact.abs()), "score ({h}, {j}): {got} vs {exact}");
            }
        }
    }
}

#[test]
fn int8_kv_weighted_values_equal_their_reference_bit_for_bit() {
    use minimind::ops::int8_values::{int8_weighted, int8_weighted_reference};
    use minimind::ops::kv_int8::{as_signed, quantize_rows, Stored};
    // Softmax-like weights (times value scales) of a group's heads over value rows quantized and
    // laid out in pairs of positions as the cache holds them; AVX-512 VNNI for 64-wide heads, AVX2
    // for 32-wide, the integer loop otherwise; odd key counts leave a last pair half empty; heads
    // past a multiple of four (two on AVX2); more weights than the stack holds take the heap.
    let shapes = [(4, 64, 37), (3, 64, 8), (4, 128, 5), (2, 32, 19), (5, 64, 1), (3, 32, 2), (1, 16, 7), (2, 64, 2100)];
    for (heads, d, keys) in shapes {
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n as u32).map(|i| (i.wrapping_mul(2654435761) ^ seed) % 2001).map(|x| x as f32 / 1000.0 - 1.0).collect()
        };
        // Positive weights spanning a few decades, one head's all zero.
        let w: Vec<f32> = values(heads * keys, 5)
            .iter()
            .enumerate()
            .map(|(n, x)| if heads > 2 && n / keys == 2 { 0.0 } else { (4.0 * x).exp() / keys as f32 })
            .collect();
        let (codes, _) = quantize_rows(&values(keys * d, 13), d);
        let stored = Stored::Values.lay_out(&codes, d);
        let (mut ours, mut reference) = (vec![f32::NAN; heads * d], vec![f32::NAN; heads * d]);
        int8_weighted(&w, keys, as_signed(&stored), d, &mut ours);
        int8_weighted_reference(&w, keys, as_signed(&stored), d, &mut reference);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ours), bits(&reference), "heads {heads}, d {d}, keys {keys}");
        // And close to the f32 sums over the codes (the weights are quantized to 16 bits).
        for h in 0..heads {
            let top = (0..keys).map(|j| w[h * keys + j]).fold(0f32, f32::max);
            for i in 0..d {
                let exact: f32 = (0..keys).map(|j| w[h * keys + j] * as_signed(&codes)[j * d + i] as f32).sum();
                let got = ours[h * d + i];
                let bound = 127.0 * keys as f32 * top / 65534.0 + 1e-4 * exact.abs();
                assert!((got - exact).abs() <= bound, "value ({h}, {i}): {got} vs {exact}");
            }
        }
    }
    // A NaN weight reaches every output value of its head; all-zero weights give zeros.
    let stored = Stored::Values.lay_out(&[1u8; 64 * 3], 64);
    let mut out = vec![0f32; 2 * 64];
    int8_weighted(&[0.5, f32::NAN, 0.25, 0.0, 0.0, 0.0], 3, as_signed(&stored), 64, &mut out);
    assert!(out[..64].iter().all(|v| v.is_nan()) && out[64..].iter().all(|&v| v == 0.0));
    // No positions: zeros.
    out.fill(1.0);
    int8_weighted(&[], 0, &[], 64, &mut out);
    assert!(out.iter().all(|&v| v == 0.0));
}

#[test]
fn an_int8_kv_cache_holds_exactly_the_rows_it_was_written() {
    use minimind::ops::kv_int8::{
        as_signed, block_capacity, cache_write, dequantize, pool_write, quantize_rows, Stored,
    };
    // Two sequences × two KV heads, 37 positions written in pieces (across blocks of 16 and pairs),
    // read back for 37 and for 22 positions: exactly the quantized rows `c·s`, for keys and values.
    let (b, kv, d, len) = (2, 2, 8, 37);
    let capacity = block_capacity(40);
    let x: Vec<f32> = (0..b * kv * len * d).map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0).collect();
    let x = Tensor::from_vec(x, (b, kv, len, d), &Device::Cpu).unwrap();
    for layout in [Stored::Keys, Stored::Values] {
        let codes = Tensor::zeros((b, kv, capacity, d), DType::U8, &Device::Cpu).unwrap();
        let scales = Tensor::zeros((b, kv, capacity), DType::F32, &Device::Cpu).unwrap();
        let mut at = 0;
        for piece in [5, 1, 16, 15] {
            cache_write(&codes, &scales, &x.narrow(2, at, piece).unwrap(), at, layout).unwrap();
            at += piece;
        }
        for n in [len, 22] {
            let rows = x.narrow(2, 0, n).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (c, s) = quantize_rows(&rows, d);
            let expected: Vec<f32> =
                as_signed(&c).chunks(d).zip(&s).flat_map(|(r, &s)| r.iter().map(move |&c| c as f32 * s)).collect();
            let got = dequantize(&codes, &scales, n, layout).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, expected, "{layout:?}, {n} positions");
        }
        // A decode step's rows into a pool (sequence b's row to slot 1 − b, past the written ones).
        let step = x.narrow(2, 0, 1).unwrap().transpose(0, 2).unwrap().contiguous().unwrap(); // [1, K, B, D]
        pool_write(&codes, &scales, &step, &[(1, len), (0, len)], layout).unwrap();
        let tail = dequantize(&codes, &scales, len + 1, layout).unwrap().narrow(2, len, 1).unwrap();
        let first = dequantize(&codes, &scales, 1, layout).unwrap();
        let swapped = Tensor::cat(&[first.narrow(0, 1, 1).unwrap(), first.narrow(0, 0, 1).unwrap()], 0).unwrap();
        assert_eq!(max_abs_diff(&tail, &swapped), 0.0, "{layout:?}: pool write");
        // Rows of another shape than the cache's (one KV head of two): an error, not a wrong write.
        let one_head = x.narrow(1, 0, 1).unwrap();
        let err = cache_write(&codes, &scales, &one_head, 0, layout).unwrap_err().to_string();
        assert!(err.contains("for a cache of [2, 2, 48, 8]"), "{err}");
        assert!(pool_write(&codes, &scales, &one_head.narrow(0, 0, 1).unwrap(), &[(0, 0)], layout).is_err());
        // Not whole blocks: an error, not a wrong read.
        let odd = Tensor::zeros((1, 1, 20, d), DType::U8, &Device::Cpu).unwrap();
        let odd_scales = Tensor::zeros((1, 1, 20), DType::F32, &Device::Cpu).unwrap();
        assert!(dequantize(&odd, &odd_scales, 3, layout).is_err());
    }
}
