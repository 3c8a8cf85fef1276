//! Reinforcement learning's pieces against hand-computed cases: group-normalized advantages, the
//! completion mask, the GRPO and CISPO losses with their gradients, GAE, and the rule rewards.

use crate::common::{max_abs_diff, micro_v2_folder, micro_v2_model};
use candle_core::{Device, Tensor, Var};
use minimind::train::metrics::StepMetrics;
use minimind::train::policy_loss::{
    completion_mask, gae, group_advantages, policy_loss, whiten, PolicyLossConfig, PolicyLossKind,
};
use minimind::train::rewards::{format_reward, gt_match, last_number, minimind_rule_reward, repetition_penalty};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn advantages_are_normalized_within_each_group() {
    let a = group_advantages(&[1.0, 2.0, 3.0, 5.0, 5.0, 5.0], 3).unwrap();
    let std = (2.0f64 / 3.0).sqrt(); // biased std of 1, 2, 3
    let expected = [-1.0 / (std + 1e-4), 0.0, 1.0 / (std + 1e-4), 0.0, 0.0, 0.0];
    for (got, want) in a.iter().zip(expected) {
        assert!(close(*got, want, 1e-12), "{a:?}");
    }
    assert!(group_advantages(&[1.0, 2.0, 3.0], 2).unwrap_err().to_string().contains("groups of 2"));
}

