//! Continuous batching: sequences that join a running batch at different times, with prompts and
//! answers of different lengths, decode exactly what each decodes alone; slots are bounded, freed
//! when a sequence finishes or is cancelled, and reused. (A binary of its own: it flips the
//! process-wide kernel switch.)
mod common;

use common::*;
use minimind::infer::batch::{Batcher, Decoded, SeqId, SeqOptions};
use minimind::infer::{generate, generate_batch, FinishReason, Sampler, SamplingParams};
use minimind::model::checkpoint::init_model;
use minimind::model::params::InitScheme;
use minimind::MiniMindForCausalLM;
use std::collections::HashMap;

fn greedy() -> Sampler {
    Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() }).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 13, 2, 40, 41, 7], vec![11], vec![3, 4, 5, 6], vec![70, 1, 1, 2, 9], vec![8, 8], vec![60, 61, 62]]
}

/// Runs `prompts` through a batcher of `slots`, sequence i joining before step `joins[i]`;
/// returns each one's tokens and finish reason.
fn staggered(
    model: &MiniMindForCausalLM,
    prompts: &[Vec<u32>],
    joins: &[usize],
    max_new: &[usize],
    stop: &[u32],
) -> Vec<(Vec<u32>, FinishReason)> {
    let mut batch = Batcher::new(model, prompts.len(), 40, stop).unwrap();
    let mut out = vec![(Vec::new(), FinishReason::Length); prompts.len()];
    let mut row_of: HashMap<SeqId, usize> = HashMap::new();
    let record = |row: usize, events: Vec<Decoded>, out: &mut Vec<(Vec<u32>, FinishReason)>| {
        for e in events {
            match e {
                Decoded::Token(t) => out[row].0.push(t),
                Decoded::Finished(r) => out[row].1 = r,
                Decoded::Stopped(t) => assert!(stop.contains(&t), "a stop token"),
                Decoded::Logprobs(_) => unreachable!("not asked for"),
            }
        }
    };
    let mut step = 0;
    loop {
        for (i, p) in prompts.iter().enumerate().filter(|(i, _)| joins[*i] == step) {
            let (id, events) = batch.join(p, max_new[i], greedy()).unwrap().expect("a free slot");
            row_of.insert(id, i);
            record(i, events, &mut out);
        }
        if batch.active() == 0 && joins.iter().all(|&j| j <= step) {
            break;
        }
        for (id, events) in batch.step().unwrap() {
            record(row_of[&id], events, &mut out);
        }
        step += 1;
    }
    out
}

fn check_against_one_at_a_time(model: &MiniMindForCausalLM) {
    let prompts = prompts();
    let (joins, max_new) = ([0, 0, 2, 3, 3, 7], [9, 12, 5, 9, 1, 6]);
    let together = staggered(model, &prompts, &joins, &max_new, &[]);
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(model, p, max_new[i], &[], &mut greedy(), |_| Ok(true)).unwrap();
        assert_eq!(together[i].0, alone.tokens, "sequence {i}");
        assert_eq!(together[i].1, alone.finish_reason, "sequence {i}");
    }
    // A sequence that meets a stop token leaves; the others go on.
    let stop = together[1].0[2];
    let stopped = staggered(model, &prompts, &joins, &max_new, &[stop]);
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(model, p, max_new[i], &[stop], &mut greedy(), |_| Ok(true)).unwrap();
        assert_eq!(stopped[i].0, alone.tokens, "sequence {i} with a stop token");
        assert_eq!(stopped[i].1, alone.finish_reason);
    }
    assert_eq!(stopped[1].1, FinishReason::Stop);
}

