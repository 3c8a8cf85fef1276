//! The resume checkpoint: everything needed to continue a run exactly — parameters, AdamW moments,
//! the optimizer step (which fixes the schedule position and the dropout seeds) and the data cursor —
//! in one file, `trainer_state.safetensors`, written atomically. The step and cursor travel in the
//! safetensors header metadata. There is no other random state: data order comes from (seed, cursor).

use crate::data::DataCursor;
use crate::model::checkpoint::atomic_write;
use crate::model::params::Params;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub const STATE_FILE: &str = "trainer_state.safetensors";

/// Where a run stands after `step` optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    pub step: usize,
    pub total_steps: usize,
    pub cursor: DataCursor,
    pub seed: u64,
}

impl RunState {
    fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("step".into(), self.step.to_string()),
            ("total_steps".into(), self.total_steps.to_string()),
            ("epoch".into(), self.cursor.epoch.to_string()),
            ("row".into(), self.cursor.row.to_string()),
            ("seed".into(), self.seed.to_string()),
        ])
    }

    fn from_metadata(meta: &HashMap<String, String>, path: &Path) -> Result<Self> {
        let get = |key: &str| -> Result<u64> {
            meta.get(key)
                .with_context(|| format!("{}: no {key:?} in the header", path.display()))?
                .parse::<u64>()
                .with_context(|| format!("{}: {key:?} is not a number", path.display()))
        };
        Ok(Self {
            step: get("step")? as usize,
            total_steps: get("total_steps")? as usize,
            cursor: DataCursor { epoch: get("epoch")? as usize, row: get("row")? as usize },
            seed: get("seed")?,
        })
    }
}

/// Writes parameters (`param.<name>`), optimizer tensors (`optim.<key>`), what the stage carries
/// between steps (`stage.<key>`, see [`crate::train::Stage::carried`]) and the run state.
pub fn save(
    dir: &Path,
    state: &RunState,
    params: &Params,
    optimizer: Vec<(String, Tensor)>,
    stage: Vec<(String, Tensor)>,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> =
        params.entries.iter().map(|(n, v)| (format!("param.{n}"), v.as_tensor().clone())).collect();
    tensors.extend(optimizer.into_iter().map(|(k, t)| (format!("optim.{k}"), t)));
    tensors.extend(stage.into_iter().map(|(k, t)| (format!("stage.{k}"), t)));
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(state.to_metadata()))
        .context("serializing the trainer state")?;
    atomic_write(&dir.join(STATE_FILE), |w| Ok(w.write_all(&bytes)?))
}

/// Tensors by name.
pub type Named = HashMap<String, Tensor>;

/// Fails unless `dir` holds a run to resume.
pub fn require(dir: &Path) -> Result<()> {
    if !dir.join(STATE_FILE).exists() {
        bail!("nothing to resume in {}: it holds no {STATE_FILE} (start the run without --resume)", dir.display());
    }
    Ok(())
}

/// Reads the state back: the run state, parameter tensors by name, optimizer and stage tensors by key.
pub fn load(dir: &Path, device: &Device) -> Result<(RunState, Named, Named, Named)> {
    require(dir)?;
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let state = RunState::from_metadata(&meta, &path)?;
    let (mut params, mut optim, mut stage) = (HashMap::new(), HashMap::new(), HashMap::new());
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("reading tensors from {}", path.display()))?;
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix("param.") {
            params.insert(n.to_string(), t);
        } else if let Some(k) = name.strip_prefix("optim.") {
            optim.insert(k.to_string(), t);
        } else if let Some(k) = name.strip_prefix("stage.") {
            stage.insert(k.to_string(), t);
        }
    }
    Ok((state, params, optim, stage))
}

/// A run to continue: its state and the optimizer tensors by key.
#[derive(Debug, Clone)]
pub struct Resume {
    pub state: RunState,
    pub optimizer: HashMap<String, Tensor>,
    /// What the stage carried between steps when the checkpoint was written.
    pub stage: HashMap<String, Tensor>,
}

/// Loads the model of `dir` with the parameters of its resume checkpoint (trainable), and the
/// state to hand to the trainer.
pub fn load_run(dir: &Path, device: &Device) -> Result<(crate::MiniMindForCausalLM, Params, Resume)> {
    let config = crate::ModelConfig::load(&dir.join(crate::model::checkpoint::CONFIG_FILE))?;
    let (state, params, optimizer, stage) = load(dir, device)?;
    let wb = crate::model::params::WeightBuilder::loaded(params, candle_core::DType::F32, device, true);
    let model = crate::MiniMindForCausalLM::new(&config, &wb, crate::model::params::InitScheme::Minimind2)?;
    let params = wb.finish().with_context(|| format!("resuming from {}", dir.join(STATE_FILE).display()))?;
    Ok((model, params, Resume { state, optimizer, stage }))
}
