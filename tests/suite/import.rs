//! Importing MiniMind checkpoints: `.pth` files (MiniMind2 fp16 and MiniMind2-classic fp32 with its
//! interleaved RoPE), LoRA `.pth` files, and the errors of bad ones. The classic checkpoints are run
//! through an independent reference of MiniMind2-classic's forward (interleaved complex-pair RoPE,
//! Meta-style names), so the RoPE row permutation is tested, not assumed.

use crate::common::pth::{classic_weights, random_normal, write_pth};
use crate::common::*;
use candle_core::{DType, Device, Tensor, D};
use minimind::interop::import::{import, ImportOptions, Imported};
use minimind::model::checkpoint::{load_model, save_model};
use minimind::ModelConfig;
use std::collections::HashMap;
use std::path::Path;

fn config() -> ModelConfig {
    micro_config(97, 4, 2, 16)
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(w).unwrap()
}

/// MiniMind2-classic RoPE: adjacent pairs `(x[2i], x[2i+1])` rotated by `p·θ^(−2i/D)`. x: [b, t, h, D].
fn rope_interleaved(x: &Tensor, theta: f64) -> Tensor {
    let (b, t, h, d) = x.dims4().unwrap();
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..t {
        for i in 0..d / 2 {
            let freq = 1.0 / (theta as f32).powf(2.0 * i as f32 / d as f32);
            let angle = p as f32 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (1, t, 1, d / 2, 1), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(sin, (1, t, 1, d / 2, 1), &Device::Cpu).unwrap();
    let pairs = x.reshape((b, t, h, d / 2, 2)).unwrap();
    let (x0, x1) = (pairs.narrow(4, 0, 1).unwrap(), pairs.narrow(4, 1, 1).unwrap());
    let r0 = (x0.broadcast_mul(&cos).unwrap() - x1.broadcast_mul(&sin).unwrap()).unwrap();
    let r1 = (x0.broadcast_mul(&sin).unwrap() + x1.broadcast_mul(&cos).unwrap()).unwrap();
    Tensor::cat(&[r0, r1], 4).unwrap().reshape((b, t, h, d)).unwrap()
}

/// MiniMind2-classic's forward, written from its definition with plain tensor ops.
fn classic_forward(w: &HashMap<String, Tensor>, c: &ModelConfig, ids: &Tensor) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let (d, heads, kv, hd) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim());
    let lin = |x: &Tensor, name: &str| x.broadcast_matmul(&w[name].t().unwrap()).unwrap();
    let mut x =
        w["tok_embeddings.weight"].index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((b, t, d)).unwrap();
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap();
    for l in 0..c.num_hidden_layers {
        let n = |s: &str| format!("layers.{l}.{s}.weight");
        let h = rms_norm(&x, &w[&n("attention_norm")], c.rms_norm_eps);
        let q = rope_interleaved(&lin(&h, &n("attention.wq")).reshape((b, t, heads, hd)).unwrap(), c.rope_theta);
        let k = rope_interleaved(&lin(&h, &n("attention.wk")).reshape((b, t, kv, hd)).unwrap(), c.rope_theta);
        let v = lin(&h, &n("attention.wv")).reshape((b, t, kv, hd)).unwrap();
        // repeat_kv: query head j reads KV head j / (heads / kv).
        let rep = |x: Tensor| {
            x.unsqueeze(3)
                .unwrap()
                .broadcast_as((b, t, kv, heads / kv, hd))
                .unwrap()
                .reshape((b, t, heads, hd))
                .unwrap()
        };
        let (q, k, v) = (
            q.transpose(1, 2).unwrap().contiguous().unwrap(),
            rep(k).transpose(1, 2).unwrap().contiguous().unwrap(),
            rep(v).transpose(1, 2).unwrap().contiguous().unwrap(),
        );
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap().broadcast_add(&mask).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let attn = probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, t, d)).unwrap();
        x = (x + lin(&attn, &n("attention.wo"))).unwrap();
        let h = rms_norm(&x, &w[&n("ffn_norm")], c.rms_norm_eps);
        let gated = (lin(&h, &n("feed_forward.w1")).silu().unwrap() * lin(&h, &n("feed_forward.w3"))).unwrap();
        x = (x + lin(&gated, &n("feed_forward.w2"))).unwrap();
    }
    lin(&rms_norm(&x, &w["norm.weight"], c.rms_norm_eps), "tok_embeddings.weight")
}

