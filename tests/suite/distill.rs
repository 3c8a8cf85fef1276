//! Distillation: the KL term vanishes for identical models, α = 1 is plain SFT loss, prompts parse.

use crate::common::*;
use candle_core::{Device, Tensor};
use minimind::ops;
use minimind::train::distill::{distill_loss, parse_prompt};

fn inputs() -> (Tensor, Tensor, Tensor) {
    let logits = (Tensor::randn(0f32, 1., (9, 31), &Device::Cpu).unwrap() * 3.0).unwrap();
    let targets = random_ids(1, 9, 31, 2).flatten_all().unwrap();
    let mask = Tensor::new(&[1f32, 1., 0., 1., 1., 0., 1., 1., 1.], &Device::Cpu).unwrap();
    (logits, targets, mask)
}

#[test]
fn kl_is_zero_when_student_equals_teacher() {
    let (logits, targets, mask) = inputs();
    for temperature in [1.0, 2.0] {
        let (_, _, kd) = distill_loss(&logits, &logits, &targets, &mask, 0.0, temperature).unwrap();
        assert!(kd.to_scalar::<f32>().unwrap().abs() < 1e-6);
    }
    // A teacher with a larger vocabulary is cut to the student's.
    let extra =
        Tensor::cat(&[&logits, &Tensor::zeros((9, 5), candle_core::DType::F32, &Device::Cpu).unwrap()], 1).unwrap();
    let (_, _, kd) = distill_loss(&logits, &extra, &targets, &mask, 0.0, 1.0).unwrap();
    assert!(kd.to_scalar::<f32>().unwrap().abs() < 1e-6);
    assert!(
        distill_loss(&extra, &logits, &targets, &mask, 0.0, 1.0).is_err(),
        "a smaller teacher vocabulary is an error"
    );
}

#[test]
fn alpha_one_is_the_sft_loss_and_kl_is_positive_otherwise() {
    let (student, targets, mask) = inputs();
    let teacher = (Tensor::randn(0f32, 1., (9, 31), &Device::Cpu).unwrap() * 3.0).unwrap();
    let (total, ce, kd) = distill_loss(&student, &teacher, &targets, &mask, 1.0, 1.0).unwrap();
    let sft = ops::cross_entropy(&student, &targets, &mask).unwrap();
    assert!(max_abs_diff(&total, &sft) < 1e-6 && max_abs_diff(&ce, &sft) < 1e-6);
    assert!(kd.to_scalar::<f32>().unwrap() > 0.0);
    let (half, _, _) = distill_loss(&student, &teacher, &targets, &mask, 0.5, 1.0).unwrap();
    let expect = (ce.to_scalar::<f32>().unwrap() + kd.to_scalar::<f32>().unwrap()) / 2.0;
    assert!((half.to_scalar::<f32>().unwrap() - expect).abs() < 1e-5);
}

#[test]
fn prompts_are_plain_or_conversations_cut_after_the_last_user_turn() {
    assert_eq!(parse_prompt(r#"{"prompt": "hi"}"#).unwrap()[0].content, "hi");
    let row = r#"{"conversations": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "old"}]}"#;
    let messages = parse_prompt(row).unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[2].content, "q2");
    assert!(parse_prompt(r#"{"conversations": [{"role": "assistant", "content": "a"}]}"#)
        .unwrap_err()
        .contains("no user message"));
}
