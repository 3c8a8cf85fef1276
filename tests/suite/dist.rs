//! Data parallelism: the sharding of global batches, the launch checks, and (with `--features mpi`)
//! `mpirun -np 2` training equal to one process on the whole batch, resumable on one process.

use crate::common::*;
use candle_core::Device;
use minimind::data::pretrain::{pretrain_data, PretrainEncoding};
use minimind::data::tokenizer::Tokenizer;

/// The rows of every batch of one epoch, as lists of first token ids (a row's identity here).
fn epoch_rows(batch: usize, shard: Option<(usize, usize)>, batches: usize) -> Vec<Vec<Vec<u32>>> {
    let tok = Tokenizer::load(&tokenizer_dir("v2")).unwrap();
    let enc = PretrainEncoding { max_seq_len: 24, wrap: true, bos: 1, eos: 2, pad: 0 };
    let mut data = pretrain_data(&fixture("pretrain_en_austen_16.jsonl"), false, enc, &tok, batch, 9).unwrap();
    if let Some((rank, world)) = shard {
        data.set_shard(rank, world);
    }
    (0..batches).map(|_| data.next_batch(&Device::Cpu).unwrap().x.to_vec2::<u32>().unwrap()).collect()
}

#[test]
fn ranks_split_each_global_batch_in_order() {
    // 16 rows: one process with batch 4 reads what two ranks with batch 2 read together.
    let whole = epoch_rows(4, None, 4);
    let (first, second) = (epoch_rows(2, Some((0, 2)), 4), epoch_rows(2, Some((1, 2)), 4));
    for ((w, a), b) in whole.iter().zip(&first).zip(&second) {
        assert_eq!(w, &[a.clone(), b.clone()].concat());
    }
}

