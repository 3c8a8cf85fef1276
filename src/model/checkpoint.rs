//! Model folders and crash-safe file writes.
//!
//! A model folder is what HF tools expect: `config.json` + `model.safetensors` + the tokenizer files
//! (`tokenizer.json`, `tokenizer_config.json`). Every file is written to a temporary name in the same
//! directory, flushed to disk and renamed over the target, so a crash mid-write leaves the previous
//! version intact and never a truncated file.

use crate::model::config::ModelConfig;
use crate::model::params::{InitScheme, Params, WeightBuilder};
use crate::model::MiniMindForCausalLM;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILES: &[&str] = &["tokenizer.json", "tokenizer_config.json"];

/// Writes `path` atomically: `write` fills a temporary sibling file, which is synced and renamed
/// over `path` only if `write` succeeds. On error the temporary file is removed.
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("atomic_write needs a file name")?.to_string_lossy();
    let tmp = dir.join(temp_name(&name, std::process::id()));
    let result = (|| -> Result<()> {
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The temporary file `atomic_write` writes `name` through: `.NAME.tmp.PID`.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp.{pid}")
}

/// The process that wrote a temporary file named by [`temp_name`], if `file_name` is one.
fn temp_owner(file_name: &str) -> Option<u32> {
    file_name.strip_prefix('.')?.rsplit_once(".tmp.")?.1.parse().ok()
}

/// Removes the temporary files `atomic_write` leaves behind when its process is killed mid-write
/// (those of a process that no longer runs). Returns how many were removed.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(pid) = temp_owner(&entry.file_name().to_string_lossy()) else { continue };
        let running = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !running {
            fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Serializes named tensors to safetensors bytes and writes them atomically.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .with_context(|| format!("serializing tensors for {}", path.display()))?;
    atomic_write(path, |w| Ok(w.write_all(&bytes)?))
}

/// The tensors of a safetensors file, each checked to hold only finite values: a NaN or ±∞ weight
/// would only surface later as NaN logits or losses.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(path, device)
        .with_context(|| format!("reading tensors from {}", path.display()))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if !all_finite(&tensors[name])? {
            bail!("{}: tensor {name} holds NaN or infinite values; the file is corrupt", path.display());
        }
    }
    Ok(tensors)
}

/// Whether every value of `t` is finite (`0·x` is 0 for finite x, NaN for NaN and ±∞).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    let zeros = (t.to_dtype(DType::F32)? * 0.0)?;
    Ok(zeros.sum_all()?.to_scalar::<f32>()? == 0.0)
}

/// Saves `config.json` and `model.safetensors` into `dir` (created if needed).
pub fn save_model(dir: &Path, model: &MiniMindForCausalLM) -> Result<()> {
    save_model_with(dir, model, Vec::new())
}

/// [`save_model`] with `extra` tensors beside the model's (a reward model's head).
pub fn save_model_with(dir: &Path, model: &MiniMindForCausalLM, extra: Vec<(String, Tensor)>) -> Result<()> {
    let json = model.config.to_json()?;
    atomic_write(&dir.join(CONFIG_FILE), |w| Ok(w.write_all(json.as_bytes())?))?;
    let mut tensors = model.named_tensors();
    tensors.extend(extra);
    save_tensors(&dir.join(WEIGHTS_FILE), &tensors)
}

/// Copies the tokenizer files of `from` into `to` (skipping files that are absent or already there).
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    if from == to {
        return Ok(());
    }
    for name in TOKENIZER_FILES {
        let src = from.join(name);
        if src.exists() {
            let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            atomic_write(&to.join(name), |w| Ok(w.write_all(&bytes)?))?;
        }
    }
    Ok(())
}

/// Whether two tensors have the same shape and values (compared in f32; the count of differing
/// values is summed in f32, as a byte count would wrap).
pub fn same_values(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.shape() != b.shape() {
        return Ok(false);
    }
    let differing = a.to_dtype(DType::F32)?.ne(&b.to_dtype(DType::F32)?)?.to_dtype(DType::F32)?;
    Ok(differing.sum_all()?.to_scalar::<f32>()? == 0.0)
}

/// A tied model stores its one embedding/head tensor once. Checkpoints written by other tools may
/// hold it as `lm_head.weight`, or under both names; accept both, checking the copies agree.
fn normalize_tied(tensors: &mut HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let Some(head) = tensors.remove("lm_head.weight") else { return Ok(()) };
    match tensors.get("model.embed_tokens.weight") {
        None => {
            tensors.insert("model.embed_tokens.weight".into(), head);
        }
        Some(embed) => {
            let same = same_values(embed, &head)?;
            if !same {
                bail!(
                    "{}: config says tie_word_embeddings but lm_head.weight differs from model.embed_tokens.weight",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// The config of the model folder `dir` and its weights, ready to build the model from.
pub fn model_weights(
    dir: &Path,
    device: &Device,
    dtype: DType,
    trainable: bool,
) -> Result<(ModelConfig, WeightBuilder)> {
    let (config, tensors) = model_tensors(dir, device)?;
    Ok((config, WeightBuilder::loaded(tensors, dtype, device, trainable)))
}

/// The config of the model folder `dir` and its tensors by name (tied embeddings under one name).
pub fn model_tensors(dir: &Path, device: &Device) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let config = ModelConfig::load(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let mut tensors = load_tensors(&weights_path, device)?;
    if config.tie_word_embeddings {
        normalize_tied(&mut tensors, &weights_path)?;
    }
    Ok((config, tensors))
}

/// Loads the model in `dir` in `dtype`; `trainable` returns its parameters as `Var`s.
pub fn load_model(dir: &Path, device: &Device, dtype: DType, trainable: bool) -> Result<(MiniMindForCausalLM, Params)> {
    let (config, wb) = model_weights(dir, device, dtype, trainable)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let model = MiniMindForCausalLM::new(&config, &wb, InitScheme::Minimind2)?;
    let params = wb.finish().with_context(|| format!("loading {}", weights_path.display()))?;
    Ok((model, params))
}

/// A new randomly initialized model, trainable.
pub fn init_model(
    config: &ModelConfig,
    scheme: InitScheme,
    seed: u64,
    device: &Device,
) -> Result<(MiniMindForCausalLM, Params)> {
    let wb = WeightBuilder::random(seed, DType::F32, device, true);
    let model = MiniMindForCausalLM::new(config, &wb, scheme)?;
    Ok((model, wb.finish()?))
}
