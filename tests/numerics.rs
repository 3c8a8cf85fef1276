//! Whole-model check: a short pretraining run gives the same loss curve with the fused kernels as
//! with the composed reference ops — for the dense MiniMind2 shape and for minimind-3-MoE's (q/k norm,
//! routed experts, aux loss). (One test in this binary: it flips the process-wide switch.)
mod common;

use candle_core::Device;
use common::*;
use minimind::data::LmBatch;
use minimind::train::optim::{clip_factor, grad_norm, AdamW, AdamWConfig, GradAccumulator, LrSchedule};
use minimind::{ops, train::lm::lm_loss};

/// The micro test model, or its minimind-3-MoE-shaped twin.
fn model(moe: bool) -> (minimind::MiniMindForCausalLM, minimind::model::params::Params) {
    if !moe {
        return micro_model(21);
    }
    let config = minimind::ModelConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        intermediate_size: Some(96),
        vocab_size: 97,
        max_position_embeddings: 256,
        n_routed_experts: 3,
        ..minimind::ModelConfig::preset("minimind3-moe").unwrap()
    };
    let scheme = minimind::model::params::InitScheme::Minimind2;
    minimind::model::checkpoint::init_model(&config.resolved().unwrap(), scheme, 21, &Device::Cpu).unwrap()
}

fn loss_curve(fused: bool, moe: bool) -> Vec<f64> {
    ops::set_fused(fused);
    let (model, params) = model(moe);
    let mut optimizer = if fused {
        AdamW::new(&params, AdamWConfig::default()).unwrap()
    } else {
        AdamW::composed(&params, AdamWConfig::default()).unwrap()
    };
    let mut acc = GradAccumulator::new(&params);
    let ids = random_ids(4, 70, 97, 5).to_vec2::<u32>().unwrap();
    let mut losses = Vec::new();
    for step in 0..12 {
        // Two alternating batches; the second has padding (masked targets).
        let rows: Vec<(Vec<u32>, usize)> = ids
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), if step % 2 == 1 && i % 2 == 1 { 40 } else { 70 }))
            .collect();
        let batch = LmBatch::from_rows(&rows, &Device::Cpu).unwrap();
        let loss = lm_loss(&model, &batch, None).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap() as f64);
        acc.add(&params, &loss.backward().unwrap()).unwrap();
        let grads = acc.take(&params).unwrap();
        let norm = grad_norm(&grads).unwrap();
        optimizer.step(&grads, LrSchedule::Minimind2.at(3e-3, step, 12), clip_factor(norm, 1.0)).unwrap();
    }
    ops::set_fused(true);
    losses
}

#[test]
fn fused_and_composed_training_give_the_same_loss_curve() {
    for moe in [false, true] {
        let fused = loss_curve(true, moe);
        let composed = loss_curve(false, moe);
        assert!(fused[11] < fused[0] - 0.5, "moe {moe}: loss did not fall: {fused:?}");
        for (step, (a, b)) in fused.iter().zip(&composed).enumerate() {
            assert!((a - b).abs() < 1e-3, "moe {moe}, step {step}: fused {a} vs composed {b}");
        }
    }
}