#[test]
fn staggered_batched_decoding_equals_one_at_a_time_exactly() {
    // Bit-identical on both the fused kernels and the composed reference.
    let (model, _) = micro_model(12);
    check_against_one_at_a_time(&model);
    // minimind-3's q/k norm and a MoE FFN.
    let config = micro_preset("minimind3-moe");
    let (moe, _) = init_model(&config, InitScheme::Normal, 3, &candle_core::Device::Cpu).unwrap();
    check_against_one_at_a_time(&moe);
    // Its q/k norm over an int8 KV cache (the fused decode step normalizes before it stores).
    let mut moe_int8_kv = moe.clone();
    moe_int8_kv.set_kv_int8(true).unwrap();
    check_against_one_at_a_time(&moe_int8_kv);
    // Panel-packed weights (what inference loads): one kernel for prompts and batches of any size.
    for plain in [&model, &moe] {
        let mut packed = plain.clone();
        packed.pack_panels().unwrap();
        assert!(minimind::ops::panel::is_packed(&packed.model.layers[0].self_attn.q_proj.weight));
        check_against_one_at_a_time(&packed);
    }
    // Int8 weights: the batch stays on the int8 kernel, row by row.
    let mut int8 = model.clone();
    int8.quantize_int8().unwrap();
    check_against_one_at_a_time(&int8);
    // f16 KV caches (pool and single sequence alike), on panels and int8 weights.
    let mut f16_kv = model.clone();
    f16_kv.pack_panels().unwrap();
    for m in [&mut f16_kv, &mut int8] {
        m.set_kv_f16(true).unwrap();
        check_against_one_at_a_time(m);
    }
    // Int8 KV caches (codes and a scale per row; integer scores), on panels and int8 weights.
    let (mut int8_kv, mut both) = (f16_kv.clone(), int8.clone());
    for m in [&mut int8_kv, &mut both] {
        m.set_kv_int8(true).unwrap();
        check_against_one_at_a_time(m);
    }
    // Int8 weights with 128-input groups (hidden 128, FFN 384): where the CPU has AMX, prompts and
    // batches of 8 or more rows take the matrix unit and single rows the vector tiles — the same bits.
    let (mut wide, _) = init(&micro_config(97, 4, 2, 32), 5);
    wide.quantize_int8().unwrap();
    let q = &wide.model.layers[0].self_attn.q_proj.weight;
    assert_eq!(q.dims()[2], minimind::ops::panel_int8::block_bytes(128));
    let long: Vec<Vec<u32>> = (0..10u32).map(|i| (0..9 + i).map(|j| (i * 7 + j * 3 + 1) % 97).collect()).collect();
    let together = staggered(&wide, &long, &[0; 10], &[8; 10], &[]);
    for (i, p) in long.iter().enumerate() {
        let alone = generate(&wide, p, 8, &[], &mut greedy(), |_| Ok(true)).unwrap();
        assert_eq!(together[i].0, alone.tokens, "int8 with 128-input groups, sequence {i}");
    }
    // 64-wide heads over an int8 KV cache: the scores take AVX-512 VNNI where the CPU has it.
    let (mut heads64, _) = init(&micro_config(97, 4, 2, 64), 6);
    heads64.quantize_int8().unwrap();
    heads64.set_kv_int8(true).unwrap();
    let together = staggered(&heads64, &long, &[0; 10], &[8; 10], &[]);
    for (i, p) in long.iter().enumerate() {
        let alone = generate(&heads64, p, 8, &[], &mut greedy(), |_| Ok(true)).unwrap();
        assert_eq!(together[i].0, alone.tokens, "int8 KV cache, 64-wide heads, sequence {i}");
    }
    minimind::ops::set_fused(false);
    check_against_one_at_a_time(&model);
    check_against_one_at_a_time(&f16_kv);
    check_against_one_at_a_time(&int8_kv);
    minimind::ops::set_fused(true);
    // The library's batch call is the same machinery.
    let prompts = prompts();
    let samplers = prompts.iter().map(|_| greedy()).collect();
    let all = generate_batch(&model, &prompts, 7, &[], samplers, 4).unwrap();
    for (p, g) in prompts.iter().zip(&all) {
        assert_eq!(g.tokens, generate(&model, p, 7, &[], &mut greedy(), |_| Ok(true)).unwrap().tokens);
    }
}

#[test]
fn slots_are_bounded_freed_and_reused() {
    let (model, _) = micro_model(4);
    let mut batch = Batcher::new(&model, 2, 16, &[]).unwrap();
    let (a, _) = batch.join(&[1, 2, 3], 50, greedy()).unwrap().unwrap();
    let (b, _) = batch.join(&[4, 5], 50, greedy()).unwrap().unwrap();
    assert!(batch.join(&[6], 5, greedy()).unwrap().is_none(), "two slots, both taken");
    batch.cancel(a);
    assert_eq!(batch.active(), 1);
    // The freed slot is reused, and a sequence in a reused slot decodes as in a fresh one.
    let (c, first) = batch.join(&[6, 7], 3, greedy()).unwrap().unwrap();
    let mut events: HashMap<SeqId, Vec<Decoded>> = HashMap::from([(c, first)]);
    while batch.active() > 0 {
        for (id, e) in batch.step().unwrap() {
            events.entry(id).or_default().extend(e);
        }
    }
    let tokens: Vec<u32> =
        events[&c].iter().filter_map(|e| if let Decoded::Token(t) = e { Some(*t) } else { None }).collect();
    let alone = generate(&model, &[6, 7], 3, &[], &mut greedy(), |_| Ok(true)).unwrap();
    assert_eq!(tokens, alone.tokens);
    // A slot's capacity bounds prompt + answer: a sequence that fills it ends with `length`.
    assert_eq!(events[&b].last(), Some(&Decoded::Finished(FinishReason::Length)));
    // Its first token came from the prefill (2 positions); each step caches one more: 14 steps fill
    // the 16 positions, then it finishes.
    assert_eq!(events[&b].len(), 14 + 1);
    assert!(!events.contains_key(&a), "a cancelled sequence decodes no more");
    assert!(batch.join(&[1; 16], 1, greedy()).is_err(), "a prompt longer than a slot is refused");
}

#[test]
fn logprobs_come_before_each_token_on_request() {
    let (model, _) = micro_model(9);
    let mut batch = Batcher::new(&model, 2, 32, &[]).unwrap();
    let (_, mut events) =
        batch.join_with(&[3, 4, 5], 4, greedy(), SeqOptions { logprobs: Some(3), constraint: None }).unwrap().unwrap();
    batch.join(&[7, 8], 4, greedy()).unwrap().unwrap(); // a neighbour that did not ask
    while batch.active() > 0 {
        for (id, e) in batch.step().unwrap() {
            if id == 0 {
                events.extend(e);
            }
        }
    }
    let tokens: Vec<u32> =
        events.iter().filter_map(|e| if let Decoded::Token(t) = e { Some(*t) } else { None }).collect();
    assert_eq!(tokens, generate(&model, &[3, 4, 5], 4, &[], &mut greedy(), |_| Ok(true)).unwrap().tokens);
    let mut pending = None;
    for e in &events {
        match e {
            Decoded::Logprobs(lp) => {
                assert_eq!(lp.top.len(), 3);
                assert_eq!((lp.top[0].0, lp.top[0].1), (lp.token, lp.logprob), "greedy takes the most likely token");
                assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1) && lp.logprob <= 0.0);
                pending = Some(lp.token);
            }
            Decoded::Token(t) => assert_eq!(pending.take(), Some(*t), "a Logprobs event before each token"),
            Decoded::Finished(_) | Decoded::Stopped(_) => {}
        }
    }
}
