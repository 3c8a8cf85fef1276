//! LoRA: low-rank adapters `W + (α/r)·B·A` on chosen projections of a frozen model. Only the
//! adapters train and are saved: `adapter.safetensors` with MiniMind's key names
//! (`model.layers.0.self_attn.q_proj.lora.A.weight`, `….lora.B.weight`) plus `adapter_config.json`.
//! `merge` folds them into the weights for a plain model folder.

use crate::model::checkpoint::{atomic_write, load_tensors, save_tensors};
use crate::model::params::{Init, Params, WeightBuilder};
use crate::model::{LoraAdapter, MiniMindForCausalLM};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const ADAPTER_FILE: &str = "adapter.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// Projection names adapters can target.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Projection names (`q_proj`, `o_proj`, …); MiniMind adapts the square ones, q_proj and o_proj.
    pub targets: Vec<String>,
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("--rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("--alpha must be a positive number, got {}", self.alpha);
        }
        if self.targets.is_empty() {
            bail!("--targets names no projection");
        }
        if let Some(bad) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            bail!("unknown LoRA target {bad:?}; expected some of {}", TARGETS.join(", "));
        }
        Ok(())
    }

    fn targets(&self, path: &str) -> bool {
        self.targets.iter().any(|t| path.ends_with(&format!(".{t}")))
    }
}

/// Adds adapters to the targeted projections, their tensors asked of `wb` by name (new ones:
/// A ~ N(0, 0.02), B = 0, so the adapted model starts equal to the base).
pub fn attach(model: &mut MiniMindForCausalLM, config: &LoraConfig, wb: &WeightBuilder) -> Result<()> {
    config.validate()?;
    let scale = config.alpha / config.rank as f64;
    for (path, linear) in model.linears_mut() {
        if !config.targets(&path) {
            continue;
        }
        let (out, inp) = linear.weight.dims2()?;
        let a = wb.get(&format!("{path}.lora.A.weight"), (config.rank, inp), Init::Normal(0.02))?;
        let b = wb.get(&format!("{path}.lora.B.weight"), (out, config.rank), Init::Zeros)?;
        linear.lora = Some(LoraAdapter { a, b, scale });
    }
    Ok(())
}

/// Fresh trainable adapters on `model`; returns them as the parameters to train.
pub fn attach_new(model: &mut MiniMindForCausalLM, config: &LoraConfig, seed: u64) -> Result<Params> {
    let wb = WeightBuilder::random(seed, DType::F32, model.device(), true);
    attach(model, config, &wb)?;
    wb.finish()
}

/// The adapter tensors by checkpoint name.
pub fn adapter_tensors(model: &mut MiniMindForCausalLM) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (path, linear) in model.linears_mut() {
        if let Some(l) = &linear.lora {
            out.push((format!("{path}.lora.A.weight"), l.a.clone()));
            out.push((format!("{path}.lora.B.weight"), l.b.clone()));
        }
    }
    out
}

/// Writes `adapter.safetensors` and `adapter_config.json` into `dir`.
pub fn save(dir: &Path, model: &MiniMindForCausalLM, config: &LoraConfig) -> Result<()> {
    let json = serde_json::to_string_pretty(config)?;
    atomic_write(&dir.join(ADAPTER_CONFIG), |w| Ok(w.write_all(json.as_bytes())?))?;
    let mut model = model.clone();
    save_tensors(&dir.join(ADAPTER_FILE), &adapter_tensors(&mut model))
}

pub fn load_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: LoraConfig =
        serde_json::from_str(&text).with_context(|| format!("{}: not a LoRA adapter config", path.display()))?;
    config.validate().with_context(|| format!("{}", path.display()))?;
    Ok(config)
}

/// Attaches the saved adapter of `dir` to `model` (frozen), checking every tensor is there.
pub fn load(model: &mut MiniMindForCausalLM, dir: &Path, device: &Device) -> Result<LoraConfig> {
    let config = load_config(dir)?;
    let tensors = load_tensors(&dir.join(ADAPTER_FILE), device)?;
    let wb = WeightBuilder::loaded(tensors, model.dtype(), device, false);
    attach(model, &config, &wb)?;
    wb.finish().with_context(|| format!("loading the adapter in {}", dir.display()))?;
    Ok(config)
}

/// Folds every adapter into its weight (`W ← W + (α/r)·B·A`) and removes the adapters.
pub fn merge(model: &mut MiniMindForCausalLM) -> Result<()> {
    for (_, linear) in model.linears_mut() {
        if linear.lora.is_some() {
            linear.weight = linear.effective_weight()?.detach();
            linear.lora = None;
        }
    }
    Ok(())
}

/// The model in `base` with the adapter in `adapter` (if any) folded in, in f32 on `device` — what
/// `lora merge` and `export --lora` write, and what inference runs.
pub fn load_merged(base: &Path, adapter: Option<&Path>, device: &Device) -> Result<MiniMindForCausalLM> {
    let (mut model, _) = crate::model::checkpoint::load_model(base, device, DType::F32, false)?;
    if let Some(adapter) = adapter {
        load(&mut model, adapter, device)?;
        merge(&mut model)?;
    }
    Ok(model)
}