fn import_model(src: &Path, opts: &ImportOptions) -> (tempfile::TempDir, minimind::MiniMindForCausalLM, bool) {
    let out = tempfile::tempdir().unwrap();
    match import(src, out.path(), opts).unwrap() {
        Imported::Model { classic, .. } => {
            let (model, _) = load_model(out.path(), &Device::Cpu, DType::F32, false).unwrap();
            (out, model, classic)
        }
        Imported::Adapter { .. } => panic!("expected a model"),
    }
}

fn heads(n: usize) -> ImportOptions {
    ImportOptions { heads: Some(n), ..Default::default() }
}

#[test]
fn classic_pth_gives_the_classic_models_logits() {
    let c = config();
    let weights = classic_weights(&c, 1);
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("full_sft_64.pth");
    // V2c saves the tied head as a second name of the embedding's storage.
    write_pth(&pth, &weights, &[("output.weight", "tok_embeddings.weight")]);
    let (out, model, classic) = import_model(&pth, &heads(4));
    assert!(classic);
    assert!(model.config.tie_word_embeddings);
    assert_eq!((model.config.num_key_value_heads, model.config.ffn_size()), (2, c.ffn_size()));
    let ids = random_ids(2, 11, 97, 5);
    let reference = classic_forward(&weights.iter().cloned().collect(), &c, &ids);
    let ours = model.forward(&ids, None).unwrap();
    let d = max_abs_diff(&reference, &ours);
    assert!(d < 1e-4, "imported classic model differs from the classic forward by {d}");
    // Without the row permutation the same weights give other logits: the test sees RoPE.
    let renamed: HashMap<String, Tensor> =
        weights.iter().map(|(k, v)| (minimind::interop::import::classic_to_hf(k), v.clone())).collect();
    let wb = minimind::model::params::WeightBuilder::loaded(renamed, DType::F32, &Device::Cpu, false);
    let unpermuted =
        minimind::MiniMindForCausalLM::new(&model.config, &wb, minimind::model::params::InitScheme::Minimind2).unwrap();
    assert!(max_abs_diff(&reference, &unpermuted.forward(&ids, None).unwrap()) > 1e-2);
    // The bundled classic tokenizer comes along when the .pth's folder has none.
    let tok = minimind::Tokenizer::load(out.path()).unwrap();
    assert_eq!(tok.token_to_id("<s>"), Some(1));
}

#[test]
fn v2_fp16_pth_with_the_tied_weight_stored_twice() {
    let (model, _) = micro_model(7);
    let f16: Vec<(String, Tensor)> =
        model.named_tensors().into_iter().map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap())).collect();
    let embed = f16.iter().find(|(k, _)| k == "model.embed_tokens.weight").unwrap().1.clone();
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("pretrain_64.pth");
    let mut with_head = f16.clone();
    with_head.push(("lm_head.weight".into(), embed.clone()));
    write_pth(&pth, &with_head, &[]);
    let (_out, imported, classic) = import_model(&pth, &heads(4));
    assert!(!classic && imported.config.tie_word_embeddings);
    // The same state dict inside a resume-style dict (`{"model": …, "step": 7}`) imports the same.
    let nested = dir.path().join("resume.pth");
    crate::common::pth::write_pth_under(&nested, &with_head, &[], Some("model"));
    let (_out, from_nested, _) = import_model(&nested, &heads(4));
    let ids = random_ids(1, 5, 97, 3);
    assert_eq!(max_abs_diff(&imported.forward(&ids, None).unwrap(), &from_nested.forward(&ids, None).unwrap()), 0.0);
    for ((name, a), (_, b)) in f16.iter().zip(imported.named_tensors()) {
        assert_eq!(max_abs_diff(a, &b), 0.0, "{name}: fp16 values are widened exactly");
    }
    // A head that differs from the embedding is a separate head, kept as such.
    with_head.last_mut().unwrap().1 =
        (embed.to_dtype(DType::F32).unwrap() * 2.0).unwrap().to_dtype(DType::F16).unwrap();
    write_pth(&pth, &with_head, &[]);
    let (_out, untied, _) = import_model(&pth, &heads(4));
    assert!(!untied.config.tie_word_embeddings);
    let ids = random_ids(1, 6, 97, 1);
    let d = max_abs_diff(&(imported.forward(&ids, None).unwrap() * 2.0).unwrap(), &untied.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "{d}");
    // Exactly 256 differing values (a count that wraps a byte) still make a separate head.
    let mut head = embed.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    head.iter_mut().take(256).for_each(|v| *v += 1.0);
    let head = Tensor::from_vec(head, embed.shape(), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap();
    with_head.last_mut().unwrap().1 = head;
    write_pth(&pth, &with_head, &[]);
    assert!(!import_model(&pth, &heads(4)).1.config.tie_word_embeddings);
}

