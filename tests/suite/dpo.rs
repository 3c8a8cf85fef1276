//! DPO: the loss at the start, learning from preference pairs, the frozen reference, bad rows.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use minimind::data::dpo::DpoData;
use minimind::data::sft::SftEncoding;
use minimind::data::tokenizer::Tokenizer;
use minimind::train::dpo::{dpo_loss, sequence_log_probs, DpoStage, SeqLogProb};
use minimind::train::{train, Stage, TrainOptions};

fn data<'a>(t: &'a Tokenizer, path: &std::path::Path, max_len: usize) -> DpoData<'a> {
    DpoData::open(path, false, SftEncoding::for_tokenizer(t, max_len).unwrap(), t, 4, 1).unwrap()
}

fn models() -> (minimind::MiniMindForCausalLM, minimind::model::params::Params, minimind::MiniMindForCausalLM) {
    let config = micro_config(6400, 4, 2, 16);
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = minimind::model::checkpoint::init_model(
        &config,
        minimind::model::params::InitScheme::Minimind2,
        5,
        &Device::Cpu,
    )
    .unwrap();
    minimind::model::checkpoint::save_model(dir.path(), &model).unwrap();
    let (policy, params) = minimind::model::checkpoint::load_model(dir.path(), &Device::Cpu, DType::F32, true).unwrap();
    let (reference, _) = minimind::model::checkpoint::load_model(dir.path(), &Device::Cpu, DType::F32, false).unwrap();
    (policy, params, reference)
}

#[test]
fn identical_policy_and_reference_give_ln_2() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let (policy, _, reference) = models();
    let mut stage =
        DpoStage::new(data(&t, &fixture("dpo_zh_en_16.jsonl"), 96), reference, 0.1, SeqLogProb::Mean, Device::Cpu);
    let batch = stage.next_batch().unwrap();
    assert_eq!(batch.x.dim(0).unwrap(), 8, "4 chosen rows then 4 rejected rows");
    let loss = stage.loss(&policy, &batch, None).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-5, "{loss}");
    let metrics = stage.batch_metrics();
    assert_eq!(metrics, [("reward_margin".to_string(), 0.0), ("accuracy".to_string(), 0.0)]);
}

#[test]
fn loss_is_stable_and_matches_the_formula() {
    let policy = Tensor::new(&[-1.0f32, -300.0, -2.0, -1.0], &Device::Cpu).unwrap();
    let reference = Tensor::new(&[-1.5f32, -1.0, -1.0, -2.0], &Device::Cpu).unwrap();
    let (loss, z) = dpo_loss(&policy, &reference, 0.5).unwrap();
    let z: Vec<f32> = z.to_vec1().unwrap();
    // z = β·((π_c − π_r) − (ref_c − ref_r)): pair 0: 0.5·(1 − (−0.5)) = 0.75; pair 1: 0.5·(−299 − 1) = −150.
    assert_eq!(z, [0.75, -150.0]);
    let expect = ((1.0 + (-0.75f64).exp()).ln() + (150.0 + (1.0 + (-150f64).exp()).ln())) / 2.0;
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - expect).abs() < 1e-4);
}

#[test]
fn sum_score_is_mean_times_supervised_count() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let (policy, _, _) = models();
    let batch = data(&t, &fixture("dpo_zh_en_16.jsonl"), 96).next_batch(&Device::Cpu).unwrap();
    let mean: Vec<f32> = sequence_log_probs(&policy, &batch, SeqLogProb::Mean).unwrap().to_vec1().unwrap();
    let sum: Vec<f32> = sequence_log_probs(&policy, &batch, SeqLogProb::Sum).unwrap().to_vec1().unwrap();
    let counts: Vec<f32> = batch.mask.sum(1).unwrap().to_vec1().unwrap();
    for i in 0..mean.len() {
        assert!(counts[i] > 0.0);
        assert!((mean[i] * counts[i] - sum[i]).abs() < 1e-3 * sum[i].abs(), "row {i}");
    }
}

#[test]
fn training_raises_the_margin_and_leaves_the_reference_alone() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let (policy, params, reference) = models();
    let frozen: Vec<(String, Tensor)> =
        reference.named_tensors().into_iter().map(|(n, w)| (n, w.copy().unwrap())).collect();
    let mut stage =
        DpoStage::new(data(&t, &fixture("dpo_zh_en_16.jsonl"), 96), reference, 0.1, SeqLogProb::Mean, Device::Cpu);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions { lr: 2e-3, max_steps: Some(12), ..train_options(dir.path()) };
    train(&policy, &params, &mut stage, &opts).unwrap();
    let metrics = minimind::train::metrics::read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
    let margin = |i: usize| metrics[i].extra["reward_margin"];
    assert_eq!(margin(0), 0.0);
    let late: f64 = (8..12).map(margin).sum::<f64>() / 4.0;
    assert!(
        late > 0.05,
        "reward margin did not grow: {:?}",
        metrics.iter().map(|m| m.extra.clone()).collect::<Vec<_>>()
    );
    assert!(metrics[11].loss < std::f64::consts::LN_2);
    for ((name, before), (_, after)) in frozen.iter().zip(stage.loss.reference.named_tensors()) {
        assert_eq!(max_abs_diff(before, &after), 0.0, "reference {name} changed");
    }
}

fn pair(user: &str, chosen: &str, rejected: &str) -> String {
    let side =
        |answer: &str| serde_json::json!([{"role": "user", "content": user}, {"role": "assistant", "content": answer}]);
    serde_json::json!({"chosen": side(chosen), "rejected": side(rejected)}).to_string()
}

#[test]
fn pairs_that_cannot_train_are_found_before_step_one() {
    let t = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    // Line 2's answer lies wholly beyond 32 tokens: an error naming it when the data is opened.
    let lines = [pair("q", "a", "b"), pair(&"很长的问题。".repeat(20), "a", "b"), pair("q2", "c", "d")];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let open = |skip: bool| DpoData::open(&path, skip, SftEncoding::for_tokenizer(&t, 32).unwrap(), &t, 4, 1);
    let err = format!("{:#}", open(false).err().unwrap());
    assert!(err.contains("pairs.jsonl:2") && err.contains("chosen side has no supervised token"), "{err}");
    // With --skip-bad-lines it is skipped and counted; the other two pairs train.
    let mut data = open(true).unwrap();
    assert_eq!((data.index.len(), data.index.skipped), (2, 1));
    assert_eq!(data.next_batch(&Device::Cpu).unwrap().x.dim(0).unwrap(), 4, "2 chosen + 2 rejected rows");
    // An empty side is found the same way.
    std::fs::write(&path, "{\"chosen\": [], \"rejected\": []}\n").unwrap();
    let err = format!("{:#}", open(false).err().unwrap());
    assert!(err.contains(":1: chosen: no assistant message"), "{err}");
}
