//! PPO: the clipped value loss and approximate KL against hand-computed values, per-token advantages,
//! a run from the CLI that raises the reward, and an exact resume from a checkpoint taken while a
//! rollout is being replayed.

use crate::common::{fixture, micro_v2_folder, minimind, ok, p, train_until};
use candle_core::{DType, Device, Tensor, Var};
use minimind::model::params::WeightBuilder;
use minimind::train::policy_loss::{approx_kl, policy_loss, value_loss, PolicyLossConfig, PolicyLossKind};
use minimind::train::ppo::{actor_critic, add_value_head, PpoConfig, PpoStage};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn the_value_loss_clips_around_the_old_values() {
    let cpu = Device::Cpu;
    let values = Var::new(&[[1.0f32, 0.5, 2.0]], &cpu).unwrap();
    let old = Tensor::new(&[[0.9f32, 0.8, 0.8]], &cpu).unwrap();
    let returns = Tensor::new(&[[1.5f32, 0.0, 1.0]], &cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &cpu).unwrap();
    let loss = value_loss(values.as_tensor(), &old, &returns, &mask, 0.2).unwrap();
    // Token 0 moved 0.1 (inside the clip): (1.0 − 1.5)² = 0.25. Token 1 moved −0.3: clipped to
    // 0.6, (0.6 − 0)² = 0.36 > (0.5 − 0)² — the clipped term wins and carries no gradient.
    // ½ · mean(0.25, 0.36) = 0.1525; token 2 is masked.
    assert!(close(loss.to_scalar::<f32>().unwrap() as f64, 0.1525));
    let grads = loss.backward().unwrap();
    let g: Vec<f32> = grads.get(values.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // d/dV₀ = ½ · 2(V₀ − R₀) / 2 = −0.25.
    assert!(close(g[0] as f64, -0.25) && g[1] == 0.0 && g[2] == 0.0, "{g:?}");
    let logp = Tensor::new(&[[-1.0f32, -2.0, -3.0]], &cpu).unwrap();
    let old_logp = Tensor::new(&[[-1.5f32, -2.0, 0.0]], &cpu).unwrap();
    assert!(close(approx_kl(&logp, &old_logp, &mask).unwrap(), 0.0625));
}

/// Advantages per token that are constant along each row give exactly the per-sequence loss.
#[test]
fn per_token_advantages_generalize_per_sequence_ones() {
    let cpu = Device::Cpu;
    let logp = Tensor::new(&[[-1.0f32, -0.5, -2.0], [-0.3, -0.7, -1.1]], &cpu).unwrap();
    let old = Tensor::new(&[[-1.1f32, -0.4, -2.0], [-0.2, -0.9, -1.0]], &cpu).unwrap();
    let reference = Tensor::new(&[[-1.2f32, -0.6, -1.8], [-0.3, -0.6, -1.2]], &cpu).unwrap();
    let mask = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 1.0]], &cpu).unwrap();
    let c = PolicyLossConfig { kind: PolicyLossKind::Grpo, beta: 0.02, epsilon: 0.2, epsilon_high: 0.0 };
    let per_seq = Tensor::new(&[0.7f32, -1.3], &cpu).unwrap();
    let per_token = per_seq.unsqueeze(1).unwrap().broadcast_as((2, 3)).unwrap().contiguous().unwrap();
    let (a, sa) = policy_loss(&logp, &old, &reference, &per_seq, &mask, &c).unwrap();
    let (b, sb) = policy_loss(&logp, &old, &reference, &per_token, &mask, &c).unwrap();
    assert_eq!(a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
    assert_eq!(sa, sb);
}

/// From the CLI: a micro model fine-tuned to answer briefly (−0.5 under MiniMind's length rule),
/// then `minimind ppo` with the rule reward: the reward rises; every rollout gets its two updates
/// unless the KL stops it; the output is a plain model folder that generates.
#[test]
fn ppo_from_the_cli_raises_the_rule_reward() {
    let dir = tempfile::tempdir().unwrap();
    let (base, chat, rl) = (micro_v2_folder(dir.path()), dir.path().join("chat"), dir.path().join("rl"));
    let data = fixture("sft_zh_en_32.jsonl");
    let sft = ["sft", "--model", p(&base), "--data", p(&data), "--out", p(&chat), "--batch-size", "4"];
    ok(minimind(&[&sft[..], &["--max-seq-len", "96", "--max-steps", "40", "--lr", "3e-3"]].concat()));
    let ppo = ["ppo", "--model", p(&chat), "--data", p(&data), "--out", p(&rl), "--group", "4", "--batch-size", "3"];
    let flags = ["--max-new-tokens", "40", "--max-seq-len", "128", "--max-steps", "24", "--lr", "2e-3"];
    ok(minimind(&[&ppo[..], &flags[..]].concat()));
    let rows = minimind::train::metrics::read_metrics(&rl.join("metrics.jsonl")).unwrap();
    let stat = |r: &minimind::train::metrics::StepMetrics, k: &str| r.extra[k];
    let rewards: Vec<f64> = rows.iter().map(|r| stat(r, "reward")).collect();
    let (first, last) = (rewards[0], rewards[rewards.len() - 4..].iter().sum::<f64>() / 4.0);
    let lengths: Vec<f64> = rows.iter().map(|r| stat(r, "length")).collect();
    assert!(last > first + 0.4, "reward {first} → {last}: {rewards:?} lengths {lengths:?}");
    for pair in rows.windows(2) {
        // An update follows the previous one on the same rollout, or a new rollout starts; a further
        // update happens only while the policy is within --target-kl of the one that sampled.
        let (a, b) = (stat(&pair[0], "update"), stat(&pair[1], "update"));
        assert!(b == 1.0 || (b == a + 1.0 && stat(&pair[1], "approx_kl") <= 0.25), "{pair:?}");
    }
    assert!(rows.iter().all(|r| stat(r, "value_loss").is_finite() && stat(r, "value_loss") >= 0.0));
    ok(minimind(&["generate", "--model", p(&rl), "--prompt", "你好", "--chat", "--max-new-tokens", "4"]));
    // With --target-kl 0 every replay is refused (the policy moved in its first update): each step
    // rolls out new prompts.
    let strict = dir.path().join("strict");
    let args = ["ppo", "--model", p(&chat), "--data", p(&data), "--out", p(&strict), "--ppo-epochs", "3"];
    let flags =
        ["--target-kl", "0", "--max-new-tokens", "8", "--max-seq-len", "128", "--max-steps", "4", "--lr", "2e-3"];
    ok(minimind(&[&args[..], &flags[..]].concat()));
    let rows = minimind::train::metrics::read_metrics(&strict.join("metrics.jsonl")).unwrap();
    assert!(rows.iter().all(|r| stat(r, "update") == 1.0), "{rows:?}");
}