/// LoRA tensors (A ~ noise, B ~ noise) for q/o projections under `path(layer, proj)` names.
fn lora_weights(c: &ModelConfig, rank: usize, path: impl Fn(usize, &str) -> String) -> Vec<(String, Tensor)> {
    let d = c.hidden_size;
    let mut out = Vec::new();
    for l in 0..c.num_hidden_layers {
        for (k, proj) in ["q", "o"].iter().enumerate() {
            let seed = (l * 10 + k) as u64;
            out.push((format!("{}.lora.A.weight", path(l, proj)), (random_normal(&[rank, d], seed) * 0.3).unwrap()));
            out.push((
                format!("{}.lora.B.weight", path(l, proj)),
                (random_normal(&[d, rank], seed + 99) * 0.3).unwrap(),
            ));
        }
    }
    out
}

fn import_adapter(pth: &Path, base: &Path) -> (tempfile::TempDir, minimind::model::lora::LoraConfig, bool) {
    let out = tempfile::tempdir().unwrap();
    let opts = ImportOptions { base: Some(base.to_path_buf()), ..Default::default() };
    match import(pth, out.path(), &opts).unwrap() {
        Imported::Adapter { config, classic } => (out, config, classic),
        Imported::Model { .. } => panic!("expected an adapter"),
    }
}

