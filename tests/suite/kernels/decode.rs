//! Decoding's kernels: the attention helpers, the fused decode step against the composed one, and
//! the argmax that greedy sampling reads.

use super::*;

#[test]
fn decode_attention_helpers_match_scalar_math_and_group_heads_bit_for_bit() {
    for (heads, d, keys) in
        [(1, 64, 1), (4, 64, 13), (2, 32, 8), (3, 48, 19), (1, 5, 3), (4, 128, 9), (5, 64, 4), (3, 24, 7), (6, 64, 33)]
    {
        let q: Vec<f32> = (0..heads * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let k: Vec<f32> = (0..d * keys).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut scores = vec![0f32; heads * keys];
        ops::simd::attention_scores(&q, d, &k, keys, 0.5, &mut scores);
        for h in 0..heads {
            let qh = &q[h * d..(h + 1) * d];
            for j in 0..keys {
                let exact: f32 = qh.iter().zip(&k[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum::<f32>() * 0.5;
                let s = scores[h * keys + j];
                assert!((s - exact).abs() < 1e-4, "d {d} head {h} key {j}: {s} vs {exact}");
            }
            // A head alone, and a key alone, get the same bits.
            let mut alone = vec![0f32; keys];
            ops::simd::attention_scores(qh, d, &k, keys, 0.5, &mut alone);
            assert_eq!(alone, scores[h * keys..(h + 1) * keys]);
            let mut first = [0f32];
            ops::simd::attention_scores(qh, d, &k, 1, 0.5, &mut first);
            assert_eq!(first[0], alone[0]);
        }
        // An f16 cache: the same bits as the f32 kernels on its values widened.
        let k16: Vec<half::f16> = k.iter().map(|&x| half::f16::from_f32(x)).collect();
        let widened: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
        let (mut from_f16, mut from_f32) = (vec![0f32; heads * keys], vec![0f32; heads * keys]);
        ops::simd::attention_scores(&q, d, &k16, keys, 0.5, &mut from_f16);
        ops::simd::attention_scores(&q, d, &widened, keys, 0.5, &mut from_f32);
        assert_eq!(from_f16, from_f32, "f16 keys, d {d}");
        let p: Vec<f32> = (0..heads * keys).map(|j| 1.0 / (j + 1) as f32).collect();
        let (mut from_f16, mut from_f32) = (vec![0f32; heads * d], vec![0f32; heads * d]);
        ops::simd::weighted_rows(&p, keys, &k16, d, &mut from_f16);
        ops::simd::weighted_rows(&p, keys, &widened, d, &mut from_f32);
        assert_eq!(from_f16, from_f32, "f16 values, d {d}");
        let mut out = vec![0f32; heads * d];
        ops::simd::weighted_rows(&p, keys, &k, d, &mut out);
        for h in 0..heads {
            for e in 0..d {
                let exact: f32 = (0..keys).map(|j| p[h * keys + j] * k[j * d + e]).sum();
                let o = out[h * d + e];
                assert!((o - exact).abs() < 1e-4, "d {d} head {h} element {e}: {o} vs {exact}");
            }
            let mut alone = vec![0f32; d];
            ops::simd::weighted_rows(&p[h * keys..(h + 1) * keys], keys, &k, d, &mut alone);
            assert_eq!(alone, out[h * d..(h + 1) * d], "head {h} of {heads} alone");
        }
    }
}

#[test]
fn argmax_is_the_first_largest_and_flags_nan_and_infinity() {
    // The scan it replaces: the first position of the largest value, NaNs ignored.
    fn scan(x: &[f32]) -> usize {
        let max = x.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        x.iter().position(|&v| v == max).unwrap_or(0)
    }
    let mut state = 7u64;
    let mut draw = move |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    for len in (0..70).chain([6400, 6401]) {
        for _ in 0..20 {
            // Few distinct values, so that ties across lanes, chunks and the tail are common.
            let mut x: Vec<f32> = (0..len).map(|_| draw(7) as f32 - 3.0).collect();
            if len > 0 && draw(3) == 0 {
                x[draw(len as u64) as usize] = f32::NEG_INFINITY;
            }
            let (at, bad) = ops::simd::argmax_checked(&x);
            assert_eq!((at, bad), (scan(&x), false), "{x:?}");
            assert_eq!(minimind::infer::sampler::argmax(&x) as usize, at);
            if len > 0 {
                let mut corrupt = x.clone();
                let special = if draw(2) == 0 { f32::NAN } else { f32::INFINITY };
                corrupt[draw(len as u64) as usize] = special;
                assert!(ops::simd::argmax_checked(&corrupt).1, "{special} at some position of {len}");
            }
        }
    }
    assert_eq!(ops::simd::argmax_checked(&[f32::NEG_INFINITY; 20]), (0, false));
    assert_eq!(ops::simd::argmax_checked(&[f32::NAN, 1.0, 2.0]), (2, true));
}

/// The composed decode step the fused one replaces: heads, q/k norm, RoPE, pool writes, attention.
fn composed_decode_step(
    new: &ops::decode_step::NewRows,
    (k_pool, v_pool): (&Tensor, &Tensor),
    scales: Option<(&Tensor, &Tensor)>,
    rows: &[ops::decode_step::PoolRow],
) -> Tensor {
    let d = k_pool.dim(3).unwrap();
    let heads = |z: &Tensor, norm: Option<(&Tensor, f64)>, rotate: bool| {
        let (b, nd) = z.dims2().unwrap();
        let z = ops::composed::split_heads(&z.reshape((1, b, nd)).unwrap(), nd / d, None).unwrap();
        let z = match norm {
            Some((w, eps)) => ops::rms_norm(&z, w, eps).unwrap(),
            None => z,
        };
        if rotate {
            ops::apply_rope(&z, new.rope.0, new.rope.1).unwrap()
        } else {
            z
        }
    };
    let (q, k, v) = (heads(new.q, new.q_norm, true), heads(new.k, new.k_norm, true), heads(new.v, None, false));
    let places: Vec<(usize, usize)> = rows.iter().map(|r| (r.slot, r.len - 1)).collect();
    match scales {
        Some((ks, vs)) => {
            ops::kv_int8::pool_write(k_pool, ks, &k, &places, ops::kv_int8::Stored::Keys).unwrap();
            ops::kv_int8::pool_write(v_pool, vs, &v, &places, ops::kv_int8::Stored::Values).unwrap();
        }
        None => {
            // Row b into its slot at its position, rounded to the pool's type as a cache rounds.
            for (b, &(slot, at)) in places.iter().enumerate() {
                for (pool, x) in [(k_pool, &k), (v_pool, &v)] {
                    let row = ops::cast(&x.narrow(2, b, 1).unwrap(), pool.dtype()).unwrap().contiguous().unwrap();
                    pool.narrow(0, slot, 1).unwrap().slice_set(&row, 2, at).unwrap();
                }
            }
        }
    }
    ops::pool_attention(&q, (k_pool, v_pool), scales, rows).unwrap()
}

#[test]
fn a_fused_decode_step_caches_the_same_rows_and_attends_as_the_composed_one() {
    use ops::decode_step::PoolRow;
    use ops::decode_step::{decode_step, NewRows};
    let (slots, kv, h, d, capacity) = (5, 2, 6, 12, 32);
    // Rows of different lengths in scattered slots; the pools hold earlier positions already.
    let rows = [PoolRow { slot: 3, len: 1 }, PoolRow { slot: 0, len: 17 }, PoolRow { slot: 4, len: 32 }];
    let b = rows.len();
    // Fixed inputs in [−1.5, 1.5) (norm weights near 1), so that the int8 path's error is the same
    // on every run.
    let mut state = 12345u64;
    let mut seeded = |shape: &[usize], centre: f32, spread: f32| {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                centre + spread * (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    };
    let (q, k, v) = (seeded(&[b, h * d], 0.0, 1.5), seeded(&[b, kv * d], 0.0, 1.5), seeded(&[b, kv * d], 0.0, 1.5));
    let angles = seeded(&[b, d], 0.0, 3.0);
    let rope = (angles.cos().unwrap(), angles.sin().unwrap());
    let (q_w, k_w) = (seeded(&[d], 1.0, 0.2), seeded(&[d], 1.0, 0.2));
    let history = seeded(&[slots, kv, capacity, d], 0.0, 1.5);
    for format in ["f32", "f16", "int8"] {
        for norms in [false, true] {
            let pools = || -> (Tensor, Tensor, Option<(Tensor, Tensor)>) {
                match format {
                    "int8" => {
                        let codes = || Tensor::zeros((slots, kv, capacity, d), DType::U8, &Device::Cpu).unwrap();
                        let scales = || Tensor::zeros((slots, kv, capacity), DType::F32, &Device::Cpu).unwrap();
                        let (kp, vp, ks, vs) = (codes(), codes(), scales(), scales());
                        ops::kv_int8::cache_write(&kp, &ks, &history, 0, ops::kv_int8::Stored::Keys).unwrap();
                        ops::kv_int8::cache_write(&vp, &vs, &history, 0, ops::kv_int8::Stored::Values).unwrap();
                        (kp, vp, Some((ks, vs)))
                    }
                    "f16" => (history.to_dtype(DType::F16).unwrap(), history.to_dtype(DType::F16).unwrap(), None),
                    _ => (history.copy().unwrap(), history.copy().unwrap(), None),
                }
            };
            let new = NewRows {
                q: &q,
                k: &k,
                v: &v,
                rope: (&rope.0, &rope.1),
                q_norm: norms.then_some((&q_w, 1e-5)),
                k_norm: norms.then_some((&k_w, 1e-5)),
            };
            let (fk, fv, fs) = pools();
            let fs_ref = fs.as_ref().map(|(a, b)| (a, b));
            let fused = decode_step(&new, (&fk, &fv), fs_ref, &rows).unwrap();
            let (ck, cv, cs) = pools();
            let composed = composed_decode_step(&new, (&ck, &cv), cs.as_ref().map(|(a, b)| (a, b)), &rows);
            let what = format!("{format} pools, norms {norms}");
            assert_eq!(fused.dims(), [1, b, h, d], "{what}");
            // The attention sums in another order than the composed one (int8: integer scores of
            // quantized queries, 16-bit weights); the caches hold the same bits.
            let tolerance = if format == "int8" { 2e-2 } else { 1e-5 };
            let off = max_abs_diff(&fused, &composed);
            assert!(off < tolerance, "{what}: attention off by {off}");
            let bytes = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bytes(&fk), bytes(&ck), "{what}: keys cached");
            assert_eq!(bytes(&fv), bytes(&cv), "{what}: values cached");
            if let (Some(f), Some(c)) = (&fs, &cs) {
                assert_eq!((bytes(&f.0), bytes(&f.1)), (bytes(&c.0), bytes(&c.1)), "{what}: scales");
            }
        }
    }
    // Two rows in one slot would write one place twice: an error, as are lengths past the slot.
    let (kp, vp) = (history.copy().unwrap(), history.copy().unwrap());
    let new = NewRows { q: &q, k: &k, v: &v, rope: (&rope.0, &rope.1), q_norm: None, k_norm: None };
    let twice = [rows[0], rows[1], PoolRow { slot: 0, len: 3 }];
    assert!(decode_step(&new, (&kp, &vp), None, &twice).is_err());
    let past = [rows[0], rows[1], PoolRow { slot: 2, len: capacity + 1 }];
    assert!(decode_step(&new, (&kp, &vp), None, &past).is_err());
    // Keys and values in one storage would be borrowed twice: an error, not a hang.
    assert!(decode_step(&new, (&kp, &kp.clone()), None, &rows).is_err());
}
