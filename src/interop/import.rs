//! Import of existing checkpoints into a model folder of ours:
//! - MiniMind2 `.pth` files (`full_sft_512.pth`, …; fp16, HF-style names, the tied embedding stored
//!   twice),
//! - MiniMind2-classic `.pth` files (fp32, `tok_embeddings` / `layers.i.attention.wq` names,
//!   interleaved-pair RoPE) — renamed, and the `wq`/`wk` rows permuted so our rotate-half RoPE gives
//!   the same attention scores,
//! - MiniMind2-MoE `.pth` files (classic `feed_forward.experts.e.w1` / `feed_forward.gate` /
//!   `feed_forward.shared_experts` names, or HF-style `mlp.experts.e.gate_proj` / `mlp.shared_experts.0`),
//! - minimind-3 `.pth` files, dense and MoE (`self_attn.q_norm` / `k_norm`, no shared expert),
//! - HF folders (MiniMind's own `model_type: minimind` of any generation, classic or renamed, and Llama
//!   exports; safetensors or `pytorch_model.bin`),
//! - MiniMind LoRA `.pth` files (`….lora.A.weight` / `….lora.B.weight`), as an adapter folder.
//!
//! Every import is validated by name and shape: a missing, extra or mis-shaped tensor is an error
//! listing all of them, never a silent partial load.

use crate::model::checkpoint::{self, atomic_write, copy_tokenizer_files};
use crate::model::lora::{self, LoraConfig};
use crate::model::params::{InitScheme, WeightBuilder};
use crate::{MiniMindForCausalLM, ModelConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What `import` may be told besides the source.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// A tokenizer folder, or a bundled MiniMind tokenizer by name (`minimind2`, `minimind2-classic`).
    pub tokenizer: Option<PathBuf>,
    /// A config.json (ours, MiniMind's or HF Llama's) instead of inferring the shape from the tensors.
    pub config: Option<PathBuf>,
    /// Query heads when inferring the shape (the tensors do not tell); MiniMind's default is 8.
    pub heads: Option<usize>,
    /// The base model folder a LoRA checkpoint adapts.
    pub base: Option<PathBuf>,
}

/// What an import wrote.
pub enum Imported {
    Model { model: Box<MiniMindForCausalLM>, classic: bool, tokenizer: String },
    Adapter { config: LoraConfig, classic: bool },
}

/// Imports `src` (a folder or a single weights file) into `out`.
pub fn import(src: &Path, out: &Path, opts: &ImportOptions) -> Result<Imported> {
    let raw = read_source(src)?;
    let classic = raw.keys().any(|k| is_classic_name(k));
    let tensors: HashMap<String, Tensor> =
        raw.into_iter().map(|(k, v)| (if classic { classic_to_hf(&k) } else { k }, v)).collect();
    if !tensors.is_empty() && tensors.keys().all(|k| k.contains(".lora.")) {
        let base = opts.base.as_deref().with_context(|| {
            format!("{} holds LoRA adapter tensors only: give the base model folder with --base", src.display())
        })?;
        let config =
            import_lora(tensors, classic, base, out).with_context(|| format!("importing {}", src.display()))?;
        return Ok(Imported::Adapter { config, classic });
    }
    let config = source_config(src, opts, &tensors)?;
    let model = build_model(config, tensors, classic).with_context(|| {
        let hint = if classic { " (classic names shown in their HF form)" } else { "" };
        format!("importing {}{hint}", src.display())
    })?;
    checkpoint::save_model(out, &model)?;
    let tokenizer = write_tokenizer(src, out, opts.tokenizer.as_deref(), classic, model.config.qk_norm)?;
    Ok(Imported::Model { model: Box::new(model), classic, tokenizer })
}

// ---- reading ---------------------------------------------------------------------------------

/// The tensors of a folder (`*.safetensors` or `pytorch_model.bin`) or of one file (`.safetensors`,
/// or a PyTorch zip-pickle `.pth`/`.bin`/`.pt`), with DDP's `module.` prefix and the persisted
/// RoPE/mask buffers of old checkpoints removed (they are recomputed, not weights).
pub fn read_source(src: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = if src.is_dir() { read_folder(src)? } else { read_file(src)? };
    Ok(tensors
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("module.").map(str::to_string).unwrap_or(k), v))
        .filter(|(k, _)| !is_buffer(k))
        .collect())
}

