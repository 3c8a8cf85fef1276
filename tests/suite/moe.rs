//! Mixture of experts and the minimind-3 shapes: parameter counts, the grouped dispatch against a
//! dense evaluation of the chosen experts (values and gradients), the aux losses on hand-computed
//! cases, routing that sends every token to one expert, q/k norm, and training through the stages.

use crate::common::*;
use candle_core::{DType, Device, Tensor, Var};
use minimind::model::moe::{top_k, AuxLoss, MoeFeedForward};
use minimind::model::params::{InitScheme, WeightBuilder};
use minimind::{MiniMindForCausalLM, ModelConfig};

#[test]
fn presets_have_minimind_parameter_counts() {
    let count = |name: &str| {
        let c = ModelConfig::preset(name).unwrap();
        (c.num_parameters(), c.num_active_parameters())
    };
    assert_eq!(count("minimind2-moe").0, 145_029_760);
    assert_eq!(count("minimind3"), (63_912_192, 63_912_192));
    assert_eq!(count("minimind3-moe"), (198_416_640, 63_936_768));
    assert_eq!(ModelConfig::preset("minimind3").unwrap().ffn_size(), 2432);
    let out = ok(minimind(&["info", "--preset", "minimind3-moe"]));
    assert!(out.contains("198416640 total, 63936768 active"), "{out}");
    // The counts match the tensors a model of the preset actually holds.
    for name in ["tiny-moe", "tiny"] {
        let c = ModelConfig::preset(name).unwrap();
        let (_, params) = minimind::model::checkpoint::init_model(&c, InitScheme::Minimind2, 1, &Device::Cpu).unwrap();
        assert_eq!(params.num_elements(), c.num_parameters(), "{name}");
    }
}

/// A MoE layer of width 16 with trainable weights, and a config to build it from.
fn layer(config: &ModelConfig, seed: u64) -> (MoeFeedForward, minimind::model::params::Params) {
    let wb = WeightBuilder::random(seed, DType::F32, &Device::Cpu, true);
    let moe = MoeFeedForward::new(&wb, "mlp", config, InitScheme::Minimind2).unwrap();
    (moe, wb.finish().unwrap())
}

fn moe_config(k: usize, shared: usize, coef: Option<f64>) -> ModelConfig {
    ModelConfig {
        hidden_size: 16,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        intermediate_size: Some(24),
        use_moe: true,
        num_experts_per_tok: k,
        n_routed_experts: 4,
        n_shared_experts: shared,
        router_aux_loss_coef: coef,
        ..ModelConfig::default()
    }
    .resolved()
    .unwrap()
}

/// `Σ_j w_j·Expert_idx_j(x) + Σ Shared(x)` with every expert evaluated on every token and the
/// unchosen ones multiplied by zero — the definition the grouped dispatch must equal.
fn dense_reference(moe: &MoeFeedForward, x: &Tensor) -> Tensor {
    let (b, t, d) = x.dims3().unwrap();
    let flat = x.reshape((b * t, d)).unwrap();
    let scores = minimind::ops::softmax_last_dim(&flat.matmul(&moe.gate.t().unwrap()).unwrap()).unwrap();
    let choice = top_k(&scores.to_vec2::<f32>().unwrap(), moe.top_k);
    let idx = Tensor::from_vec(choice.iter().map(|&c| c as u32).collect::<Vec<_>>(), (b * t, moe.top_k), &Device::Cpu)
        .unwrap();
    let mut w = scores.gather(&idx, 1).unwrap();
    if moe.renormalize {
        w = w.broadcast_div(&(w.sum_keepdim(1).unwrap() + 1e-20).unwrap()).unwrap();
    }
    let mut y = flat.zeros_like().unwrap();
    for (e, expert) in moe.experts.iter().enumerate() {
        let picked: Vec<f32> = choice.iter().map(|&c| if c == e { 1.0 } else { 0.0 }).collect();
        let picked = Tensor::from_vec(picked, (b * t, moe.top_k), &Device::Cpu).unwrap();
        let coefficient = (&w * picked).unwrap().sum_keepdim(1).unwrap();
        y = (y + expert.forward(&flat).unwrap().broadcast_mul(&coefficient).unwrap()).unwrap();
    }
    for shared in &moe.shared_experts {
        y = (y + shared.forward(&flat).unwrap()).unwrap();
    }
    y.reshape((b, t, d)).unwrap()
}

