//! HF Llama export and HF folder import: round trips, config fields, validation.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::interop::hf::{export_hf_llama, ExportDType};
use minimind::interop::import::{import, ImportOptions, Imported};
use minimind::model::checkpoint::{load_model, load_tensors, save_model, save_tensors};

/// Imports an HF folder as a model folder in `out`.
fn import_hf(src: &std::path::Path, out: &std::path::Path) -> minimind::MiniMindForCausalLM {
    match import(src, out, &ImportOptions::default()).unwrap() {
        Imported::Model { model, .. } => *model,
        Imported::Adapter { .. } => panic!("{} imported as an adapter", src.display()),
    }
}

fn model_folder() -> (tempfile::TempDir, minimind::MiniMindForCausalLM) {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = micro_model(31);
    save_model(dir.path(), &model).unwrap();
    (dir, model)
}

#[test]
fn f32_export_then_import_is_bit_exact() {
    let (src, model) = model_folder();
    let hf = tempfile::tempdir().unwrap();
    export_hf_llama(src.path(), None, hf.path(), ExportDType::F32).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    for key in [
        "rope_theta",
        "rms_norm_eps",
        "num_key_value_heads",
        "max_position_embeddings",
        "intermediate_size",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    ] {
        assert!(config.get(key).is_some(), "config.json lacks {key}");
    }
    assert!(hf.path().join("generation_config.json").exists());
    let tensors = load_tensors(&hf.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.contains_key("lm_head.weight"), "Llama exports carry an explicit head");
    let back = tempfile::tempdir().unwrap();
    let imported = import_hf(hf.path(), back.path());
    assert!(imported.config.tie_word_embeddings, "an exported head equal to the embedding is tied again");
    for ((name, a), (_, b)) in model.named_tensors().iter().zip(imported.named_tensors()) {
        assert_eq!(max_abs_diff(a, &b), 0.0, "{name}");
    }
    let (reloaded, _) = load_model(back.path(), &Device::Cpu, DType::F32, false).unwrap();
    let ids = random_ids(1, 9, 97, 2);
    assert_eq!(max_abs_diff(&model.forward(&ids, None).unwrap(), &reloaded.forward(&ids, None).unwrap()), 0.0);
}

#[test]
fn half_precision_exports_keep_logits_close() {
    let (src, model) = model_folder();
    let ids = random_ids(1, 9, 97, 3);
    let reference = model.forward(&ids, None).unwrap();
    for (dtype, tol) in [(ExportDType::F16, 5e-3), (ExportDType::Bf16, 5e-2)] {
        let hf = tempfile::tempdir().unwrap();
        export_hf_llama(src.path(), None, hf.path(), dtype).unwrap();
        let back = tempfile::tempdir().unwrap();
        let imported = import_hf(hf.path(), back.path());
        let d = max_abs_diff(&reference, &imported.forward(&ids, None).unwrap());
        assert!(d < tol, "{dtype:?}: logits differ by {d}");
    }
}