#[test]
fn classic_lora_pth_adapts_like_the_classic_model() {
    let c = config();
    let weights = classic_weights(&c, 2);
    let dir = tempfile::tempdir().unwrap();
    let base_pth = dir.path().join("rlhf_64.pth");
    write_pth(&base_pth, &weights, &[("output.weight", "tok_embeddings.weight")]);
    let (base_dir, _, _) = import_model(&base_pth, &heads(4));
    let lora = lora_weights(&c, 3, |l, p| format!("layers.{l}.attention.w{p}"));
    let lora_pth = dir.path().join("lora_identity_64.pth");
    write_pth(&lora_pth, &lora, &[]);
    let (adapter, config, classic) = import_adapter(&lora_pth, base_dir.path());
    assert!(classic);
    assert_eq!((config.rank, config.targets.clone()), (3, vec!["o_proj".to_string(), "q_proj".to_string()]));
    // Reference: the classic model with W + B·A folded in (MiniMind's LoRA has no scaling).
    let mut merged: HashMap<String, Tensor> = weights.into_iter().collect();
    let lora: HashMap<String, Tensor> = lora.into_iter().collect();
    for l in 0..c.num_hidden_layers {
        for p in ["q", "o"] {
            let path = format!("layers.{l}.attention.w{p}");
            let ba = lora[&format!("{path}.lora.B.weight")].matmul(&lora[&format!("{path}.lora.A.weight")]).unwrap();
            let w = merged[&format!("{path}.weight")].clone();
            merged.insert(format!("{path}.weight"), (w + ba).unwrap());
        }
    }
    let (mut model, _) = load_model(base_dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    minimind::model::lora::load(&mut model, adapter.path(), &Device::Cpu).unwrap();
    let ids = random_ids(1, 9, 97, 8);
    let d = max_abs_diff(&classic_forward(&merged, &c, &ids), &model.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "classic LoRA import differs by {d}");
}

#[test]
fn v2_lora_pth_equals_its_merged_weights() {
    let (model, _) = micro_model(3);
    let base = tempfile::tempdir().unwrap();
    save_model(base.path(), &model).unwrap();
    let lora = lora_weights(&model.config, 2, |l, p| format!("model.layers.{l}.self_attn.{p}_proj"));
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("lora_medical_64.pth");
    let f16: Vec<(String, Tensor)> = lora.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap())).collect();
    write_pth(&pth, &f16, &[]);
    let (adapter, config, classic) = import_adapter(&pth, base.path());
    assert!(!classic && config.rank == 2);
    let (mut adapted, _) = load_model(base.path(), &Device::Cpu, DType::F32, false).unwrap();
    minimind::model::lora::load(&mut adapted, adapter.path(), &Device::Cpu).unwrap();
    let mut merged = adapted.clone();
    minimind::model::lora::merge(&mut merged).unwrap();
    let q0 = merged.named_tensors().into_iter().find(|(k, _)| k == "model.layers.0.self_attn.q_proj.weight").unwrap().1;
    let lora: HashMap<String, Tensor> = f16.into_iter().collect();
    let ba = lora["model.layers.0.self_attn.q_proj.lora.B.weight"]
        .to_dtype(DType::F32)
        .unwrap()
        .matmul(&lora["model.layers.0.self_attn.q_proj.lora.A.weight"].to_dtype(DType::F32).unwrap())
        .unwrap();
    let base_q0 =
        model.named_tensors().into_iter().find(|(k, _)| k == "model.layers.0.self_attn.q_proj.weight").unwrap().1;
    assert!(max_abs_diff(&q0, &(base_q0 + ba).unwrap()) < 1e-5, "adapter scale must be 1 (α = r)");
    let ids = random_ids(1, 7, 97, 4);
    let d = max_abs_diff(&adapted.forward(&ids, None).unwrap(), &merged.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "{d}");
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let err = |path: &Path, opts: &ImportOptions| {
        format!("{:#}", import(path, tempfile::tempdir().unwrap().path(), opts).err().expect("import must fail"))
    };
    // A classic file missing a tensor, with a mis-shaped one and a stray one: all listed, HF names.
    let mut weights = classic_weights(&c, 3);
    weights.retain(|(k, _)| k != "layers.1.feed_forward.w3.weight");
    weights.iter_mut().find(|(k, _)| k == "layers.0.attention.wv.weight").unwrap().1 =
        Tensor::zeros((5, 64), DType::F32, &Device::Cpu).unwrap();
    weights.push(("layers.0.attention.extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap()));
    let pth = dir.path().join("broken.pth");
    write_pth(&pth, &weights, &[]);
    let e = err(&pth, &heads(4));
    for expect in [
        "model.layers.1.mlp.up_proj.weight: missing",
        "model.layers.0.self_attn.v_proj.weight: shape [5, 64]",
        "layers.0.attention.extra.weight: unexpected",
        "classic names shown in their HF form",
    ] {
        assert!(e.contains(expect), "{e}");
    }
    // Heads that do not divide the width.
    write_pth(&pth, &classic_weights(&c, 3), &[]);
    assert!(err(&pth, &heads(5)).contains("not divisible by 5 heads"));
    // A MoE checkpoint missing an expert's tensor lists it like any other.
    let moe = fixture("pth/moe2_micro.pth");
    let mut tensors: Vec<(String, Tensor)> =
        minimind::interop::import::read_source(&moe).unwrap().into_iter().collect();
    tensors.retain(|(name, _)| name != "model.layers.1.mlp.experts.2.up_proj.weight" && name != "lm_head.weight");
    write_pth(&pth, &tensors, &[]);
    assert!(err(&pth, &heads(2)).contains("model.layers.1.mlp.experts.2.up_proj.weight: missing"));
    // A LoRA file needs its base.
    write_pth(&pth, &lora_weights(&c, 2, |l, p| format!("layers.{l}.attention.w{p}")), &[]);
    assert!(err(&pth, &ImportOptions::default()).contains("--base"));
    // Not a checkpoint at all.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, "not a zip").unwrap();
    assert!(err(&junk, &ImportOptions::default()).contains("not a PyTorch checkpoint"));
    // An unknown bundled tokenizer name.
    write_pth(&pth, &classic_weights(&c, 3), &[]);
    let opts = ImportOptions { tokenizer: Some("gpt2".into()), heads: Some(4), ..Default::default() };
    assert!(err(&pth, &opts).contains("minimind2-classic"));
}

#[test]
fn classic_config_json_fields_are_mapped() {
    let v = serde_json::json!({"model_type": "minimind", "dim": 768, "n_layers": 16, "n_heads": 8, "n_kv_heads": 2,
        "hidden_dim": 2048, "norm_eps": 1e-5, "rope_theta": 1e6, "vocab_size": 6400, "max_seq_len": 8192});
    let c = minimind::interop::import::config_from_json(&v, Path::new("config.json")).unwrap();
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads), (768, 16, 8, 2));
    assert_eq!((c.ffn_size(), c.vocab_size, c.max_position_embeddings), (2048, 6400, 32768));
}