#[test]
fn the_mask_counts_tokens_through_the_first_stop() {
    assert_eq!(completion_mask(&[5, 7, 2, 9, 2], &[2]), [1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(completion_mask(&[5, 7], &[2]), [1.0, 1.0]);
}

/// One completion of two tokens: the policy's log-probabilities ln ½ and ln ¼, the sampler's ln 0.4
/// and ln ¼, the reference's ln ½ and ln ½, advantage 2, β 0.1, ε 0.2.
fn case(kind: PolicyLossKind) -> (f64, Vec<f32>, f64, f64) {
    let dev = Device::Cpu;
    let logp = Var::from_tensor(&Tensor::new(&[[0.5f32.ln(), 0.25f32.ln()]], &dev).unwrap()).unwrap();
    let old = Tensor::new(&[[0.4f32.ln(), 0.25f32.ln()]], &dev).unwrap();
    let reference = Tensor::new(&[[0.5f32.ln(), 0.5f32.ln()]], &dev).unwrap();
    let advantages = Tensor::new(&[2.0f32], &dev).unwrap();
    let mask = Tensor::new(&[[1.0f32, 1.0]], &dev).unwrap();
    let config = PolicyLossConfig { kind, beta: 0.1, epsilon: 0.2, epsilon_high: 5.0 };
    let (loss, stats) = policy_loss(logp.as_tensor(), &old, &reference, &advantages, &mask, &config).unwrap();
    let grads = loss.backward().unwrap();
    let grad = grads.get(logp.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (loss.to_scalar::<f32>().unwrap() as f64, grad, stats.kl, stats.clip_fraction)
}

#[test]
fn grpo_clips_the_ratio_and_adds_the_k3_kl() {
    // Token 0: ratio 1.25 clipped to 1.2 → −2.4 (no gradient through the clipped term), KL 0.
    // Token 1: ratio 1 → −2, KL e^(ln 2) − ln 2 − 1 = 0.306853 → −2 + 0.0306853.
    let (loss, grad, kl, clipped) = case(PolicyLossKind::Grpo);
    assert!(close(loss, (-2.4 + (-2.0 + 0.1 * 0.306853)) / 2.0, 1e-5), "{loss}");
    // d/dlogπ₁: −ratio·A + β·(1 − e^(ref − logπ)) = −2 − 0.1, over two tokens.
    assert!(close(grad[0] as f64, 0.0, 1e-6) && close(grad[1] as f64, -2.1 / 2.0, 1e-5), "{grad:?}");
    assert!(close(kl, 0.306853 / 2.0, 1e-5) && close(clipped, 0.5, 1e-9), "{kl} {clipped}");
}

#[test]
fn cispo_weighs_log_probabilities_by_the_capped_ratio() {
    // Token 0: −1.25·2·ln ½; token 1: −1·2·ln ¼ + 0.1·0.306853.
    let (loss, grad, _, clipped) = case(PolicyLossKind::Cispo);
    let expected = (-2.5 * 0.5f64.ln() + (-2.0 * 0.25f64.ln() + 0.0306853)) / 2.0;
    assert!(close(loss, expected, 1e-5), "{loss} vs {expected}");
    // The ratio is a constant weight: d/dlogπ = −w·A (+ the KL's −β on token 1), over two tokens.
    assert!(close(grad[0] as f64, -1.25, 1e-5) && close(grad[1] as f64, -1.05, 1e-5), "{grad:?}");
    assert_eq!(clipped, 0.0);
}

#[test]
fn gae_spreads_the_last_reward_back() {
    let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.6, 0.7], 1.0, 0.95).unwrap();
    for (got, want) in a.iter().zip([0.46575, 0.385, 0.3]) {
        assert!(close(*got, want, 1e-12), "{a:?}");
    }
    for (got, want) in r.iter().zip([0.96575, 0.985, 1.0]) {
        assert!(close(*got, want, 1e-12), "{r:?}");
    }
    let w = whiten(&[1.0, 2.0, 3.0]);
    assert!(close(w.iter().sum::<f64>(), 0.0, 1e-12) && close(w[2], 1.0 / (2.0f64 / 3.0).sqrt(), 1e-6));
}

#[test]
fn rule_rewards_follow_minimind() {
    let long = "这是一个足够长的回答，包含二十多个字符的内容呢。";
    assert_eq!(format_reward(long), 0.5);
    assert_eq!(format_reward("太短"), -0.5);
    let thought = format!("{}</think>{long}", "思考".repeat(12)); // 24 characters of thinking
    assert_eq!(format_reward(&thought), 0.5 + 1.0 + 0.25);
    assert_eq!(format_reward(&format!("短</think>{long}</think>")), 0.5 - 0.5 - 0.25);
    // "a b c a b c": 3-grams abc, bca, cab, abc — one duplicate of four → 1·0.5·2/4.
    assert_eq!(repetition_penalty("a b c a b c", 3, 0.5), 0.25);
    assert_eq!(repetition_penalty("你好。你好。", 3, 0.5), 0.0); // 你好 。 你好 。: two distinct 3-grams
    assert_eq!(repetition_penalty(&"the end ".repeat(50), 3, 0.5), 0.5);
    assert_eq!(minimind_rule_reward(&format!("{long} {}", "la la ".repeat(30))), 0.5 - 0.5);
}

#[test]
fn answers_match_the_ground_truth_numerically_or_as_text() {
    assert_eq!(gt_match("6 × 7 = 42。", "42"), 1.0);
    assert_eq!(gt_match("<think>先算 6×7=41？不对</think>答案是 42", "42"), 1.0);
    assert_eq!(gt_match("答案是 41", "42"), 0.0);
    assert_eq!(gt_match("total: 1,234.5", "1234.5"), 1.0);
    assert_eq!(gt_match("The answer:\nParis.", "paris"), 1.0);
    assert_eq!(gt_match("London", "paris"), 0.0);
    assert_eq!(last_number("x = -3.5"), Some(-3.5));
    assert_eq!(last_number("-3.5 and 7."), Some(7.0));
    assert_eq!(last_number("none"), None);
}

/// GRPO on a micro model through the library: rollouts, rewards and the loss each step; the
/// reference does not move while the policy does; answers stay within their budget.
#[test]
fn grpo_trains_the_policy_and_keeps_the_reference() {
    use minimind::data::tokenizer::Tokenizer;
    use minimind::train::grpo::RolloutConfig;
    let t = Tokenizer::load(&crate::common::tokenizer_dir("v2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = micro_v2_folder(dir.path());
    let load =
        |trainable| minimind::model::checkpoint::load_model(&base, &Device::Cpu, candle_core::DType::F32, trainable);
    let ((policy, params), (reference, _)) = (load(true).unwrap(), load(false).unwrap());
    let ids = crate::common::random_ids(1, 12, 6400, 9);
    let before = reference.forward(&ids, None).unwrap();
    let rollout = RolloutConfig {
        group: 4,
        max_new_tokens: 6,
        temperature: 1.0,
        rule_weight: 1.0,
        gt_weight: 1.0,
        ..Default::default()
    };
    let loss = PolicyLossConfig { kind: PolicyLossKind::Grpo, ..Default::default() };
    let mut stage = grpo_stage(&t, reference, rollout, loss).unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = minimind::train::TrainOptions { max_steps: Some(3), ..crate::common::train_options(out.path()) };
    minimind::train::train(&policy, &params, &mut stage, &opts).unwrap();
    let rows = metrics(out.path());
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!(stat(r, "kl") >= 0.0 && stat(r, "length") <= 6.0 && stat(r, "reward").abs() <= 2.0, "{r:?}");
        assert!((0.0..=1.0).contains(&stat(r, "clip_fraction")), "{r:?}");
    }
    assert_eq!(stat(&rows[0], "kl"), 0.0, "the policy starts as the reference");
    assert_eq!(max_abs_diff(&stage.reference().forward(&ids, None).unwrap(), &before), 0.0);
    assert!(max_abs_diff(&policy.forward(&ids, None).unwrap(), &before) > 0.0, "the policy trained");
    // A tokenizer larger than the model's vocabulary is refused up front, not met as a bad index.
    let (small, _) = crate::common::micro_model(1);
    match grpo_stage(&t, small, RolloutConfig::default(), PolicyLossConfig::default()) {
        Err(e) => assert!(e.to_string().contains("tokenizer has 6400 tokens but the model only 97"), "{e}"),
        Ok(_) => panic!("a 97-token model took a 6400-token tokenizer"),
    };
}

/// GRPO over the SFT fixture's prompts, two a batch (seed 1).
fn grpo_stage<'a>(
    t: &'a minimind::Tokenizer,
    reference: minimind::MiniMindForCausalLM,
    rollout: minimind::train::grpo::RolloutConfig,
    loss: PolicyLossConfig,
) -> anyhow::Result<minimind::train::grpo::GrpoStage<'a>> {
    let data = minimind::data::rl::RlData::open(&crate::common::fixture("sft_zh_en_32.jsonl"), false, t, 128, 2, 1)?;
    minimind::train::grpo::GrpoStage::new(data, t, reference, rollout, loss, 1, Device::Cpu)
}