#[test]
fn a_last_batch_smaller_than_the_world_is_padded_so_every_rank_computes() {
    // 16 rows over 5 ranks of batch 1: three full global batches, then one row for five ranks.
    let ranks: Vec<_> = (0..5).map(|r| epoch_rows(1, Some((r, 5)), 4)).collect();
    let last: Vec<&Vec<u32>> = ranks.iter().map(|r| &r[3][0]).collect();
    assert!(last.iter().all(|row| *row == last[0]), "the lone row is repeated on every rank");
    let mut seen: Vec<&Vec<u32>> = ranks.iter().flat_map(|r| r[..3].iter().map(|b| &b[0])).collect();
    seen.push(last[0]);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 16, "every row of the epoch is read once");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_multi_process_launch_without_the_backend_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixture("pretrain_zh_songci_32.jsonl");
    let tok = tokenizer_dir("v2");
    let args = ["pretrain", "--data", p(&data), "--tokenizer", p(&tok), "--out", p(dir.path()), "--preset", "tiny"];
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_minimind"));
        cmd.args(args).envs(env.iter().copied());
        fails(cmd.output().unwrap())
    };
    let err = run(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "0")]);
    assert!(err.contains("--features mpi"), "{err}");
    let err = run(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
    assert!(err.contains("--features nccl"), "{err}");
    assert!(!dir.path().join("metrics.jsonl").exists());
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;
    use std::process::Command;

    fn mpirun(ranks: usize, args: &[&str]) -> String {
        let out = Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()])
            .arg(env!("CARGO_BIN_EXE_minimind"))
            .args(args)
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("mpirun (Open MPI) must be installed for the MPI tests");
        ok(out)
    }

    fn weights(dir: &Path) -> HashMap<String, candle_core::Tensor> {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    }

    /// Equal within float noise: Adam's `m/√v` turns rounding differences of near-zero gradients
    /// into visible ones, so the bound is relative to how far training moved the weights (0.5%
    /// here), far below what a wrongly weighted rank (a mean of per-rank means) gives.
    fn assert_same_weights(a: &Path, b: &Path, start: &Path) {
        let (a, b, start) = (weights(a), weights(b), weights(start));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let (diff, moved) = (max_abs_diff(t, &b[name]), max_abs_diff(t, &start[name]));
            assert!(diff <= 1e-2 * moved, "{name}: parameters differ by {diff}, training moved them {moved}");
        }
    }

    /// SFT rows supervise different numbers of tokens, so the split across ranks only gives the
    /// one-process step when each rank's loss is weighed by the global count of supervised tokens.
    fn sft_args<'a>(base: &'a str, data: &'a str, out: &'a str, batch: &'a str) -> Vec<&'a str> {
        let mut args = vec!["sft", "--model", base, "--data", data, "--out", out, "--batch-size", batch];
        args.extend(["--max-seq-len", "96", "--lr", "2e-3", "--accumulation-steps", "2", "--max-steps", "4"]);
        args
    }

    fn base_model(dir: &Path) -> std::path::PathBuf {
        let base = dir.join("base");
        let (data, tok) = (fixture("pretrain_zh_songci_32.jsonl"), tokenizer_dir("v2"));
        let args = ["pretrain", "--data", p(&data), "--tokenizer", p(&tok), "--out", p(&base), "--preset", "tiny"];
        ok(minimind(&[&args[..], &["--max-steps", "1", "--max-seq-len", "32"]].concat()));
        base
    }

    #[test]
    fn two_ranks_with_half_batches_equal_one_rank_with_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_model(dir.path());
        let data = fixture("sft_zh_en_32.jsonl");
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        ok(minimind(&sft_args(p(&base), p(&data), p(&one), "4")));
        let log = mpirun(2, &sft_args(p(&base), p(&data), p(&two), "2"));
        assert!(log.contains("fine-tuned 4 steps"), "{log}");
        assert_same_weights(&one, &two, &base);
        // The logged loss is the global one: the same figures as one process.
        let losses = |dir: &Path| -> Vec<f64> {
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
                .collect()
        };
        let (a, b) = (losses(&one), losses(&two));
        assert_eq!(a.len(), 4);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "{a:?} vs {b:?}");
    }

    #[test]
    fn a_two_rank_checkpoint_resumes_on_one_rank() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_model(dir.path());
        let data = fixture("sft_zh_en_32.jsonl");
        let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
        ok(minimind(&sft_args(p(&base), p(&data), p(&straight), "4")));
        // Two ranks stop after their first step (the time limit is up at once), saving the run…
        let stop = [&sft_args(p(&base), p(&data), p(&resumed), "2")[..], &["--max-minutes", "0.00001"]].concat();
        mpirun(2, &stop);
        let state = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
        assert_eq!(state.lines().count(), 1, "stopped after step 1");
        // …which one process continues with the same global batch.
        ok(minimind(&[&sft_args(p(&base), p(&data), p(&resumed), "4")[..], &["--resume"]].concat()));
        assert_same_weights(&straight, &resumed, &base);
    }

    /// GRPO over two ranks, each rolling out half of every global batch of prompts with the seeds
    /// those prompts have in one process, takes the one-process steps; rows mixing prompts with and
    /// without a `gt` are refused (the ranks would log different figures).
    #[test]
    fn grpo_on_two_ranks_equals_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let base = base_model(dir.path());
        let data = dir.path().join("prompts.jsonl");
        let rows: String =
            (1..=8).map(|i| format!("{{\"prompt\": \"{i} + {i} = ?\", \"gt\": \"{}\"}}\n", 2 * i)).collect();
        std::fs::write(&data, rows).unwrap();
        let grpo = |out: &Path, batch: &'static str| -> Vec<String> {
            let args = ["grpo", "--model", p(&base), "--data", p(&data), "--out", p(out), "--batch-size", batch];
            let flags =
                ["--group", "3", "--max-new-tokens", "8", "--max-seq-len", "32", "--max-steps", "2", "--lr", "1e-3"];
            [&args[..], &flags[..], &["--temperature", "1.0"]].concat().into_iter().map(String::from).collect()
        };
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        let args = |v: &Vec<String>| v.iter().map(String::as_str).collect::<Vec<_>>().join("\u{1}");
        let (a, b) = (grpo(&one, "4"), grpo(&two, "2"));
        mpirun(1, &args(&a).split('\u{1}').collect::<Vec<_>>());
        let log = mpirun(2, &args(&b).split('\u{1}').collect::<Vec<_>>());
        assert!(log.contains("RL-tuned 2 steps"), "{log}");
        assert_same_weights(&one, &two, &base);
        let mixed = dir.path().join("mixed.jsonl");
        std::fs::write(&mixed, "{\"prompt\": \"1 + 1\", \"gt\": \"2\"}\n{\"prompt\": \"hi\"}\n").unwrap();
        let refused = Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
            .arg(env!("CARGO_BIN_EXE_minimind"))
            .args([
                "grpo",
                "--model",
                p(&base),
                "--data",
                p(&mixed),
                "--out",
                p(&dir.path().join("m")),
                "--max-steps",
                "1",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&refused.stderr).to_string() + &String::from_utf8_lossy(&refused.stdout);
        assert!(!refused.status.success() && text.contains("every row"), "{text}");
    }
}
