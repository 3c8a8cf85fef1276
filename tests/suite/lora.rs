//! LoRA: trainable-parameter count, frozen base, adapter files, merge.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::data::LmBatch;
use minimind::model::lora::{self, LoraConfig};
use minimind::model::params::{InitScheme, WeightBuilder};
use minimind::train::lm::lm_loss;
use minimind::train::optim::{AdamW, AdamWConfig};
use minimind::{MiniMindForCausalLM, ModelConfig};

fn frozen(config: &ModelConfig, seed: u64) -> MiniMindForCausalLM {
    let wb = WeightBuilder::random(seed, DType::F32, &Device::Cpu, false);
    MiniMindForCausalLM::new(config, &wb, InitScheme::Minimind2).unwrap()
}

fn qo(rank: usize) -> LoraConfig {
    LoraConfig { rank, alpha: rank as f64, targets: vec!["q_proj".into(), "o_proj".into()] }
}

#[test]
fn minimind2_small_rank_16_on_q_and_o_trains_262144_parameters() {
    let mut model = frozen(&ModelConfig::preset("minimind2-small").unwrap(), 0);
    let params = lora::attach_new(&mut model, &qo(16), 1).unwrap();
    assert_eq!(params.num_elements(), 262_144);
    assert_eq!(params.entries.len(), 8 * 2 * 2);
    assert_eq!(params.entries[0].0, "model.layers.0.self_attn.q_proj.lora.A.weight");
    assert_eq!(params.entries[1].0, "model.layers.0.self_attn.q_proj.lora.B.weight");
    let bad = LoraConfig { targets: vec!["lm_head".into()], ..qo(4) };
    assert!(lora::attach_new(&mut frozen(&ModelConfig::preset("tiny").unwrap(), 0), &bad, 1).is_err());
}

#[test]
fn training_moves_only_the_adapter_and_merge_gives_the_same_logits() {
    let config = micro_config(97, 4, 2, 16);
    let mut model = frozen(&config, 3);
    let base: Vec<(String, Tensor)> = model.named_tensors().into_iter().map(|(n, t)| (n, t.copy().unwrap())).collect();
    let ids = random_ids(2, 13, 97, 7);
    let before = model.forward(&ids, None).unwrap();
    let params = lora::attach_new(&mut model, &qo(4), 5).unwrap();
    // B = 0: the adapted model starts as the base.
    assert_eq!(max_abs_diff(&before, &model.forward(&ids, None).unwrap()), 0.0);
    let rows: Vec<(Vec<u32>, usize)> = ids.to_vec2::<u32>().unwrap().into_iter().map(|r| (r, 13)).collect();
    let batch = LmBatch::from_rows(&rows, &Device::Cpu).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    for _ in 0..5 {
        let grads = lm_loss(&model, &batch, None).unwrap().backward().unwrap();
        let g: Vec<Tensor> = params.vars().map(|v| grads.get(v.as_tensor()).unwrap().detach()).collect();
        opt.step(&g, 1e-2, 1.0).unwrap();
    }
    for ((name, a), (_, b)) in base.iter().zip(model.named_tensors()) {
        assert_eq!(max_abs_diff(a, &b), 0.0, "base weight {name} changed");
    }
    let adapted = model.forward(&ids, None).unwrap();
    assert!(max_abs_diff(&before, &adapted) > 1e-4, "the adapter had no effect");
    // Save and reload the adapter on a fresh copy of the base; then merge.
    let dir = tempfile::tempdir().unwrap();
    lora::save(dir.path(), &model, &qo(4)).unwrap();
    let names: Vec<String> =
        minimind::model::checkpoint::load_tensors(&dir.path().join(lora::ADAPTER_FILE), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(names.iter().all(|n| n.contains(".lora.A.weight") || n.contains(".lora.B.weight")), "{names:?}");
    assert_eq!(names.len(), 2 * 2 * 2);
    let mut reloaded = frozen(&config, 3);
    lora::load(&mut reloaded, dir.path(), &Device::Cpu).unwrap();
    assert!(max_abs_diff(&adapted, &reloaded.forward(&ids, None).unwrap()) < 1e-6);
    lora::merge(&mut reloaded).unwrap();
    assert!(max_abs_diff(&adapted, &reloaded.forward(&ids, None).unwrap()) < 1e-4);
}