fn metrics(dir: &std::path::Path) -> Vec<StepMetrics> {
    minimind::train::metrics::read_metrics(&dir.join("metrics.jsonl")).unwrap()
}

/// A stage's own figure of a step (`reward`, `kl`, …).
fn stat(row: &StepMetrics, name: &str) -> f64 {
    *row.extra.get(name).unwrap_or_else(|| panic!("no {name} in {row:?}"))
}

/// From the CLI: a micro model fine-tuned to answer briefly (too short for MiniMind's length rule,
/// −0.5), then `minimind grpo` with the rule reward — the mean reward rises as answers lengthen.
#[test]
fn grpo_from_the_cli_raises_the_rule_reward() {
    use crate::common::{fixture, minimind, ok, p};
    let dir = tempfile::tempdir().unwrap();
    let (base, chat, rl) = (micro_v2_folder(dir.path()), dir.path().join("chat"), dir.path().join("rl"));
    let data = fixture("sft_zh_en_32.jsonl");
    ok(minimind(&[
        "sft",
        "--model",
        p(&base),
        "--data",
        p(&data),
        "--out",
        p(&chat),
        "--batch-size",
        "4",
        "--max-seq-len",
        "96",
        "--max-steps",
        "40",
        "--lr",
        "3e-3",
    ]));
    ok(minimind(&[
        "grpo",
        "--model",
        p(&chat),
        "--data",
        p(&data),
        "--out",
        p(&rl),
        "--group",
        "6",
        "--max-new-tokens",
        "40",
        "--max-seq-len",
        "128",
        "--batch-size",
        "2",
        "--max-steps",
        "12",
        "--lr",
        "2e-3",
        "--loss-type",
        "grpo",
    ]));
    let rewards: Vec<f64> = metrics(&rl).iter().map(|r| stat(r, "reward")).collect();
    let (first, last) = (rewards[0], rewards[rewards.len() - 3..].iter().sum::<f64>() / 3.0);
    assert!(last > first + 0.5, "reward {first} → {last}: {rewards:?}");
    assert!(rl.join("model.safetensors").exists() || rl.join("config.json").exists());
}