fn ppo_stage<'a>(
    t: &'a minimind::Tokenizer,
    base: &std::path::Path,
    head: std::rc::Rc<std::cell::RefCell<Option<minimind::train::reward_model::ScoreHead>>>,
    target_kl: f64,
) -> PpoStage<'a> {
    let (reference, _) = minimind::model::checkpoint::load_model(base, &Device::Cpu, DType::F32, false).unwrap();
    let data = minimind::data::rl::RlData::open(&fixture("sft_zh_en_32.jsonl"), false, t, 128, 2, 1).unwrap();
    let rollout =
        minimind::train::grpo::RolloutConfig { group: 2, max_new_tokens: 5, temperature: 1.0, ..Default::default() };
    let ppo = PpoConfig { epochs: 3, target_kl, ..PpoConfig::default() };
    PpoStage::new(data, t, reference, rollout, ppo, head, 1, Device::Cpu).unwrap()
}

/// A PPO run killed after a checkpoint taken in the middle of a rollout's updates and resumed equals
/// the uninterrupted run: the rollout under replay travels in the checkpoint. Also when the KL
/// refuses replays (the next prompts, rolled out instead, then count as used).
#[test]
fn a_resumed_ppo_run_matches_an_uninterrupted_one() {
    resumed_ppo_matches(f64::INFINITY);
    resumed_ppo_matches(1e-7);
}

fn resumed_ppo_matches(target_kl: f64) {
    let t = minimind::Tokenizer::load(&crate::common::tokenizer_dir("v2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = micro_v2_folder(dir.path());
    let build = |tensors: std::collections::HashMap<String, Tensor>| {
        let config = minimind::ModelConfig::load(&base.join("config.json")).unwrap();
        let wb = WeightBuilder::loaded(tensors, DType::F32, &Device::Cpu, true);
        let (lm, head) = actor_critic(&config, &wb).unwrap();
        (lm, std::rc::Rc::new(std::cell::RefCell::new(Some(head))), wb.finish().unwrap())
    };
    let fresh = || {
        let (_, mut tensors) = minimind::model::checkpoint::model_tensors(&base, &Device::Cpu).unwrap();
        add_value_head(&mut tensors, 64, 5, &Device::Cpu).unwrap();
        build(tensors)
    };
    let opts = |out: &std::path::Path| minimind::train::TrainOptions {
        max_steps: Some(6),
        save_every: 2,
        ..crate::common::train_options(out)
    };
    let straight = tempfile::tempdir().unwrap();
    let (model, head, params) = fresh();
    minimind::train::train(&model, &params, &mut ppo_stage(&t, &base, head, target_kl), &opts(straight.path()))
        .unwrap();
    // Step 2 is the second of three updates on the first rollout: its checkpoint carries the rollout.
    let resumed = tempfile::tempdir().unwrap();
    let (model, head, params) = fresh();
    train_until(&model, &params, &mut ppo_stage(&t, &base, head, target_kl), &opts(resumed.path()), 2);
    let (state, tensors, optimizer, carried) = minimind::train::resume::load(resumed.path(), &Device::Cpu).unwrap();
    assert!(carried.contains_key("advantages"), "{:?}", carried.keys());
    let (model, head, params) = build(tensors);
    let resume = minimind::train::resume::Resume { state, optimizer, stage: carried };
    let options = minimind::train::TrainOptions { resume: Some(resume), ..opts(resumed.path()) };
    minimind::train::train(&model, &params, &mut ppo_stage(&t, &base, head, target_kl), &options).unwrap();
    let strip = |dir: &std::path::Path| -> Vec<String> {
        minimind::train::metrics::read_metrics(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| format!("{:?}", (r.step, r.loss, r.grad_norm, r.tokens, &r.extra)))
            .collect()
    };
    let updates: Vec<f64> = minimind::train::metrics::read_metrics(&straight.path().join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.extra["update"])
        .collect();
    let expected = if target_kl.is_infinite() { [1.0, 2.0, 3.0, 1.0, 2.0, 3.0] } else { [1.0; 6] };
    assert_eq!(updates, expected);
    let (a, b) = (strip(straight.path()), strip(resumed.path()));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}