#[test]
fn import_lists_missing_extra_and_misshaped_tensors() {
    let (src, _) = model_folder();
    let hf = tempfile::tempdir().unwrap();
    export_hf_llama(src.path(), None, hf.path(), ExportDType::F32).unwrap();
    let path = hf.path().join("model.safetensors");
    let mut tensors = load_tensors(&path, &Device::Cpu).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    tensors.insert(
        "model.layers.0.self_attn.k_proj.weight".into(),
        Tensor::zeros((5, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert("model.layers.0.extra.weight".into(), Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap());
    save_tensors(&path, &tensors.into_iter().collect::<Vec<_>>()).unwrap();
    let err = format!(
        "{:#}",
        import(hf.path(), tempfile::tempdir().unwrap().path(), &ImportOptions::default()).err().unwrap()
    );
    for expect in [
        "model.layers.1.mlp.up_proj.weight: missing",
        "k_proj.weight: shape [5, 5]",
        "model.layers.0.extra.weight: unexpected",
    ] {
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn export_with_a_lora_adapter_writes_the_merged_model() {
    let (src, model) = model_folder();
    let mut adapted = model.clone();
    let config =
        minimind::model::lora::LoraConfig { rank: 2, alpha: 4.0, targets: vec!["q_proj".into(), "down_proj".into()] };
    let wb = minimind::model::params::WeightBuilder::random(5, DType::F32, &Device::Cpu, false);
    minimind::model::lora::attach(&mut adapted, &config, &wb).unwrap();
    for (_, linear) in adapted.linears_mut() {
        if let Some(l) = &mut linear.lora {
            l.b = (Tensor::ones(l.b.shape(), DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap();
        }
    }
    let adapter = tempfile::tempdir().unwrap();
    minimind::model::lora::save(adapter.path(), &adapted, &config).unwrap();
    let hf = tempfile::tempdir().unwrap();
    export_hf_llama(src.path(), Some(adapter.path()), hf.path(), ExportDType::F32).unwrap();
    let back = tempfile::tempdir().unwrap();
    let merged = import_hf(hf.path(), back.path());
    let ids = random_ids(1, 8, 97, 6);
    let expected = adapted.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&expected, &model.forward(&ids, None).unwrap()) > 1e-3, "the adapter changes the model");
    let d = max_abs_diff(&expected, &merged.forward(&ids, None).unwrap());
    assert!(d < 1e-4, "merged export differs from base + adapter by {d}");
}

/// minimind-3 models export as native Qwen3 / Qwen3-MoE folders (transformers' own config fields and
/// tensor names; tools/parity.py checks transformers' logits and greedy text) and import back exactly.
#[test]
fn minimind3_exports_as_qwen3_and_imports_back() {
    for (preset, arch) in [("minimind3", "Qwen3ForCausalLM"), ("minimind3-moe", "Qwen3MoeForCausalLM")] {
        let config = minimind::ModelConfig {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            intermediate_size: Some(64),
            vocab_size: 97,
            max_position_embeddings: 128,
            ..minimind::ModelConfig::preset(preset).unwrap()
        };
        let (model, _) = minimind::model::checkpoint::init_model(
            &config.resolved().unwrap(),
            minimind::model::params::InitScheme::Minimind2,
            3,
            &Device::Cpu,
        )
        .unwrap();
        let src = tempfile::tempdir().unwrap();
        save_model(src.path(), &model).unwrap();
        minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v3"), src.path()).unwrap();
        let hf = tempfile::tempdir().unwrap();
        minimind::interop::hf::export_hf(src.path(), None, hf.path(), ExportDType::F32).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(written["architectures"][0], arch);
        assert_eq!(written["tie_word_embeddings"], true);
        let tensors = load_tensors(&hf.path().join("model.safetensors"), &Device::Cpu).unwrap();
        assert!(tensors.contains_key("model.layers.1.self_attn.k_norm.weight"));
        assert_eq!(tensors.contains_key("model.layers.0.mlp.experts.3.down_proj.weight"), preset.ends_with("moe"));
        let back = import_hf(hf.path(), tempfile::tempdir().unwrap().path());
        assert_eq!((back.config.qk_norm, back.config.use_moe), (true, preset.ends_with("moe")));
        let ids = random_ids(1, 9, 97, 4);
        assert_eq!(max_abs_diff(&model.forward(&ids, None).unwrap(), &back.forward(&ids, None).unwrap()), 0.0);
    }
    // MiniMind2-MoE exports as GraniteMoeShared: experts' [gate; up] stacked, the shared MLP ungated.
    let config = minimind::ModelConfig { vocab_size: 97, ..minimind::ModelConfig::preset("tiny-moe").unwrap() };
    let (model, _) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        1,
        &Device::Cpu,
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    save_model(src.path(), &model).unwrap();
    let hf = tempfile::tempdir().unwrap();
    minimind::interop::hf::export_hf(src.path(), None, hf.path(), ExportDType::F32).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(written["model_type"], "granitemoeshared");
    assert_eq!((written["num_local_experts"].as_u64(), written["num_experts_per_tok"].as_u64()), (Some(4), Some(2)));
    let tensors = load_tensors(&hf.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let f = config.expert_ffn_size();
    let input = &tensors["model.layers.2.block_sparse_moe.input_linear.weight"];
    assert_eq!(input.dims(), [4, 2 * f, config.hidden_size]);
    let minimind::model::FeedForward::Moe(moe) = &model.model.layers[2].mlp else { panic!("not a MoE layer") };
    let expert = input.get(3).unwrap();
    assert_eq!(max_abs_diff(&expert.narrow(0, 0, f).unwrap(), &moe.experts[3].gate_proj.weight), 0.0);
    assert_eq!(max_abs_diff(&expert.narrow(0, f, f).unwrap(), &moe.experts[3].up_proj.weight), 0.0);
    assert!(tensors.contains_key("model.layers.0.shared_mlp.output_linear.weight"));
    assert!(!tensors.keys().any(|k| k.contains(".mlp.")), "no minimind names left");
}
