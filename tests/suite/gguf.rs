//! GGUF export read back with candle's GGUF reader: metadata keys and types, tensor shapes and data.

use crate::common::*;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use minimind::interop::gguf::{export, permute_for_llama_cpp, GgufType};

fn exported(ty: GgufType) -> (tempfile::TempDir, minimind::MiniMindForCausalLM, Content, std::fs::File) {
    let dir = tempfile::tempdir().unwrap();
    let config = micro_config(6400, 4, 2, 16);
    let (model, _) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        4,
        &Device::Cpu,
    )
    .unwrap();
    let folder = dir.path().join("m");
    minimind::model::checkpoint::save_model(&folder, &model).unwrap();
    minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v2"), &folder).unwrap();
    let path = dir.path().join("m.gguf");
    export(&folder, None, &path, ty).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = Content::read(&mut file).unwrap();
    (dir, model, content, file)
}

#[test]
fn metadata_is_what_llama_cpp_reads() {
    let (dir, model, content, _) = exported(GgufType::F32);
    let bytes = std::fs::read(dir.path().join("m.gguf")).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3, "GGUF v3");
    let m = &content.metadata;
    let u32_of = |k: &str| match &m[k] {
        Value::U32(v) => *v,
        other => panic!("{k} is {other:?}, expected u32"),
    };
    assert_eq!(m["general.architecture"].to_string().unwrap(), "llama");
    let c = &model.config;
    assert_eq!(u32_of("llama.context_length") as usize, c.max_position_embeddings);
    assert_eq!(u32_of("llama.embedding_length") as usize, c.hidden_size);
    assert_eq!(u32_of("llama.block_count") as usize, c.num_hidden_layers);
    assert_eq!(u32_of("llama.feed_forward_length") as usize, c.ffn_size());
    assert_eq!(u32_of("llama.attention.head_count") as usize, c.num_attention_heads);
    assert_eq!(u32_of("llama.attention.head_count_kv") as usize, c.num_key_value_heads);
    assert!(matches!(m["llama.rope.freq_base"], Value::F32(v) if v == 1e6));
    assert!(matches!(m["llama.attention.layer_norm_rms_epsilon"], Value::F32(v) if (v - 1e-5).abs() < 1e-12));
    assert_eq!(m["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    assert_eq!(m["tokenizer.ggml.pre"].to_string().unwrap(), "gpt-2");
    let tokens = m["tokenizer.ggml.tokens"].to_vec().unwrap();
    assert_eq!(tokens.len(), 6400);
    assert_eq!(tokens[1].to_string().unwrap(), "<|im_start|>");
    let types = m["tokenizer.ggml.token_type"].to_vec().unwrap();
    assert!(matches!(types[2], Value::I32(3)) && matches!(types[300], Value::I32(1)), "specials are control tokens");
    assert_eq!(m["tokenizer.ggml.merges"].to_vec().unwrap().len(), 6141);
    assert_eq!(
        (
            u32_of("tokenizer.ggml.bos_token_id"),
            u32_of("tokenizer.ggml.eos_token_id"),
            u32_of("tokenizer.ggml.padding_token_id")
        ),
        (1, 2, 0)
    );
    assert!(m["tokenizer.chat_template"].to_string().unwrap().contains("<|im_start|>"));
}

#[test]
fn tensors_have_llama_cpp_names_layout_and_data() {
    let (_dir, model, content, mut file) = exported(GgufType::F32);
    let c = &model.config;
    assert_eq!(content.tensor_infos.len(), 3 + 9 * c.num_hidden_layers);
    let read = |name: &str, file: &mut std::fs::File| -> Tensor {
        content.tensor(file, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap()
    };
    let l0 = &model.model.layers[0];
    assert_eq!(max_abs_diff(&read("token_embd.weight", &mut file), &model.model.embed_tokens), 0.0);
    assert_eq!(max_abs_diff(&read("blk.0.ffn_down.weight", &mut file), &l0.mlp.dense().unwrap().down_proj.weight), 0.0);
    assert_eq!(max_abs_diff(&read("blk.0.attn_v.weight", &mut file), &l0.self_attn.v_proj.weight), 0.0);
    // Q and K rows are in llama.cpp's interleaved-pair order.
    let q = read("blk.0.attn_q.weight", &mut file);
    assert_eq!(
        max_abs_diff(&q, &permute_for_llama_cpp(&l0.self_attn.q_proj.weight, c.num_attention_heads).unwrap()),
        0.0
    );
    let k = read("blk.0.attn_k.weight", &mut file);
    assert_eq!(k.dims(), l0.self_attn.k_proj.weight.dims());
    assert_eq!(
        max_abs_diff(&k, &permute_for_llama_cpp(&l0.self_attn.k_proj.weight, c.num_key_value_heads).unwrap()),
        0.0
    );
    assert_eq!(read("output_norm.weight", &mut file).dims(), [c.hidden_size]);
}

#[test]
fn permutation_moves_rotate_half_pairs_next_to_each_other() {
    // One head of D = 4 rows: rotate_half pairs rows (0, 2) and (1, 3); llama.cpp wants (0, 1), (2, 3).
    let w = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).unwrap();
    let p: Vec<f32> = permute_for_llama_cpp(&w, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(p, [0., 2., 1., 3.]);
}

#[test]
fn quantized_exports_stay_close() {
    for (ty, tol) in [(GgufType::F16, 1e-3), (GgufType::Q8_0, 2e-2)] {
        let (_dir, model, content, mut file) = exported(ty);
        let up =
            content.tensor(&mut file, "blk.1.ffn_up.weight", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        let d =
            max_abs_diff(&up.to_dtype(DType::F32).unwrap(), &model.model.layers[1].mlp.dense().unwrap().up_proj.weight);
        assert!(d < tol, "{ty:?}: {d}");
    }
}

/// minimind-3 exports as llama.cpp's `qwen3` / `qwen3moe`: q/k norms, unpermuted Q/K (both rotate
/// halves), the experts stacked `[E, F, d]` with their router, and the expert metadata; MiniMind2-MoE
/// as `granitemoe` with its shared expert.
#[test]
fn moe_and_minimind3_export_as_llama_cpp_architectures() {
    for (preset, arch) in [("minimind3", "qwen3"), ("minimind3-moe", "qwen3moe"), ("minimind2-moe", "granitemoe")] {
        let config = minimind::ModelConfig {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: Some(64),
            max_position_embeddings: 256,
            ..minimind::ModelConfig::preset(preset).unwrap()
        };
        let scheme = minimind::model::params::InitScheme::Minimind2;
        let (model, _) =
            minimind::model::checkpoint::init_model(&config.resolved().unwrap(), scheme, 5, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("m");
        minimind::model::checkpoint::save_model(&folder, &model).unwrap();
        minimind::model::checkpoint::copy_tokenizer_files(&tokenizer_dir("v3"), &folder).unwrap();
        let path = dir.path().join("m.gguf");
        export(&folder, None, &path, GgufType::F32).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut file).unwrap();
        let m = &content.metadata;
        assert_eq!(m["general.architecture"].to_string().unwrap(), arch);
        let read = |name: &str, file: &mut std::fs::File| {
            content.tensor(file, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap()
        };
        if arch == "granitemoe" {
            // MiniMind2-MoE: interleaved RoPE rows as for llama, the shared expert, neutral multipliers.
            assert!(matches!(m["granitemoe.attention.scale"], Value::F32(v) if (v - 0.25).abs() < 1e-7));
            assert!(matches!(m["granitemoe.logit_scale"], Value::F32(v) if v == 1.0));
            let shared = read("blk.0.ffn_down_shexp.weight", &mut file);
            let minimind::model::FeedForward::Moe(moe) = &model.model.layers[0].mlp else { panic!("not a MoE layer") };
            assert_eq!(max_abs_diff(&shared, &moe.shared_experts[0].down_proj.weight), 0.0);
            let q = read("blk.0.attn_q.weight", &mut file);
            let permuted = permute_for_llama_cpp(&model.model.layers[0].self_attn.q_proj.weight, 4).unwrap();
            assert_eq!(max_abs_diff(&q, &permuted), 0.0);
            continue;
        }
        assert!(
            matches!(m[&format!("{arch}.attention.layer_norm_rms_epsilon")], Value::F32(v) if (v - 1e-6).abs() < 1e-12)
        );
        let layer = &model.model.layers[1];
        let q = read("blk.1.attn_q.weight", &mut file);
        assert_eq!(max_abs_diff(&q, &layer.self_attn.q_proj.weight), 0.0, "qwen3 keeps rotate-half rows");
        let k_norm = read("blk.1.attn_k_norm.weight", &mut file);
        assert_eq!(max_abs_diff(&k_norm, &layer.self_attn.k_norm.as_ref().unwrap().weight), 0.0);
        if let minimind::model::FeedForward::Moe(moe) = &layer.mlp {
            assert!(matches!(m["qwen3moe.expert_count"], Value::U32(4)));
            assert!(matches!(m["qwen3moe.expert_used_count"], Value::U32(1)));
            let up = read("blk.1.ffn_up_exps.weight", &mut file);
            assert_eq!(up.dims(), [4, 64, 64]);
            assert_eq!(max_abs_diff(&up.get(2).unwrap(), &moe.experts[2].up_proj.weight), 0.0);
            assert_eq!(max_abs_diff(&read("blk.1.ffn_gate_inp.weight", &mut file), &moe.gate), 0.0);
        }
    }
}