/// Values and every parameter's (and the input's) gradient of `Σ r ⊙ f(x)`, grouped vs dense.
fn check_against_dense(moe: &MoeFeedForward, params: &minimind::model::params::Params, x: &Var) {
    let r = Tensor::randn(0f32, 1., x.shape(), &Device::Cpu).unwrap();
    let (grouped, routing) = moe.forward(x.as_tensor(), false).unwrap();
    let dense = dense_reference(moe, x.as_tensor());
    assert!(max_abs_diff(&grouped, &dense) < 1e-5, "values differ by {}", max_abs_diff(&grouped, &dense));
    assert_eq!(routing.counts.iter().sum::<usize>(), x.dims()[0] * x.dims()[1] * moe.top_k);
    let ga = (grouped * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (dense * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut tensors: Vec<(String, &Tensor)> = params.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor())).collect();
    tensors.push(("x".into(), x.as_tensor()));
    for (name, t) in tensors {
        // An expert no token reached has no gradient in the grouped pass, a zero one in the dense.
        let zero = t.zeros_like().unwrap();
        let (a, b) = (ga.get(t).unwrap_or(&zero), gb.get(t).unwrap_or(&zero));
        assert!(max_abs_diff(a, b) < 1e-4, "{name}: gradients differ by {}", max_abs_diff(a, b));
    }
}

#[test]
fn grouped_dispatch_equals_the_dense_evaluation_of_the_chosen_experts() {
    for (k, shared, coef) in [(2, 1, None), (1, 0, Some(5e-4)), (3, 0, None)] {
        let (moe, params) = layer(&moe_config(k, shared, coef), 7 + k as u64);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 9, 16), &Device::Cpu).unwrap()).unwrap();
        check_against_dense(&moe, &params, &x);
    }
}

#[test]
fn routing_every_token_to_one_expert_stays_correct() {
    let (mut moe, params) = layer(&moe_config(1, 1, None), 3);
    // A router whose first row dwarfs the others on inputs with a positive first channel.
    let mut gate = vec![0f32; 4 * 16];
    gate[0] = 50.0;
    moe.gate = Tensor::from_vec(gate, (4, 16), &Device::Cpu).unwrap();
    let first = Tensor::from_vec([vec![1f32], vec![0f32; 15]].concat(), (1, 1, 16), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 0.1, (2, 7, 16), &Device::Cpu).unwrap().broadcast_add(&first).unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let (_, routing) = moe.forward(x.as_tensor(), false).unwrap();
    assert_eq!(routing.counts, [14, 0, 0, 0]);
    check_against_dense(&moe, &params, &x);
}

/// Two tokens of width 2, both routed to expert 0 of 2: scores softmax([2, 0]) and softmax([2, 0.5]).
fn aux_case(aux: AuxLoss) -> f64 {
    let config = ModelConfig {
        hidden_size: 2,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        intermediate_size: Some(4),
        use_moe: true,
        num_experts_per_tok: 1,
        n_routed_experts: 2,
        n_shared_experts: 0,
        ..ModelConfig::default()
    };
    let wb = WeightBuilder::random(1, DType::F32, &Device::Cpu, false);
    let mut moe = MoeFeedForward::new(&wb, "mlp", &config, InitScheme::Minimind2).unwrap();
    moe.gate = Tensor::new(&[[2f32, 0.], [0., 1.]], &Device::Cpu).unwrap();
    moe.aux = aux;
    let x = Tensor::new(&[[[1f32, 0.], [1., 0.5]]], &Device::Cpu).unwrap();
    let (_, routing) = moe.forward(&x, true).unwrap();
    assert_eq!(routing.counts, [2, 0]);
    routing.aux_loss.unwrap().to_scalar::<f32>().unwrap() as f64
}

