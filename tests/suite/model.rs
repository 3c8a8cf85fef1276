//! Model structure, math and gradients.

use crate::common::*;
use candle_core::{DType, Device, Tensor, D};
use minimind::model::checkpoint::init_model;
use minimind::model::params::InitScheme;
use minimind::model::{rope_inv_freq, KvCache, RotaryEmbedding};
use minimind::ops;
use minimind::ModelConfig;

#[test]
fn preset_parameter_counts_and_ffn_widths() {
    let small = ModelConfig::preset("minimind2-small").unwrap();
    let base = ModelConfig::preset("minimind2").unwrap();
    assert_eq!(small.num_parameters(), 25_829_888);
    assert_eq!(base.num_parameters(), 104_030_976);
    assert_eq!(small.intermediate_size, Some(1408));
    assert_eq!(base.intermediate_size, Some(2048));
    assert_eq!(ModelConfig::default_intermediate_size(640), 1728);
    // The count is what the built model really holds.
    let (_, params) = init_model(&small, InitScheme::Minimind2, 0, &Device::Cpu).unwrap();
    assert_eq!(params.num_elements(), 25_829_888);
    assert!(ModelConfig::preset("nope").is_err());
}

#[test]
fn config_json_round_trip_writes_resolved_ffn() {
    let c = ModelConfig::preset("tiny").unwrap();
    let json = c.to_json().unwrap();
    assert!(json.contains("\"intermediate_size\": 384"), "{json}");
    let back: ModelConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    // A hand-written config with only a few fields gets MiniMind2 defaults and the derived width.
    let partial: ModelConfig =
        serde_json::from_str(r#"{"hidden_size": 768, "num_hidden_layers": 16, "torch_dtype": "float16"}"#).unwrap();
    assert_eq!(partial.resolved().unwrap().intermediate_size, Some(2048));
}

#[test]
fn invalid_configs_are_rejected() {
    let bad = ModelConfig { num_attention_heads: 7, ..ModelConfig::default() };
    assert!(bad.resolved().unwrap_err().to_string().contains("divisible"));
    let moe = ModelConfig { use_moe: true, num_experts_per_tok: 5, n_routed_experts: 4, ..ModelConfig::default() };
    assert!(moe.resolved().unwrap_err().to_string().contains("num_experts_per_tok"));
    let scoring = ModelConfig { use_moe: true, scoring_func: "sigmoid".into(), ..ModelConfig::default() };
    assert!(scoring.resolved().unwrap_err().to_string().contains("softmax"));
}

#[test]
fn rope_tables_match_reference_values() {
    let f64_ = rope_inv_freq(64, 1e6);
    assert!((f64_[1] - 0.6493816).abs() < 1e-6, "{}", f64_[1]);
    assert!((f64_[31] - 1.5399e-6).abs() < 1e-9);
    assert!((rope_inv_freq(96, 1e6)[1] - 0.7498942).abs() < 1e-6);
    let config = ModelConfig { max_position_embeddings: 8, ..ModelConfig::default() };
    let rope = RotaryEmbedding::new(&config, &Device::Cpu).unwrap();
    let cos: Vec<Vec<f32>> = rope.cos.to_vec2().unwrap();
    let sin: Vec<Vec<f32>> = rope.sin.to_vec2().unwrap();
    // Row p, column i and i + D/2 both hold p·inv_freq[i].
    assert_eq!(cos[0][0], 1.0);
    assert!((cos[3][1] - (3.0f32 * 0.6493816).cos()).abs() < 1e-6);
    assert!((sin[3][33] - (3.0f32 * 0.6493816).sin()).abs() < 1e-6);
    assert_eq!(cos[5][2], cos[5][34]);
}

#[test]
fn rope_rotates_pairs_i_and_i_plus_half() {
    // One head, D = 4, position 1: pairs (x0, x2) and (x1, x3) rotate by φ0, φ1.
    let x = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap().reshape((1, 1, 1, 4)).unwrap();
    let (p0, p1) = (1.0f32, 1.0f32 / 1e6f32.powf(0.5));
    let cos = Tensor::new(&[[p0.cos(), p1.cos(), p0.cos(), p1.cos()]], &Device::Cpu).unwrap();
    let sin = Tensor::new(&[[p0.sin(), p1.sin(), p0.sin(), p1.sin()]], &Device::Cpu).unwrap();
    let y: Vec<f32> = ops::apply_rope(&x, &cos, &sin).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let expect = [
        1.0 * p0.cos() - 3.0 * p0.sin(),
        2.0 * p1.cos() - 4.0 * p1.sin(),
        3.0 * p0.cos() + 1.0 * p0.sin(),
        4.0 * p1.cos() + 2.0 * p1.sin(),
    ];
    for (a, b) in y.iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{y:?} vs {expect:?}");
    }
}