fn read_folder(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries.iter().filter(|p| is_safetensors(p)) {
        tensors.extend(checkpoint::load_tensors(path, &Device::Cpu)?);
    }
    let bin = dir.join("pytorch_model.bin");
    if tensors.is_empty() && bin.exists() {
        tensors = read_pickle(&bin)?;
    }
    if tensors.is_empty() {
        bail!("{}: no model.safetensors or pytorch_model.bin", dir.display());
    }
    Ok(tensors)
}

fn is_safetensors(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "safetensors")
        && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn read_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if is_safetensors(path) {
        return checkpoint::load_tensors(path, &Device::Cpu);
    }
    read_pickle(path)
}

/// A `torch.save` zip archive: a state dict, or a dict holding one under `model` (resume files).
fn read_pickle(path: &Path) -> Result<HashMap<String, Tensor>> {
    let context =
        || format!("{}: not a PyTorch checkpoint (torch.save zip archive) this reader understands", path.display());
    let mut list = candle_core::pickle::read_all(path).with_context(context)?;
    if list.is_empty() {
        list = candle_core::pickle::read_all_with_key(path, Some("model")).unwrap_or_default();
    }
    if list.is_empty() {
        bail!("{}: no tensors found (expected a state dict of tensors)", path.display());
    }
    Ok(list.into_iter().collect())
}

/// Non-persistent buffers that some checkpoints carry anyway (V1 `mask`, `pos_cis`, HF `inv_freq`).
fn is_buffer(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    matches!(last, "mask" | "pos_cis" | "freqs_cos" | "freqs_sin" | "inv_freq")
}

// ---- MiniMind2-classic names and RoPE ------------------------------------------------------------

fn is_classic_name(name: &str) -> bool {
    name.starts_with("tok_embeddings.") || name.starts_with("layers.") || name.starts_with("output.")
}

/// A classic FFN projection's HF name (`w1` gate, `w2` down, `w3` up).
fn classic_ffn(w: &str) -> Option<&'static str> {
    match w {
        "w1" => Some("gate_proj"),
        "w2" => Some("down_proj"),
        "w3" => Some("up_proj"),
        _ => None,
    }
}

/// MiniMind2-classic (Meta-Llama style) names → our HF names; other names pass unchanged.
pub fn classic_to_hf(name: &str) -> String {
    classic_renamed(name).unwrap_or_else(|| name.to_string())
}

fn classic_renamed(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let renamed = match parts.as_slice() {
        ["tok_embeddings", rest @ ..] => Some(("model.embed_tokens".to_string(), rest)),
        ["norm", rest @ ..] => Some(("model.norm".to_string(), rest)),
        ["output", rest @ ..] => Some(("lm_head".to_string(), rest)),
        ["layers", i, "attention", w, rest @ ..] => {
            let proj = match *w {
                "wq" => "q_proj",
                "wk" => "k_proj",
                "wv" => "v_proj",
                "wo" => "o_proj",
                _ => return None,
            };
            Some((format!("model.layers.{i}.self_attn.{proj}"), rest))
        }
        ["layers", i, "attention_norm", rest @ ..] => Some((format!("model.layers.{i}.input_layernorm"), rest)),
        ["layers", i, "ffn_norm", rest @ ..] => Some((format!("model.layers.{i}.post_attention_layernorm"), rest)),
        ["layers", i, "feed_forward", "gate", rest @ ..] => Some((format!("model.layers.{i}.mlp.gate"), rest)),
        ["layers", i, "feed_forward", "experts", e, w, rest @ ..] => {
            Some((format!("model.layers.{i}.mlp.experts.{e}.{}", classic_ffn(w)?), rest))
        }
        // MiniMind2-classic's MoE has one shared expert, unnumbered.
        ["layers", i, "feed_forward", "shared_experts", w, rest @ ..] => {
            Some((format!("model.layers.{i}.mlp.shared_experts.0.{}", classic_ffn(w)?), rest))
        }
        ["layers", i, "feed_forward", w, rest @ ..] => {
            Some((format!("model.layers.{i}.mlp.{}", classic_ffn(w)?), rest))
        }
        _ => None,
    };
    match renamed? {
        (head, []) => Some(head),
        (head, rest) => Some(format!("{head}.{}", rest.join("."))),
    }
}