/// A local scorer service: each completion scores its length in characters (`/short` answers one
/// score too few).
fn scorer_server() -> u16 {
    use axum::routing::post;
    use axum::Json;
    let score = |Json(body): Json<serde_json::Value>| async move {
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let scores: Vec<f64> =
            items.iter().map(|i| i["completion"].as_str().unwrap_or("").chars().count() as f64).collect();
        Json(serde_json::json!({ "scores": scores }))
    };
    let short = |Json(_): Json<serde_json::Value>| async move { Json(serde_json::json!({ "scores": [1.0] })) };
    crate::common::serve_router(axum::Router::new().route("/score", post(score)).route("/short", post(short)))
}

/// `--reward-url`: batches of completions posted to a service, its scores read back in order; a
/// wrong answer or an unreachable service is an error naming the URL.
#[test]
fn an_external_scorer_scores_completions_over_http() {
    use minimind::train::rewards::{ExternalScorer, ScoreItem};
    let port = scorer_server();
    let items = [
        ScoreItem { prompt: "1+1?", completion: "2", gt: Some("2") },
        ScoreItem { prompt: "你好", completion: "你好呀", gt: None },
    ];
    let scorer = ExternalScorer::new(&format!("http://127.0.0.1:{port}/score")).unwrap();
    assert_eq!(scorer.score(&items).unwrap(), [1.0, 3.0]);
    let short = ExternalScorer::new(&format!("http://127.0.0.1:{port}/short")).unwrap();
    let err = format!("{:#}", short.score(&items).unwrap_err());
    assert!(err.contains("/short") && err.contains("2 finite numbers"), "{err}");
    let gone = ExternalScorer::new("http://127.0.0.1:9/score").unwrap();
    assert!(format!("{:#}", gone.score(&items).unwrap_err()).contains("127.0.0.1:9"));
    assert!(ExternalScorer::new("ftp://x").is_err());
}