#[test]
fn rms_norm_matches_hand_computation() {
    let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[0.5f32, 1., 2., 1.], &Device::Cpu).unwrap();
    let y: Vec<f32> = ops::rms_norm(&x, &w, 1e-5).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
    // mean(x²) = 30/4 = 7.5; ε sits inside the root.
    let r = 1.0 / (7.5f64 + 1e-5).sqrt();
    let expect = [0.5 * r, 2.0 * r, 6.0 * r, 4.0 * r];
    for (a, b) in y.iter().zip(expect) {
        assert!((*a as f64 - b).abs() < 1e-6, "{y:?}");
    }
}

/// Attention with explicit `repeat_kv` and a full score matrix, as MiniMind writes it.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (b, h, t, d) = q.dims4().unwrap();
    let kv = k.dim(1).unwrap();
    let s = k.dim(2).unwrap();
    let rep = h / kv;
    let repeat = |x: &Tensor| x.unsqueeze(2).unwrap().repeat((1, 1, rep, 1, 1)).unwrap().reshape((b, h, s, d)).unwrap();
    let (k, v) = (repeat(k), repeat(v));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask = ops::causal_mask(t, s - t, &Device::Cpu).unwrap();
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    probs.matmul(&v).unwrap()
}

#[test]
fn grouped_attention_equals_repeat_kv_reference() {
    for (h, kv, past) in [(4, 1, 0), (4, 2, 0), (4, 4, 0), (6, 2, 3)] {
        let t = 5;
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, h, t, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, kv, past + t, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, kv, past + t, 8), &dev).unwrap();
        let ours = ops::causal_attention(&q, &k, &v, None).unwrap();
        let reference = reference_attention(&q, &k, &v);
        assert!(max_abs_diff(&ours, &reference) < 1e-5, "h={h} kv={kv} past={past}");
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let (model, _) = micro_model(1);
    let ids = random_ids(2, 12, 97, 7);
    let full = model.forward(&ids, None).unwrap();
    let mut cache = KvCache::new(&model.config, 2, 12, DType::F32, &Device::Cpu).unwrap();
    // Prefill 5, then a chunk of 3, then one token at a time.
    let mut pieces = vec![model.forward(&ids.narrow(1, 0, 5).unwrap(), Some(&mut cache)).unwrap()];
    pieces.push(model.forward(&ids.narrow(1, 5, 3).unwrap(), Some(&mut cache)).unwrap());
    for p in 8..12 {
        pieces.push(model.forward(&ids.narrow(1, p, 1).unwrap(), Some(&mut cache)).unwrap());
    }
    let cached = Tensor::cat(&pieces, 1).unwrap();
    assert_eq!(cache.len(), 12);
    assert!(max_abs_diff(&full, &cached) <= 1e-4, "diff {}", max_abs_diff(&full, &cached));
    // The cache refuses to overflow instead of corrupting memory.
    assert!(model.forward(&ids.narrow(1, 0, 1).unwrap(), Some(&mut cache)).is_err());
}

/// The logits of `ids` fed through a fresh cache of the model's KV format in pieces of `sizes` tokens.
fn decoded_in_pieces(model: &minimind::MiniMindForCausalLM, ids: &Tensor, sizes: &[usize]) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let mut cache = KvCache::new(&model.config, b, t, model.kv_dtype(), &Device::Cpu).unwrap();
    let mut at = 0;
    let pieces: Vec<Tensor> = sizes
        .iter()
        .map(|&n| {
            let piece = model.forward(&ids.narrow(1, at, n).unwrap(), Some(&mut cache)).unwrap();
            at += n;
            piece
        })
        .collect();
    Tensor::cat(&pieces, 1).unwrap()
}

/// How far [`decoded_in_pieces`] lands from `full`, on the fused kernels and on the composed
/// reference (the fused ones switched back on after).
fn off_by_kernels(model: &minimind::MiniMindForCausalLM, ids: &Tensor, full: &Tensor, sizes: &[usize]) -> [f32; 2] {
    let off = [true, false].map(|fused| {
        ops::set_fused(fused);
        max_abs_diff(full, &decoded_in_pieces(model, ids, sizes))
    });
    ops::set_fused(true);
    off
}