/// Classic RoPE rotates adjacent pairs `(x[2j], x[2j+1])`; ours rotates `(x[j], x[j+D/2])`. Reordering
/// each head's output rows as `new[j] = old[2j]`, `new[D/2+j] = old[2j+1]` makes the two agree exactly
/// (spec §2.3): view the rows as (heads, D/2, 2) and swap the last two axes.
pub fn permute_classic_rope_rows(w: &Tensor, head_dim: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows % head_dim != 0 || !head_dim.is_multiple_of(2) {
        bail!("cannot split {rows} rows into heads of {head_dim}");
    }
    Ok(w.reshape((rows / head_dim, head_dim / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

fn permute_classic_qk(tensors: &mut HashMap<String, Tensor>, head_dim: usize, suffix: &str) -> Result<()> {
    for (name, w) in tensors.iter_mut() {
        let qk = name.contains(".self_attn.q_proj.") || name.contains(".self_attn.k_proj.");
        if qk && name.ends_with(suffix) {
            *w = permute_classic_rope_rows(w, head_dim).with_context(|| name.clone())?;
        }
    }
    Ok(())
}

// ---- shape -------------------------------------------------------------------------------------

/// The model config: `--config`, else the source folder's config.json, else inferred from tensors.
fn source_config(src: &Path, opts: &ImportOptions, tensors: &HashMap<String, Tensor>) -> Result<ModelConfig> {
    let folder_config = src.is_dir().then(|| src.join("config.json")).filter(|p| p.exists());
    match opts.config.clone().or(folder_config) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let value: Value =
                serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
            let config = config_from_json(&value, &path)?;
            Ok(with_architecture_of(config, tensors)?)
        }
        None => infer_config(tensors, opts.heads.unwrap_or(8)).with_context(|| format!("{}", src.display())),
    }
}

/// What a config.json may leave implicit, read off the tensors: q/k norm (minimind-3 configs carry no
/// flag for it), the experts and the shared experts.
fn with_architecture_of(mut c: ModelConfig, t: &HashMap<String, Tensor>) -> Result<ModelConfig> {
    c.qk_norm = t.contains_key("model.layers.0.self_attn.q_norm.weight");
    let experts = count_indices(t, "model.layers.0.mlp.experts.");
    c.use_moe = experts > 0;
    if c.use_moe {
        c.n_routed_experts = experts;
        c.n_shared_experts = count_indices(t, "model.layers.0.mlp.shared_experts.");
    }
    c.resolved()
}

/// How many numbered modules (`{prefix}0.`, `{prefix}1.`, …) the tensors hold.
fn count_indices(t: &HashMap<String, Tensor>, prefix: &str) -> usize {
    t.keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Our config from a config.json: ours / MiniMind2's (`model_type: minimind`), MiniMind2-classic's
/// `LMConfig` (`dim`, `n_layers`, …), or HF Llama's.
pub fn config_from_json(v: &Value, path: &Path) -> Result<ModelConfig> {
    let kind = v.get("model_type").and_then(Value::as_str).unwrap_or("minimind");
    let parse = |what: &str| -> Result<ModelConfig> {
        serde_json::from_value(v.clone()).with_context(|| format!("{}: not a {what} config", path.display()))
    };
    let config = match kind {
        "minimind" if v.get("dim").is_some() || v.get("n_layers").is_some() => classic_config(v),
        "minimind" => parse("MiniMind")?,
        "llama" => {
            let mut c = parse("Llama")?;
            c.model_type = "minimind".into();
            c.architectures = vec!["MiniMindForCausalLM".into()];
            if let Some(d) = v.get("head_dim").and_then(Value::as_u64) {
                if d as usize * c.num_attention_heads != c.hidden_size {
                    bail!("{}: head_dim {d} × heads ≠ hidden_size is not supported", path.display());
                }
            }
            if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
                bail!("{}: rope_scaling is not supported yet", path.display());
            }
            c
        }
        // Our Qwen3 / Qwen3-MoE exports (and minimind-3-shaped Qwen3 models): the same field names;
        // q/k norm and the experts are read off the tensors.
        "qwen3" | "qwen3_moe" => {
            let mut c = parse("Qwen3")?;
            if let Some(d) = v.get("head_dim").and_then(Value::as_u64) {
                if d as usize * c.num_attention_heads != c.hidden_size {
                    bail!("{}: head_dim {d} × heads ≠ hidden_size is not supported", path.display());
                }
            }
            c.model_type = "minimind".into();
            c.architectures = vec!["MiniMindForCausalLM".into()];
            c.use_moe = kind == "qwen3_moe";
            c.n_shared_experts = 0;
            if c.use_moe && c.router_aux_loss_coef.is_none() {
                c.router_aux_loss_coef = Some(0.001);
            }
            c
        }
        other => bail!("{}: model_type {other:?} is not supported (minimind, llama, qwen3, qwen3_moe)", path.display()),
    };
    config.resolved().with_context(|| format!("{}: invalid config", path.display()))
}

/// MiniMind2-classic `LMConfig` fields mapped onto ours (the RoPE table always spans 32768 positions).
fn classic_config(v: &Value) -> ModelConfig {
    let int = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
    let float = |k: &str| v.get(k).and_then(Value::as_f64);
    let d = ModelConfig::default();
    let heads = int("n_heads").unwrap_or(d.num_attention_heads);
    ModelConfig {
        hidden_size: int("dim").unwrap_or(d.hidden_size),
        num_hidden_layers: int("n_layers").unwrap_or(d.num_hidden_layers),
        num_attention_heads: heads,
        num_key_value_heads: int("n_kv_heads").unwrap_or(heads),
        intermediate_size: int("hidden_dim"),
        vocab_size: int("vocab_size").unwrap_or(d.vocab_size),
        rms_norm_eps: float("norm_eps").unwrap_or(d.rms_norm_eps),
        rope_theta: float("rope_theta").unwrap_or(d.rope_theta),
        use_moe: v.get("use_moe").and_then(Value::as_bool).unwrap_or(false),
        ..d
    }
}

/// The shape read off the tensors: vocabulary and width from the embedding, layers by count, FFN
/// width from `gate_proj`, KV heads from `k_proj` — given the query head count.
pub fn infer_config(t: &HashMap<String, Tensor>, heads: usize) -> Result<ModelConfig> {
    let embed = t
        .get("model.embed_tokens.weight")
        .or_else(|| t.get("lm_head.weight"))
        .context("no model.embed_tokens.weight (or tok_embeddings.weight) to read the shape from")?;
    let (vocab, hidden) = embed.dims2()?;
    let layers = (0..).take_while(|i| t.contains_key(&format!("model.layers.{i}.input_layernorm.weight"))).count();
    if layers == 0 {
        bail!("no model.layers.0.input_layernorm.weight (or layers.0.attention_norm.weight): no layers found");
    }
    if heads == 0 || hidden % heads != 0 {
        bail!("hidden size {hidden} is not divisible by {heads} heads (set --heads or --config)");
    }
    let head_dim = hidden / heads;
    let dim0 = |name: &str| t.get(name).map(|w| w.dim(0)).transpose();
    let kv_rows = dim0("model.layers.0.self_attn.k_proj.weight")?.unwrap_or(hidden);
    if kv_rows % head_dim != 0 {
        bail!("k_proj has {kv_rows} rows, not a whole number of {head_dim}-wide heads (set --heads or --config)");
    }
    let experts = count_indices(t, "model.layers.0.mlp.experts.");
    let ffn_tensor = if experts > 0 {
        "model.layers.0.mlp.experts.0.gate_proj.weight"
    } else {
        "model.layers.0.mlp.gate_proj.weight"
    };
    let shape = ModelConfig {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_rows / head_dim,
        intermediate_size: dim0(ffn_tensor)?,
        vocab_size: vocab,
        ..ModelConfig::default()
    };
    // q/k norm marks minimind-3: ε 1e-6, and for MoE its top-1 router with the Switch-style aux loss.
    let config = match t.contains_key("model.layers.0.self_attn.q_norm.weight") {
        true => ModelConfig { rms_norm_eps: 1e-6, num_experts_per_tok: 1, router_aux_loss_coef: Some(5e-4), ..shape },
        false => shape,
    };
    with_architecture_of(config, t)
}

// ---- building ------------------------------------------------------------------------------------

/// Builds the f32 model from HF-named tensors. Tied when there is no separate head, or when the head
/// equals the embedding (MiniMind stores the tied tensor twice; Llama exports write an explicit copy).
fn build_model(
    mut config: ModelConfig,
    mut tensors: HashMap<String, Tensor>,
    classic: bool,
) -> Result<MiniMindForCausalLM> {
    if classic {
        permute_classic_qk(&mut tensors, config.head_dim(), ".weight")?;
    }
    config.tie_word_embeddings = match (tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")) {
        (None, _) => true,
        (Some(head), Some(embed)) if checkpoint::same_values(head, embed)? => {
            tensors.remove("lm_head.weight");
            true
        }
        _ => false,
    };
    let wb = WeightBuilder::loaded(tensors, DType::F32, &Device::Cpu, false);
    let model = MiniMindForCausalLM::new(&config, &wb, InitScheme::Minimind2)?;
    wb.finish()?;
    Ok(model)
}

/// A LoRA checkpoint checked against its base model and written as an adapter folder. MiniMind's
/// adapters have no α/r scaling (`y = Wx + B(Ax)`), so α = r. Classic `wq`/`wk` adapters get the
/// RoPE row permutation on B (their output side).
fn import_lora(mut tensors: HashMap<String, Tensor>, classic: bool, base: &Path, out: &Path) -> Result<LoraConfig> {
    let (mut model, _) = checkpoint::load_model(base, &Device::Cpu, DType::F32, false)?;
    if classic {
        permute_classic_qk(&mut tensors, model.config.head_dim(), ".lora.B.weight")?;
    }
    let rank = tensors
        .iter()
        .find(|(k, _)| k.ends_with(".lora.A.weight"))
        .map(|(_, a)| a.dim(0))
        .transpose()?
        .context("no ….lora.A.weight tensor")?;
    let targets: BTreeSet<String> =
        tensors.keys().filter_map(|k| k.split(".lora.").next()?.rsplit('.').next().map(str::to_string)).collect();
    let config = LoraConfig { rank, alpha: rank as f64, targets: targets.into_iter().collect() };
    let wb = WeightBuilder::loaded(tensors, DType::F32, &Device::Cpu, false);
    lora::attach(&mut model, &config, &wb)?;
    wb.finish()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    lora::save(out, &model, &config)?;
    Ok(config)
}

// ---- tokenizer -----------------------------------------------------------------------------------

/// MiniMind's own tokenizers, embedded: minimind-3 (36 reserved tokens, Qwen3-style template),
/// MiniMind2 (ChatML `<|im_start|>`) and MiniMind2-classic (`<s>`).
const BUNDLED: [(&str, &str, &str); 3] = [
    (
        "minimind3",
        include_str!("../../assets/tokenizers/v3/tokenizer.json"),
        include_str!("../../assets/tokenizers/v3/tokenizer_config.json"),
    ),
    (
        "minimind2",
        include_str!("../../assets/tokenizers/v2/tokenizer.json"),
        include_str!("../../assets/tokenizers/v2/tokenizer_config.json"),
    ),
    (
        "minimind2-classic",
        include_str!("../../assets/tokenizers/v2-classic/tokenizer.json"),
        include_str!("../../assets/tokenizers/v2-classic/tokenizer_config.json"),
    ),
];

fn write_bundled(name: &str, out: &Path) -> Result<()> {
    let (_, json, config) = BUNDLED.iter().find(|(n, ..)| *n == name).with_context(|| {
        let names: Vec<&str> = BUNDLED.iter().map(|(n, ..)| *n).collect();
        format!("--tokenizer {name:?}: not a folder, nor a bundled tokenizer ({})", names.join(", "))
    })?;
    for (file, text) in [("tokenizer.json", json), ("tokenizer_config.json", config)] {
        atomic_write(&out.join(file), |w| Ok(w.write_all(text.as_bytes())?))?;
    }
    Ok(())
}

/// Writes the tokenizer: `--tokenizer` (folder or bundled name), else the source folder's (or the
/// `.pth` file's folder's), else MiniMind's bundled tokenizer of the checkpoint's generation.
/// Returns where it came from.
fn write_tokenizer(src: &Path, out: &Path, given: Option<&Path>, classic: bool, generation3: bool) -> Result<String> {
    if let Some(given) = given {
        if given.is_dir() {
            if !given.join("tokenizer.json").exists() {
                bail!("--tokenizer {}: no tokenizer.json there", given.display());
            }
            copy_tokenizer_files(given, out)?;
        } else {
            write_bundled(&given.to_string_lossy(), out)?;
        }
        return Ok(given.display().to_string());
    }
    let folder = if src.is_dir() { Some(src) } else { src.parent() };
    if let Some(folder) = folder.filter(|f| f.join("tokenizer.json").exists()) {
        copy_tokenizer_files(folder, out)?;
        return Ok(folder.display().to_string());
    }
    let name = match (classic, generation3) {
        (true, _) => "minimind2-classic",
        (false, true) => "minimind3",
        (false, false) => "minimind2",
    };
    write_bundled(name, out)?;
    Ok(format!("bundled {name}"))
}