/// GRPO with only the external reward: each step's reward is the service's mean score.
#[test]
fn grpo_takes_its_reward_from_the_url() {
    use minimind::data::tokenizer::Tokenizer;
    use minimind::train::grpo::RolloutConfig;
    let port = scorer_server();
    let t = Tokenizer::load(&crate::common::tokenizer_dir("v2")).unwrap();
    let ((policy, params), (reference, _)) = (micro_v2_model(4), micro_v2_model(4));
    let rollout = RolloutConfig {
        group: 3,
        max_new_tokens: 5,
        temperature: 1.0,
        rule_weight: 0.0,
        gt_weight: 0.0,
        reward_url: Some((format!("http://127.0.0.1:{port}/score"), 1.0)),
        ..Default::default()
    };
    let mut stage = grpo_stage(&t, reference, rollout, PolicyLossConfig::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = minimind::train::TrainOptions { max_steps: Some(2), ..crate::common::train_options(out.path()) };
    minimind::train::train(&policy, &params, &mut stage, &opts).unwrap();
    for r in metrics(out.path()) {
        let (reward, external) = (stat(&r, "reward"), stat(&r, "reward_external"));
        assert!(external > 0.0 && (reward - external).abs() < 1e-9, "{r:?}");
    }
}

/// A GRPO run killed after its step-2 checkpoint and resumed equals the uninterrupted run: the
/// rollouts' seeds come from the data position, so the resumed steps sample the same answers.
#[test]
fn a_resumed_grpo_run_matches_an_uninterrupted_one() {
    use minimind::data::tokenizer::Tokenizer;
    use minimind::train::grpo::RolloutConfig;
    let t = Tokenizer::load(&crate::common::tokenizer_dir("v2")).unwrap();
    let init = || micro_v2_model(6);
    let stage = || {
        let rollout = RolloutConfig { group: 3, max_new_tokens: 5, temperature: 1.0, ..Default::default() };
        grpo_stage(&t, init().0, rollout, PolicyLossConfig::default()).unwrap()
    };
    let opts = |dir: &std::path::Path| minimind::train::TrainOptions {
        max_steps: Some(4),
        save_every: 2,
        ..crate::common::train_options(dir)
    };
    let straight = tempfile::tempdir().unwrap();
    let (model, params) = init();
    minimind::train::train(&model, &params, &mut stage(), &opts(straight.path())).unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let (model, params) = init();
    crate::common::train_until(&model, &params, &mut stage(), &opts(resumed.path()), 2);
    let (model, params, resume) = minimind::train::resume::load_run(resumed.path(), &Device::Cpu).unwrap();
    let options = minimind::train::TrainOptions { resume: Some(resume), ..opts(resumed.path()) };
    minimind::train::train(&model, &params, &mut stage(), &options).unwrap();
    // Everything but the timings.
    let strip = |dir: &std::path::Path| -> Vec<String> {
        metrics(dir)
            .iter()
            .map(|r| format!("{:?}", (r.step, r.epoch, r.loss, r.lr, r.grad_norm, r.tokens, &r.extra)))
            .collect()
    };
    assert_eq!(strip(straight.path()), strip(resumed.path()));
}

/// `minimind reward-model` learns its training pairs (accuracy from chance to above it, loss down),
/// writes a model folder with the score head that loads and ranks chosen over rejected, and
/// `grpo --reward-model` scores rollouts with it.
#[test]
fn a_reward_model_learns_its_pairs_and_scores_rollouts() {
    use crate::common::{fixture, minimind, ok, p};
    use minimind::train::reward_model::RewardModel;
    let dir = tempfile::tempdir().unwrap();
    let (base, rm, rl) = (micro_v2_folder(dir.path()), dir.path().join("rm"), dir.path().join("rl"));
    let pairs = fixture("dpo_zh_en_16.jsonl");
    // Scored after training: the first four pairs with their sides swapped, so a model that ranks its
    // training pairs right ranks these wrong.
    let held_out = dir.path().join("swapped.jsonl");
    let swapped: String = std::fs::read_to_string(&pairs)
        .unwrap()
        .lines()
        .take(4)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"chosen": v["rejected"], "rejected": v["chosen"]}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&held_out, swapped).unwrap();
    ok(minimind(&[
        "reward-model",
        "--model",
        p(&base),
        "--data",
        p(&pairs),
        "--out",
        p(&rm),
        "--batch-size",
        "4",
        "--max-seq-len",
        "96",
        "--max-steps",
        "24",
        "--lr",
        "3e-3",
        "--eval-data",
        p(&held_out),
    ]));
    let rows = metrics(&rm);
    let late: f64 = rows[rows.len() - 4..].iter().map(|r| stat(r, "accuracy")).sum::<f64>() / 4.0;
    assert!(
        late >= 0.9,
        "training-pair accuracy {late}: {:?}",
        rows.iter().map(|r| stat(r, "accuracy")).collect::<Vec<_>>()
    );
    assert!(rows[rows.len() - 1].loss < rows[0].loss);
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("eval_pairs.json")).unwrap()).unwrap();
    assert_eq!(eval["rows"], 4);
    assert!(eval["accuracy"].as_f64().unwrap() <= 0.25, "{eval}");
    // The folder loads as a reward model and ranks a training pair's chosen side first.
    let model = RewardModel::load(&rm, &Device::Cpu).unwrap();
    let t = minimind::Tokenizer::load(&rm).unwrap();
    let pair: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&pairs).unwrap().lines().next().unwrap()).unwrap();
    let encode = |side: &str| {
        let messages: Vec<minimind::data::tokenizer::ChatMessage> = serde_json::from_value(pair[side].clone()).unwrap();
        t.encode(&t.render_chat(&messages, false).unwrap()).unwrap()
    };
    let scores = model.score(&[encode("chosen"), encode("rejected")]).unwrap();
    assert!(scores[0] > scores[1], "{scores:?}");
    assert!(RewardModel::load(&base, &Device::Cpu).is_err(), "a plain model folder has no score head");
    ok(minimind(&[
        "grpo",
        "--model",
        p(&base),
        "--data",
        p(&fixture("sft_zh_en_32.jsonl")),
        "--out",
        p(&rl),
        "--group",
        "2",
        "--max-new-tokens",
        "4",
        "--max-seq-len",
        "128",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--reward-rules",
        "0",
        "--reward-model",
        p(&rm),
    ]));
    let row = &metrics(&rl)[0];
    assert!((stat(row, "reward") - stat(row, "reward_model")).abs() < 1e-9, "{row:?}");
}