/// Files written by PyTorch itself (tools/make_pth_fixture.py): the classic fp32 checkpoint with its
/// shared-storage head, and the MiniMind2-layout fp16 one, against MiniMind2-classic's logits
/// computed in PyTorch.
#[test]
fn torch_saved_checkpoints_reproduce_torch_logits() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pth/classic_micro_logits.json")).unwrap()).unwrap();
    let ids: Vec<u32> = meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let expected: Vec<f32> = meta["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let expected = Tensor::from_vec(expected, (1, n, 97), &Device::Cpu).unwrap();
    for (file, tol) in [("pth/classic_micro.pth", 1e-4), ("pth/v2_micro_fp16.pth", 1e-2)] {
        let (_out, model, classic) = import_model(&fixture(file), &heads(2));
        assert_eq!(classic, file.contains("classic"));
        assert!(model.config.tie_word_embeddings, "{file}");
        assert_eq!((model.config.num_key_value_heads, model.config.ffn_size()), (1, 128));
        let d = max_abs_diff(&model.forward(&ids, None).unwrap(), &expected);
        assert!(d < tol, "{file}: logits differ from PyTorch's by {d}");
    }
}

/// MiniMind2-classic's own HF export (`convert_model.py`): config.json with `LMConfig` fields and a
/// `pytorch_model.bin` under classic names.
#[test]
fn classic_hf_folder_with_lmconfig_imports() {
    let c = config();
    let weights = classic_weights(&c, 4);
    let dir = tempfile::tempdir().unwrap();
    write_pth(&dir.path().join("pytorch_model.bin"), &weights, &[("output.weight", "tok_embeddings.weight")]);
    let lm_config = serde_json::json!({"model_type": "minimind", "architectures": ["MiniMindLM"], "dim": 64,
        "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 97, "hidden_dim": c.ffn_size(),
        "norm_eps": 1e-5, "rope_theta": 1e6, "max_seq_len": 8192});
    std::fs::write(dir.path().join("config.json"), lm_config.to_string()).unwrap();
    let (_out, model, classic) = import_model(dir.path(), &ImportOptions::default());
    assert!(classic && model.config.num_attention_heads == 4);
    let ids = random_ids(1, 10, 97, 9);
    let d =
        max_abs_diff(&classic_forward(&weights.into_iter().collect(), &c, &ids), &model.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "{d}");
}