#[test]
fn an_f16_kv_cache_decodes_close_to_the_f32_one() {
    let (mut model, _) = micro_model(5);
    let ids = random_ids(2, 12, 97, 9);
    let full = model.forward(&ids, None).unwrap();
    model.set_kv_f16(true).unwrap();
    assert_eq!(model.kv_dtype(), DType::F16);
    // Prefill 6 (attending over its own keys and values rounded to f16), then one token at a time
    // (the fused kernel reading the f16 cache), on the fused kernels and the composed reference.
    for (fused, diff) in [true, false].into_iter().zip(off_by_kernels(&model, &ids, &full, &[6, 1, 1, 1, 1, 1, 1])) {
        assert!(diff > 0.0 && diff < 2e-2, "fused {fused}: f16 cache off by {diff}");
    }
    // Only f32 activations on the CPU cache in f16.
    let mut bf16 = model.with_weights_in(DType::BF16).unwrap();
    assert!(bf16.set_kv_f16(true).is_err());
}

#[test]
fn an_int8_kv_cache_decodes_close_to_the_f32_one() {
    let (mut model, _) = micro_model(5);
    let ids = random_ids(2, 40, 97, 9);
    let full = model.forward(&ids, None).unwrap();
    model.set_kv_int8(true).unwrap();
    assert_eq!(model.kv_dtype(), DType::U8);
    // Prefill 19 (attending over its own rows as cached, its keys across two blocks of 16
    // positions), a chunk of 2 (over the cached prefix, dequantized), then one token at a time past
    // the next block's start (the fused kernel reading the codes), on the fused kernels and the
    // composed reference.
    let sizes: Vec<usize> = [19, 2].into_iter().chain([1; 19]).collect();
    for (fused, diff) in [true, false].into_iter().zip(off_by_kernels(&model, &ids, &full, &sizes)) {
        assert!(diff > 0.0 && diff < 0.1, "fused {fused}: int8 cache off by {diff}");
    }
    // A pool takes over only a cache of its own format.
    let mut pool = minimind::model::KvPool::new(&model.config, 2, 12, DType::U8, &Device::Cpu).unwrap();
    let f16 = KvCache::new(&model.config, 1, 12, DType::F16, &Device::Cpu).unwrap();
    assert!(pool.load(0, &f16).is_err());
    // Only f32 activations on the CPU cache in int8, and only heads of a multiple of 4 values (a
    // key's values are stored four together).
    let mut bf16 = model.with_weights_in(DType::BF16).unwrap();
    assert!(bf16.set_kv_int8(true).is_err());
    let (mut six, _) = init(&micro_config(97, 4, 2, 6), 1);
    let err = six.set_kv_int8(true).unwrap_err().to_string();
    assert!(err.contains("head_dim must be a multiple of 4 (not 6)"), "{err}");
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    let (model, params) = micro_model(3);
    let ids = random_ids(2, 9, 97, 11);
    let x = ids.narrow(1, 0, 8).unwrap();
    let y = ids.narrow(1, 1, 8).unwrap().flatten_all().unwrap();
    let mask = Tensor::ones(16, DType::F32, &Device::Cpu).unwrap();
    let loss = ops::cross_entropy(&model.forward_train(&x, None).unwrap().logits, &y, &mask).unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(params.entries.len(), 1 + 2 * 9 + 1);
    for (name, var) in &params.entries {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
}

#[test]
fn initial_loss_is_ln_vocab_and_init_is_pytorch_default() {
    let config = ModelConfig::preset("tiny").unwrap();
    let (model, params) = init_model(&config, InitScheme::Minimind2, 5, &Device::Cpu).unwrap();
    let ids = random_ids(2, 33, config.vocab_size, 1);
    let x = ids.narrow(1, 0, 32).unwrap();
    let y = ids.narrow(1, 1, 32).unwrap().flatten_all().unwrap();
    let mask = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
    let loss = ops::cross_entropy(&model.forward_train(&x, None).unwrap().logits, &y, &mask).unwrap();
    let loss = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((loss - (config.vocab_size as f64).ln()).abs() < 0.3, "initial loss {loss}");
    // U(±1/√fan_in) has std 1/√(3·fan_in); Kaiming-normal would be ≈2.4× larger.
    let (_, q) = params.entries.iter().find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight").unwrap();
    let std = q.as_tensor().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let expect = 1.0 / (3.0f32 * 128.0).sqrt();
    assert!((std / expect - 1.0).abs() < 0.05, "std {std} vs {expect}");
    let (_, norm) = params.entries.iter().find(|(n, _)| n == "model.norm.weight").unwrap();
    assert_eq!(norm.as_tensor().min(0).unwrap().to_scalar::<f32>().unwrap(), 1.0);
}

#[test]
fn normal_init_uses_std_002() {
    let config = ModelConfig::preset("tiny").unwrap();
    let (_, params) = init_model(&config, InitScheme::Normal, 5, &Device::Cpu).unwrap();
    let (_, e) = &params.entries[0];
    let std = e.as_tensor().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    assert!((std - 0.02).abs() < 0.001, "{std}");
}