#[test]
fn aux_losses_match_minimind_formulas_on_a_hand_computed_case() {
    let s0 = |a: f64, b: f64| a.exp() / (a.exp() + b.exp());
    let p0 = (s0(2.0, 0.0) + s0(2.0, 0.5)) / 2.0; // mean score of expert 0 = 0.8492
                                                  // MiniMind2, seq_aux: c[0,0] = 2 slots / (T·k/E = 1) = 2, c[0,1] = 0 → α·2·P0.
    assert!((aux_case(AuxLoss::Sequence { alpha: 0.1 }) - 0.1 * 2.0 * p0).abs() < 1e-6);
    // MiniMind2 without seq_aux: α·Σ (E·f_e)·P_e with f_0 = 1.
    assert!((aux_case(AuxLoss::Batch { alpha: 0.1 }) - 0.1 * 2.0 * p0).abs() < 1e-6);
    // minimind-3: coef·E·Σ load_e·P_e with load_0 = 1.
    assert!((aux_case(AuxLoss::PerChoice { coef: 5e-4 }) - 5e-4 * 2.0 * p0).abs() < 1e-8);
    assert!((p0 - 0.84921).abs() < 1e-4);
}

#[test]
fn every_parameter_of_moe_and_qk_norm_models_gets_a_gradient() {
    for name in ["minimind2-moe", "minimind3", "minimind3-moe"] {
        let config = micro_preset(name);
        let (model, params) =
            minimind::model::checkpoint::init_model(&config, InitScheme::Minimind2, 4, &Device::Cpu).unwrap();
        let ids = random_ids(2, 17, 97, 5);
        let (x, y) = (ids.narrow(1, 0, 16).unwrap(), ids.narrow(1, 1, 16).unwrap().flatten_all().unwrap());
        let out = model.forward_train(&x, None).unwrap();
        let mask = Tensor::ones(32, DType::F32, &Device::Cpu).unwrap();
        let loss = out.moe.add_aux(minimind::ops::cross_entropy(&out.logits, &y, &mask).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        for (tensor_name, var) in &params.entries {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: {tensor_name} has no gradient"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(norm > 0.0, "{name}: {tensor_name} has a zero gradient");
        }
        assert_eq!(out.moe.aux_loss.is_some(), config.use_moe, "{name}");
        assert_eq!(params.num_elements(), config.num_parameters(), "{name}");
    }
}

#[test]
fn moe_and_qk_norm_models_save_load_and_decode_like_their_full_forward() {
    for name in ["minimind2-moe", "minimind3-moe"] {
        let config = micro_preset(name);
        let (model, _) =
            minimind::model::checkpoint::init_model(&config, InitScheme::Minimind2, 9, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        minimind::model::checkpoint::save_model(dir.path(), &model).unwrap();
        let (loaded, _): (MiniMindForCausalLM, _) =
            minimind::model::checkpoint::load_model(dir.path(), &Device::Cpu, DType::F32, false).unwrap();
        let ids = random_ids(1, 12, 97, 3);
        let full = loaded.forward(&ids, None).unwrap();
        assert_eq!(max_abs_diff(&model.forward(&ids, None).unwrap(), &full), 0.0, "{name}");
        // Cached decoding, one token at a time, gives the full forward's last logits.
        let mut cache = minimind::KvCache::new(&loaded.config, 1, 12, DType::F32, &Device::Cpu).unwrap();
        let mut last = None;
        for i in 0..12 {
            last = Some(loaded.forward_last(&ids.narrow(1, i, 1).unwrap(), Some(&mut cache)).unwrap());
        }
        let expected = full.narrow(1, 11, 1).unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&last.unwrap(), &expected) < 1e-4, "{name}");
    }
}