/// MiniMind2-MoE (classic and HF names) and minimind-3 (dense and MoE) checkpoints written by PyTorch
/// (tools/make_moe_fixtures.py) reproduce the logits of a PyTorch forward of their architecture.
#[test]
fn moe_and_minimind3_checkpoints_reproduce_torch_logits() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pth/moe_micro_logits.json")).unwrap()).unwrap();
    let ids: Vec<u32> = meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let n = ids.len();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    // (file, classic names, MoE, shared experts, experts per token, q/k norm)
    for (file, classic, moe, shared, k, qk_norm) in [
        ("moe2_classic_micro.pth", true, true, 1, 2, false),
        ("moe2_micro.pth", false, true, 1, 2, false),
        ("v3_micro.pth", false, false, 0, 1, true),
        ("v3_moe_micro.pth", false, true, 0, 1, true),
    ] {
        let expected: Vec<f32> =
            meta["logits"][file].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let expected = Tensor::from_vec(expected, (1, n, 97), &Device::Cpu).unwrap();
        let (out, model, was_classic) = import_model(&fixture(&format!("pth/{file}")), &heads(2));
        let c = &model.config;
        assert_eq!((was_classic, c.use_moe, c.qk_norm), (classic, moe, qk_norm), "{file}");
        if moe {
            assert_eq!((c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok), (4, shared, k), "{file}");
        }
        let d = max_abs_diff(&model.forward(&ids, None).unwrap(), &expected);
        assert!(d < 1e-4, "{file}: logits differ from PyTorch's by {d}");
        // minimind-3 checkpoints get minimind-3's tokenizer (its template has the thinking switch).
        let template = std::fs::read_to_string(out.path().join("tokenizer_config.json")).unwrap();
        assert_eq!(template.contains("open_thinking"), qk_norm, "{file}");
    }
}

/// minimind-3's own config.json (HF folder): `num_experts`, `router_aux_loss_coef`, no q/k-norm flag.
#[test]
fn a_minimind3_hf_folder_imports_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("pth/v3_moe_micro.pth"), dir.path().join("pytorch_model.bin")).unwrap();
    let config = serde_json::json!({"model_type": "minimind", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 128,
        "vocab_size": 97, "rms_norm_eps": 1e-6, "use_moe": true, "num_experts": 4, "num_experts_per_tok": 1,
        "norm_topk_prob": true, "router_aux_loss_coef": 5e-4, "rope_scaling": null, "tie_word_embeddings": true});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (_out, model, _) = import_model(dir.path(), &ImportOptions::default());
    let c = &model.config;
    assert!(c.qk_norm && c.use_moe && c.n_shared_experts == 0 && c.router_aux_loss_coef == Some(5e-4));
    assert_eq!(c.num_parameters(), model.named_tensors().iter().map(|(_, t)| t.elem_count()).sum::<usize>());
}

/// MiniMind2-MoE's HF folder (V2r `MiniMindConfig` with `use_moe`) reproduces PyTorch's logits.
#[test]
fn a_minimind2_moe_hf_folder_imports() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pth/moe_micro_logits.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("pth/moe2_micro.pth"), dir.path().join("pytorch_model.bin")).unwrap();
    let config = serde_json::json!({"model_type": "minimind", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 128, "vocab_size": 97,
        "use_moe": true, "num_experts_per_tok": 2, "n_routed_experts": 4, "n_shared_experts": 1,
        "scoring_func": "softmax", "aux_loss_alpha": 0.1, "seq_aux": true, "norm_topk_prob": true});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let (_out, model, _) = import_model(dir.path(), &ImportOptions::default());
    let ids: Vec<u32> = meta["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let n = ids.len();
    let expected: Vec<f32> =
        meta["logits"]["moe2_micro.pth"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
    let d = max_abs_diff(
        &model.forward(&ids, None).unwrap(),
        &Tensor::from_vec(expected, (1, n, 97), &Device::Cpu).unwrap(),
    );
    assert!(d < 1e-4, "{d}");
    assert_eq!((model.config.n_shared_experts, model.config.num_experts_per_tok), (1, 2));
}
