//! Batched generation: prompts of different lengths decoded together give what one-at-a-time
//! decoding gives. (One test in this binary: it flips the process-wide kernel switch.)
mod common;

use candle_core::{Device, Tensor};
use common::*;
use minimind::infer::{generate, generate_batch, Sampler, SamplingParams};
use minimind::model::KvCache;
use minimind::ops;

fn greedy() -> Sampler {
    Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap()
}

#[test]
fn batched_decoding_equals_one_at_a_time() {
    let (model, _) = micro_model(12);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13, 2, 40, 41, 7], vec![11], vec![3, 4, 5, 6], vec![70, 1, 1, 2, 9]];
    // Padded prefill logits match each prompt's own forward (default kernels), within float noise.
    let longest = 7;
    let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let ids: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(p[0], longest - p.len()).chain(p.iter().copied())).collect();
    let ids = Tensor::from_vec(ids, (4, longest), &Device::Cpu).unwrap();
    let mut cache = KvCache::new(&model.config, 4, 16, candle_core::DType::F32, &Device::Cpu).unwrap();
    let batched = model.forward_last_padded(&ids, Some(&mut cache), &padding).unwrap();
    for (b, p) in prompts.iter().enumerate() {
        let single =
            model.forward_last(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None).unwrap();
        let d = max_abs_diff(&batched.narrow(0, b, 1).unwrap(), &single);
        assert!(d < 1e-4, "row {b}: prefill logits differ by {d}");
    }
    // Greedy tokens, compared on the composed reference so both paths do identical arithmetic.
    ops::set_fused(false);
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| greedy()).collect();
    let together = generate_batch(&model, &prompts, 9, &[], &mut samplers).unwrap();
    for (b, p) in prompts.iter().enumerate() {
        let alone = generate(&model, p, 9, &[], &mut greedy(), |_| Ok(true)).unwrap();
        assert_eq!(together[b].tokens, alone.tokens, "row {b}");
    }
    // A row that hits a stop token ends alone; the others go on.
    let stop = together[1].tokens[2];
    let mut samplers: Vec<Sampler> = prompts.iter().map(|_| greedy()).collect();
    let stopped = generate_batch(&model, &prompts, 9, &[stop], &mut samplers).unwrap();
    assert_eq!(stopped[1].tokens, together[1].tokens[..2]);
    assert_eq!(stopped[1].finish_reason, minimind::infer::FinishReason::Stop);
    ops::set_fused(true);
}