#[test]
fn pretraining_a_moe_model_logs_its_aux_loss_and_expert_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moe");
    let tok = tokenizer_dir("v2");
    let data = fixture("pretrain_zh_songci_32.jsonl");
    let args = [
        "pretrain",
        "--data",
        p(&data),
        "--tokenizer",
        p(&tok),
        "--out",
        p(&out),
        "--preset",
        "tiny-moe",
        "--batch-size",
        "4",
        "--accumulation-steps",
        "1",
        "--max-seq-len",
        "32",
        "--max-steps",
        "12",
        "--lr",
        "3e-3",
    ];
    let stdout = ok(minimind(&args));
    assert!(stdout.contains("pretrained 12 steps"), "{stdout}");
    let metrics = minimind::train::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    let first = &metrics[0];
    assert!(first.extra["aux_loss"] > 0.0);
    let load: f64 = (0..4).map(|e| first.extra[&format!("expert_load_{e}")]).sum();
    assert!((load - 1.0).abs() < 1e-9, "expert loads sum to {load}");
    assert!(metrics[11].loss < metrics[0].loss, "the loss did not fall");
    assert!(out.join("loss.png").exists());
    let config = ModelConfig::load(&out.join("config.json")).unwrap();
    assert!(config.use_moe);
}

/// Every stage runs on a tiny MoE model through the CLI; distillation teaches a dense student from a
/// MoE teacher.
#[test]
fn every_stage_trains_a_tiny_moe_model() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, d) = (tokenizer_dir("v2"), dir.path());
    let (poems, sft, pairs) =
        (fixture("pretrain_zh_songci_32.jsonl"), fixture("sft_zh_en_32.jsonl"), fixture("dpo_zh_en_16.jsonl"));
    let train = ["--batch-size", "2", "--max-seq-len", "48", "--max-steps", "2"];
    let run = |args: &[&str]| ok(minimind(&[args, &train].concat()));
    for (preset, out) in [("tiny-moe", "moe"), ("tiny", "dense")] {
        run(&["pretrain", "--data", p(&poems), "--tokenizer", p(&tok), "--preset", preset, "--out", p(&d.join(out))]);
    }
    let moe = d.join("moe");
    run(&["sft", "--model", p(&moe), "--data", p(&sft), "--out", p(&d.join("sft"))]);
    run(&["dpo", "--model", p(&moe), "--data", p(&pairs), "--out", p(&d.join("dpo")), "--skip-bad-lines"]);
    run(&["lora", "--model", p(&moe), "--data", p(&sft), "--out", p(&d.join("lora")), "--targets", "gate_proj,q_proj"]);
    run(&[
        "distill",
        "--student",
        p(&d.join("dense")),
        "--teacher",
        p(&moe),
        "--data",
        p(&sft),
        "--out",
        p(&d.join("kd")),
    ]);
    for (stage, key) in [("sft", "aux_loss"), ("dpo", "aux_loss"), ("lora", "aux_loss"), ("kd", "kd")] {
        let metrics = minimind::train::metrics::read_metrics(&d.join(stage).join("metrics.jsonl")).unwrap();
        assert!(metrics[0].extra.contains_key(key), "{stage}: {:?}", metrics[0].extra);
    }
    // The adapter covers the experts' gate projections too, and the adapted model generates.
    let adapter = minimind::model::checkpoint::load_tensors(&d.join("lora/adapter.safetensors"), &Device::Cpu).unwrap();
    assert!(adapter.keys().any(|k| k.contains("mlp.experts.3.gate_proj.lora.A")), "{:?}", adapter.keys());
    let text = ok(minimind(&[
        "generate",
        "--model",
        p(&moe),
        "--lora",
        p(&d.join("lora")),
        "--prompt",
        "春",
        "--max-new-tokens",
        "5",
    ]));
    assert!(text.starts_with('春'));
    // It exports for transformers (GraniteMoeShared) and llama.cpp (granitemoe).
    ok(minimind(&["export", p(&moe), "--format", "hf", "--out", p(&d.join("hf"))]));
    ok(minimind(&["export", p(&moe), "--format", "gguf", "--out", p(&d.join("m.gguf"))]));
    assert!(d.join("hf/config.json").exists() && d.join("m.gguf").exists());
}

