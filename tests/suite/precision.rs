//! bf16 mixed precision: fp32 master weights, bf16 matmuls and activations, f32 statistics. Checked
//! against the fp32 run of the same weights (loss, every gradient), end to end through the CLI for a
//! dense and a MoE model, and for bf16 inference.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::model::checkpoint::init_model;
use minimind::model::params::InitScheme;
use minimind::ops;
use minimind::ModelConfig;

/// ‖a − b‖ / ‖b‖ over all elements.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    norm(&(&a - &b).unwrap()) / norm(&b).max(1e-30)
}

/// One training step's loss and gradients in fp32 and in bf16 mixed precision, same weights.
/// Tolerance: bf16 keeps 8 bits of mantissa (relative rounding 2⁻⁹ ≈ 0.2% per value); through a
/// few layers of matmuls the errors add up to about 1% of a gradient's norm, so 5% leaves room for
/// seeds and fails on any real mistake (a missing cast, a statistic in bf16, a dropped gradient).
fn step_in_both(config: &ModelConfig) {
    let (mut model, params) = init_model(config, InitScheme::Minimind2, 4, &Device::Cpu).unwrap();
    let ids = random_ids(2, 17, config.vocab_size, 5);
    let x = ids.narrow(1, 0, 16).unwrap();
    let y = ids.narrow(1, 1, 16).unwrap().flatten_all().unwrap();
    let mask = Tensor::ones(32, DType::F32, &Device::Cpu).unwrap();
    let mut run = |dtype: DType| {
        model.set_compute_dtype(dtype);
        let out = model.forward_train(&x, None).unwrap();
        assert_eq!(out.logits.dtype(), dtype);
        let loss = out.moe.add_aux(ops::cross_entropy(&out.logits, &y, &mask).unwrap()).unwrap();
        assert_eq!(loss.dtype(), DType::F32, "the loss is computed in f32");
        let grads = loss.backward().unwrap();
        let grads: Vec<Option<Tensor>> =
            params.entries.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (loss32, grads32) = run(DType::F32);
    let (loss16, grads16) = run(DType::BF16);
    assert!((loss16 - loss32).abs() / loss32 < 1e-2, "loss bf16 {loss16} vs fp32 {loss32}");
    for (((name, var), g16), g32) in params.entries.iter().zip(&grads16).zip(&grads32) {
        assert_eq!(var.dtype(), DType::F32, "{name}: master weights stay fp32");
        let (g16, g32) = match (g16, g32) {
            (Some(a), Some(b)) => (a, b),
            // An expert no token was routed to, in both precisions.
            (None, None) if name.contains(".experts.") => continue,
            _ => panic!("{name}: a gradient in one precision only"),
        };
        assert_eq!(g16.dtype(), DType::F32, "{name}: gradients reach the master weights in fp32");
        let norm = g16.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient in bf16");
        let err = relative_error(g16, g32);
        assert!(err < 5e-2, "{name}: bf16 gradient differs from fp32 by {err}");
    }
}

#[test]
fn bf16_step_matches_fp32_loss_and_every_gradient() {
    step_in_both(&micro_config(97, 4, 2, 16));
}

#[test]
fn bf16_step_matches_fp32_for_minimind3_moe() {
    // q/k norm, MoE routing in f32 with bf16 experts, the aux loss.
    let config = ModelConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        vocab_size: 97,
        max_position_embeddings: 256,
        intermediate_size: None,
        ..ModelConfig::preset("minimind3-moe").unwrap()
    }
    .resolved()
    .unwrap();
    step_in_both(&config);
}

#[test]
fn bf16_inference_weights_follow_fp32_logits() {
    let (model, _) = micro_model(8);
    let half = model.with_weights_in(DType::BF16).unwrap();
    assert_eq!((half.dtype(), half.compute_dtype()), (DType::BF16, DType::BF16));
    let ids = random_ids(1, 12, 97, 2);
    let (full, low) = (model.forward(&ids, None).unwrap(), half.forward(&ids, None).unwrap());
    assert_eq!(low.dtype(), DType::BF16);
    let err = relative_error(&low, &full);
    assert!(err < 2e-2, "bf16 logits differ from fp32 by {err}");
}

/// `pretrain`, `sft` and `generate` with `--dtype bf16` on the bundled data: the loss falls, the
/// checkpoint holds fp32 weights, inference runs in bf16.
#[test]
fn bf16_training_and_inference_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (model, sft) = (dir.path().join("model"), dir.path().join("sft"));
    let tok = tokenizer_dir("v2");
    let data = fixture("pretrain_zh_songci_32.jsonl");
    let common = ["--batch-size", "4", "--max-seq-len", "64", "--lr", "3e-3", "--dtype", "bf16"];
    let mut args = vec!["pretrain", "--data", p(&data), "--tokenizer", p(&tok), "--out", p(&model)];
    args.extend(["--preset", "tiny", "--max-steps", "12"]);
    args.extend(common);
    ok(minimind(&args));
    let losses: Vec<f64> = std::fs::read_to_string(model.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    assert!(losses[11] < losses[0] - 0.5, "bf16 loss did not fall: {losses:?}");
    let weights = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(weights.values().all(|t| t.dtype() == DType::F32), "checkpoints hold the fp32 master weights");
    let sft_data = fixture("sft_zh_en_32.jsonl");
    let mut args = vec!["sft", "--data", p(&sft_data), "--model", p(&model), "--out", p(&sft), "--max-steps", "2"];
    args.extend(common);
    ok(minimind(&args));
    // The other stages, two steps each in bf16: preference pairs, an adapter, a teacher, reasoning.
    let stages: [(&str, &str, &str, std::path::PathBuf); 4] = [
        ("dpo", "--model", "dpo_zh_en_16.jsonl", dir.path().join("dpo")),
        ("lora", "--model", "sft_zh_en_32.jsonl", dir.path().join("lora")),
        ("distill", "--student", "sft_zh_en_32.jsonl", dir.path().join("distill")),
        ("reason", "--model", "reason_zh_en_8.jsonl", dir.path().join("reason")),
    ];
    for (stage, model_flag, data, out) in &stages {
        let data = fixture(data);
        let mut args = vec![*stage, *model_flag, p(&sft), "--data", p(&data), "--out", p(out), "--max-steps", "2"];
        if *stage == "distill" {
            args.extend(["--teacher", p(&sft)]);
        }
        args.extend(common);
        ok(minimind(&args));
    }
    let generate = |dtype: &str| {
        let args = ["generate", "--model", p(&sft), "--prompt", "你好", "--temperature", "0"];
        ok(minimind(&[&args[..], &["--max-new-tokens", "6", "--dtype", dtype]].concat()))
    };
    assert!(!generate("bf16").is_empty());
    let err = fails(minimind(&["generate", "--model", p(&sft), "--prompt", "x", "--int8", "--dtype", "bf16"]));
    assert!(err.contains("--int8") && err.contains("bf16"), "{err}");
    let err = fails(minimind(&["generate", "--model", p(&sft), "--prompt", "x", "--kv-f16", "--dtype", "bf16"]));
    assert!(err.contains("f16 KV cache needs f32 activations"), "{err}");
}