/// minimind-3's YaRN: the ramp between the pairs that fit β_fast and β_slow turns in 2048 positions.
#[test]
fn yarn_tables_follow_the_formula() {
    use minimind::model::config::RopeScaling;
    for (head_dim, low, high) in [(96usize, 8usize, 21usize), (64, 5, 14)] {
        let config = ModelConfig {
            hidden_size: head_dim * 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 32768,
            rope_scaling: Some(RopeScaling::minimind3()),
            ..ModelConfig::default()
        }
        .resolved()
        .unwrap();
        let inv_dim =
            |beta: f64| head_dim as f64 * (2048.0 / (2.0 * std::f64::consts::PI * beta)).ln() / (2.0 * 1e6f64.ln());
        assert_eq!((inv_dim(32.0).floor() as usize, inv_dim(1.0).ceil() as usize), (low, high), "D = {head_dim}");
        let (scaled, attention) = minimind::model::yarn_inv_freq(&config);
        let plain = minimind::model::rope_inv_freq(head_dim, 1e6);
        assert_eq!(attention, 1.0);
        for i in 0..head_dim / 2 {
            let ramp = ((i as f64 - low as f64) / (high - low) as f64).clamp(0.0, 1.0);
            let expected = plain[i] as f64 * (1.0 - ramp + ramp / 16.0);
            assert!((scaled[i] as f64 - expected).abs() <= 1e-6 * expected, "D {head_dim} pair {i}");
        }
        // Below `low` untouched, above `high` divided by the factor.
        assert_eq!(scaled[low], plain[low]);
        assert!((scaled[high] * 16.0 - plain[high]).abs() <= 1e-6 * plain[high]);
        // The model's tables use them: cos at position p is cos(p·inv_freq).
        let rope = minimind::model::RotaryEmbedding::new(&config, &Device::Cpu).unwrap();
        let row: Vec<f32> = rope.cos.get(1000).unwrap().to_vec1().unwrap();
        assert!((row[high] - (1000.0 * scaled[high]).cos()).abs() < 1e-5);
    }
    // No scaling when the context does not exceed the original one.
    let short = ModelConfig {
        max_position_embeddings: 2048,
        rope_scaling: Some(RopeScaling::minimind3()),
        ..ModelConfig::default()
    };
    assert_eq!(minimind::model::yarn_inv_freq(&short).0, minimind::model::rope_inv_freq(64, 1e6));
}

#[test]
fn generate_takes_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig { max_position_embeddings: 4096, vocab_size: 6400, ..micro_preset("minimind3") };
    let (model, _) = minimind::model::checkpoint::init_model(&config, InitScheme::Minimind2, 1, &Device::Cpu).unwrap();
    minimind::model::checkpoint::save_model(dir.path(), &model).unwrap();
    minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v3"), dir.path()).unwrap();
    let args = ["generate", "--model", p(dir.path()), "--prompt", "春", "--max-new-tokens", "4", "--temperature", "0"];
    let plain = ok(minimind(&args));
    let scaled = ok(minimind(&[&args[..], &["--rope-scaling"]].concat()));
    assert!(plain.starts_with('春') && scaled.starts_with('春'));
}

/// The MoE layer and q/k norm run in bf16 too (the composed path, as on CUDA), close to f32.
#[test]
fn moe_and_qk_norm_models_run_in_bf16() {
    let config = micro_preset("minimind3-moe");
    let (model, _) = minimind::model::checkpoint::init_model(&config, InitScheme::Minimind2, 6, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    minimind::model::checkpoint::save_model(dir.path(), &model).unwrap();
    let (half, _) = minimind::model::checkpoint::load_model(dir.path(), &Device::Cpu, DType::BF16, false).unwrap();
    let ids = random_ids(1, 10, 97, 8);
    let (a, b) = (model.forward(&ids, None).unwrap(), half.forward(&ids, None).unwrap());
    assert_eq!(b.dtype(), DType::BF16);
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.15, "bf16 logits differ from f32 by {d}");
    let out = half.forward_train(&ids, None).unwrap();
    assert!(out.moe.aux_loss.is_some() && out.moe.counts.iter().sum::<usize>() == 10 * 2);
}
