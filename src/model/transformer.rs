//! MiniMind2: a decoder-only, Llama-style transformer.
//!
//! ```text
//! ids ─ embed_tokens ─┬─ [ DecoderLayer × L ] ─ norm ─ lm_head (= embed_tokensᵀ when tied) ─ logits
//!                     │
//! DecoderLayer(x):  h   = x + o_proj(Attention(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = RMSNorm(x)
//!                   out = h + down_proj(silu(gate_proj(m)) ⊙ up_proj(m)),                      m = RMSNorm(h)
//! ```
//! Struct fields carry the checkpoint's tensor names (HF Llama / MiniMind2), so building the model
//! from a checkpoint is a walk over these structs. All math lives in [`crate::ops`].

use crate::model::config::ModelConfig;
pub use crate::model::kv_cache::KvCache;
pub use crate::model::moe::{MoeFeedForward, MoeStats, Routing};
use crate::model::params::{Init, InitScheme, WeightBuilder};
pub use crate::model::rope::{rope_inv_freq, yarn_inv_freq, RotaryEmbedding};
use crate::ops;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor, D};

/// A low-rank adapter (LoRA) on a Linear: `y = W·x + (α/r)·B·(A·x)`, `A` `[r, in]`, `B` `[out, r]`.
#[derive(Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    /// α / r.
    pub scale: f64,
}

/// A bias-free linear layer `y = x·Wᵀ`, `W` stored `[out, in]` as in PyTorch, optionally with a LoRA
/// adapter (`lora.A` / `lora.B` in checkpoints).
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    fn new(wb: &WeightBuilder, name: &str, (out, inp): (usize, usize), scheme: InitScheme) -> Result<Self> {
        let weight = wb.get(&format!("{name}.weight"), (out, inp), scheme.linear(inp))?;
        Ok(Self { weight, lora: None })
    }

    /// The matrix the layer applies: `W`, or `W + (α/r)·B·A` with an adapter — the same function as
    /// `W·x + (α/r)·B·(A·x)`, as one matrix so the fused kernels need not know about adapters (and
    /// the extra `B·A` costs `out·r·in`, small next to the `tokens·out·in` of the layer).
    pub fn effective_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => Ok((&self.weight + (l.b.matmul(&l.a)? * l.scale)?)?),
        }
    }

    /// The matrix in the dtype of the activations `x` it multiplies (mixed precision: fp32 master
    /// weights cast to bf16 at use, as PyTorch's autocast does; the cast's backward returns fp32
    /// gradients to the master weights). Int8 packings are used as they are.
    pub fn weight_for(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.effective_weight()?;
        if ops::int8::is_int8(&w) || ops::panel::is_packed(&w) {
            return Ok(w);
        }
        Ok(w.to_dtype(x.dtype())?)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.weight_for(x).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        ops::matmul_nt(x, &w)
    }
}

/// RMSNorm with a learned per-channel gain (initialized to ones).
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(wb: &WeightBuilder, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: wb.get(&format!("{name}.weight"), dim, Init::Ones)?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.weight.to_dtype(x.dtype())?, self.eps)?)
    }

    /// The residual connection before this norm, and the norm of its sum: `(x + y, norm(x + y))`
    /// (inference: one pass on the CPU).
    pub fn add_and_forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(ops::residual_add_norm(x, y, &self.weight.to_dtype(x.dtype())?, self.eps)?)
    }

    /// ε, added to the mean square under the root.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

/// Training-time randomness of one forward pass: dropout is active iff this is `Some(seed)`.
pub type DropoutSeed = Option<u64>;

fn site_seed(seed: u64, layer: usize, site: u64) -> u64 {
    seed ^ ((layer as u64 + 1) << 32) ^ site.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[derive(Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// minimind-3 (Qwen3): RMSNorm over each head's query and key, before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
}

impl Attention {
    fn new(wb: &WeightBuilder, name: &str, c: &ModelConfig, scheme: InitScheme) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim());
        let (h, k) = (c.num_attention_heads, c.num_key_value_heads);
        Ok(Self {
            q_proj: Linear::new(wb, &format!("{name}.q_proj"), (h * hd, d), scheme)?,
            k_proj: Linear::new(wb, &format!("{name}.k_proj"), (k * hd, d), scheme)?,
            v_proj: Linear::new(wb, &format!("{name}.v_proj"), (k * hd, d), scheme)?,
            o_proj: Linear::new(wb, &format!("{name}.o_proj"), (d, h * hd), scheme)?,
            q_norm: c.qk_norm.then(|| RmsNorm::new(wb, &format!("{name}.q_norm"), hd, c.rms_norm_eps)).transpose()?,
            k_norm: c.qk_norm.then(|| RmsNorm::new(wb, &format!("{name}.k_norm"), hd, c.rms_norm_eps)).transpose()?,
            num_heads: h,
            num_kv_heads: k,
        })
    }

    /// `x`: `[B, T, d]` at positions `past .. past+T`; returns `[B, T, d]`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        cache: Option<(&mut KvCache, usize)>,
        dropout: Option<(f64, u64)>,
    ) -> Result<Tensor> {
        let t = x.dim(1)?;
        let past = cache.as_ref().map_or(0, |(c, _)| c.len());
        let (cos, sin) = rope.rows(past, t)?;
        // Heads `[B, n, T, D]`, q and k rotated by RoPE; with a per-head norm (q/k norm) the heads
        // are normalized first and rotated after.
        let weights = [self.q_proj.weight_for(x)?, self.k_proj.weight_for(x)?, self.v_proj.weight_for(x)?];
        let tables = |norm: Option<&RmsNorm>| norm.is_none().then_some((&cos, &sin));
        let heads = ops::project_heads_many(
            x,
            &[
                (&weights[0], self.num_heads, tables(self.q_norm.as_ref())),
                (&weights[1], self.num_kv_heads, tables(self.k_norm.as_ref())),
                (&weights[2], self.num_kv_heads, None),
            ],
        )?;
        let normed = |heads: &Tensor, norm: Option<&RmsNorm>| -> Result<Tensor> {
            match norm {
                None => Ok(heads.clone()),
                Some(norm) => Ok(ops::apply_rope(&norm.forward(heads)?, &cos, &sin)?),
            }
        };
        let q = normed(&heads[0], self.q_norm.as_ref())?;
        let k = normed(&heads[1], self.k_norm.as_ref())?;
        let v = heads[2].clone();
        let attention_dropout = dropout.map(|(p, s)| (p, site_seed(s, 0, 1)));
        let y = match cache {
            Some((cache, layer)) => cache.attend(layer, &q, (&k, &v), attention_dropout)?,
            None => ops::causal_attention(&q, &k, &v, attention_dropout)?,
        };
        let y = ops::merge_heads(&y, &self.o_proj.weight_for(&y)?)?;
        Ok(match dropout {
            Some((p, s)) => ops::dropout(&y, p, site_seed(s, 0, 2))?,
            None => y,
        })
    }
}

/// SwiGLU feed-forward: `down_proj(silu(gate_proj(x)) ⊙ up_proj(x))`.
#[derive(Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// A SwiGLU MLP of width `f` on `d` channels (the dense FFN, or one expert of a MoE layer).
    pub fn with_width(wb: &WeightBuilder, name: &str, d: usize, f: usize, scheme: InitScheme) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::new(wb, &format!("{name}.gate_proj"), (f, d), scheme)?,
            down_proj: Linear::new(wb, &format!("{name}.down_proj"), (d, f), scheme)?,
            up_proj: Linear::new(wb, &format!("{name}.up_proj"), (f, d), scheme)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = ops::swiglu_in(x, &self.gate_proj.weight_for(x)?, &self.up_proj.weight_for(x)?)?;
        Ok(self.down_proj.forward(&hidden)?)
    }
}

/// A block's feed-forward: one SwiGLU MLP, or a mixture of experts ([`MoeFeedForward`]).
#[derive(Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(MoeFeedForward),
}

impl FeedForward {
    fn new(wb: &WeightBuilder, name: &str, c: &ModelConfig, scheme: InitScheme) -> Result<Self> {
        Ok(match c.use_moe {
            false => Self::Dense(Mlp::with_width(wb, name, c.hidden_size, c.ffn_size(), scheme)?),
            true => Self::Moe(MoeFeedForward::new(wb, name, c, scheme)?),
        })
    }

    /// The MLP of a dense layer.
    pub fn dense(&self) -> Option<&Mlp> {
        match self {
            Self::Dense(mlp) => Some(mlp),
            Self::Moe(_) => None,
        }
    }

    /// `[B, T, d]` → `[B, T, d]`, with the routing of a MoE layer.
    pub(crate) fn forward(&self, x: &Tensor, training: bool) -> Result<(Tensor, Option<Routing>)> {
        match self {
            Self::Dense(mlp) => Ok((mlp.forward(x)?, None)),
            Self::Moe(moe) => moe.forward(x, training).map(|(y, routing)| (y, Some(routing))),
        }
    }

    /// The SwiGLU MLPs with their module paths below `name` (`mlp`, `mlp.experts.0`, …,
    /// `mlp.shared_experts.0`, …).
    fn mlps(&self, name: &str) -> Vec<(String, &Mlp)> {
        match self {
            Self::Dense(mlp) => vec![(name.to_string(), mlp)],
            Self::Moe(moe) => {
                let experts = moe.experts.iter().enumerate().map(|(e, m)| (format!("{name}.experts.{e}"), m));
                let shared =
                    moe.shared_experts.iter().enumerate().map(|(s, m)| (format!("{name}.shared_experts.{s}"), m));
                experts.chain(shared).collect()
            }
        }
    }

    /// [`mlps`](Self::mlps), mutable (for LoRA and int8).
    fn mlps_mut(&mut self, name: &str) -> Vec<(String, &mut Mlp)> {
        match self {
            Self::Dense(mlp) => vec![(name.to_string(), mlp)],
            Self::Moe(moe) => {
                let experts = moe.experts.iter_mut().enumerate().map(|(e, m)| (format!("{name}.experts.{e}"), m));
                let shared =
                    moe.shared_experts.iter_mut().enumerate().map(|(s, m)| (format!("{name}.shared_experts.{s}"), m));
                experts.chain(shared).collect()
            }
        }
    }
}

/// One pre-norm transformer block.
#[derive(Clone)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: FeedForward,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(wb: &WeightBuilder, name: &str, c: &ModelConfig, scheme: InitScheme) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.rms_norm_eps);
        Ok(Self {
            self_attn: Attention::new(wb, &format!("{name}.self_attn"), c, scheme)?,
            input_layernorm: RmsNorm::new(wb, &format!("{name}.input_layernorm"), d, eps)?,
            post_attention_layernorm: RmsNorm::new(wb, &format!("{name}.post_attention_layernorm"), d, eps)?,
            mlp: FeedForward::new(wb, &format!("{name}.mlp"), c, scheme)?,
        })
    }

    /// `h = x + Attention(RMSNorm(x))`, then `h + FFN(RMSNorm(h))`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        cache: Option<(&mut KvCache, usize)>,
        dropout: Option<(f64, u64)>,
        training: bool,
    ) -> Result<(Tensor, Option<Routing>)> {
        let h =
            ops::residual_add(x, &self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, cache, dropout)?)?;
        let (mut m, routing) = self.mlp.forward(&self.post_attention_layernorm.forward(&h)?, training)?;
        if let Some((p, seed)) = dropout {
            m = ops::dropout(&m, p, site_seed(seed, 0, 4))?;
        }
        Ok((ops::residual_add(&h, &m)?, routing))
    }
}

/// The transformer body: embeddings, blocks, final norm (`model.*` tensors).
#[derive(Clone)]
pub struct MiniMindModel {
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub rotary: RotaryEmbedding,
}

/// What a training pass returns: the logits and the MoE layers' routing (empty for a dense model).
pub struct TrainOutput {
    /// `[B·T, V]`.
    pub logits: Tensor,
    /// The final hidden states `[B, T, d]` the logits were read from (a value head reads them too).
    pub hidden: Tensor,
    pub moe: MoeStats,
}

/// The causal language model: [`MiniMindModel`] plus the output head.
#[derive(Clone)]
pub struct MiniMindForCausalLM {
    pub config: ModelConfig,
    pub model: MiniMindModel,
    /// The output projection `[V, d]`; the same tensor as `model.embed_tokens` when tied.
    pub lm_head: Linear,
    /// The dtype activations are computed in: the weights' own, or bf16 over fp32 master weights
    /// (mixed precision, [`set_compute_dtype`](Self::set_compute_dtype)).
    compute_dtype: DType,
    /// How decoding caches keys and values ([`set_kv_format`](Self::set_kv_format)).
    pub(crate) kv: crate::model::kv_cache::KvFormat,
}

impl MiniMindForCausalLM {
    /// Builds the model, asking `wb` for every tensor in MiniMind2's state-dict order.
    /// With tied embeddings the single shared tensor is `model.embed_tokens.weight`, initialized
    /// like the head (a Linear with fan_in = d), as MiniMind2 does.
    pub fn new(config: &ModelConfig, wb: &WeightBuilder, scheme: InitScheme) -> Result<Self> {
        let c = config.clone().resolved()?;
        let (v, d) = (c.vocab_size, c.hidden_size);
        let embed_init = match (scheme, c.tie_word_embeddings) {
            (InitScheme::Minimind2, true) => scheme.linear(d),
            // nn.Embedding's own default is N(0, 1).
            (InitScheme::Minimind2, false) => Init::Normal(1.0),
            (InitScheme::Normal, _) => Init::Normal(0.02),
        };
        let embed_tokens = wb.get("model.embed_tokens.weight", (v, d), embed_init)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::new(wb, &format!("model.layers.{i}"), &c, scheme))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(wb, "model.norm", d, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            Linear { weight: embed_tokens.clone(), lora: None }
        } else {
            Linear::new(wb, "lm_head", (v, d), scheme)?
        };
        let rotary = RotaryEmbedding::new(&c, wb.device())?;
        let compute_dtype = wb.dtype();
        Ok(Self {
            model: MiniMindModel { embed_tokens, layers, norm, rotary },
            lm_head,
            config: c,
            compute_dtype,
            kv: Default::default(),
        })
    }

    /// Final hidden states `[B, T, d]` (after the last norm) for `input_ids` `[B, T]`.
    /// With a cache, the ids continue the cached sequence and their keys/values are appended.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        dropout: DropoutSeed,
    ) -> Result<Tensor> {
        self.run(input_ids, cache, dropout, None)
    }

    /// The forward pass; `moe` collects the routing of MoE layers (and marks a training pass, which
    /// computes their aux losses).
    fn run(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        dropout: DropoutSeed,
        mut moe: Option<&mut MoeStats>,
    ) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.config.max_position_embeddings {
            bail!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                past + t,
                self.config.max_position_embeddings
            );
        }
        let d = self.config.hidden_size;
        let embedded = self.model.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?;
        let mut x = embedded.to_dtype(self.compute_dtype)?.reshape((b, t, d))?;
        // Dropout sites get distinct seeds: (layer, site), the embedding counting as layer L.
        let dropout = dropout.filter(|_| self.config.dropout > 0.0).map(|seed| (self.config.dropout, seed));
        if let Some((p, seed)) = dropout {
            x = ops::dropout(&x, p, site_seed(seed, self.config.num_hidden_layers, 0))?;
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let layer_dropout = dropout.map(|(p, seed)| (p, site_seed(seed, i, 3)));
            let training = moe.is_some();
            let (y, routing) = layer.forward(&x, &self.model.rotary, layer_cache, layer_dropout, training)?;
            if let (Some(stats), Some(routing)) = (moe.as_deref_mut(), routing) {
                stats.add(routing)?;
            }
            x = y;
        }
        if let Some(cache) = cache {
            cache.advance(t);
        }
        self.model.norm.forward(&x)
    }

    /// Logits `[B, T, V]` for every position.
    pub fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, cache, None)?;
        Ok(self.lm_head.forward(&hidden)?)
    }

    /// Logits `[B, V]` of the last position only (what decoding needs; skips the other rows of
    /// the V-wide head matmul).
    pub fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, cache, None)?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        Ok(self.lm_head.forward(&last)?)
    }

    /// Logits `[B·T, V]` of every position, without a training pass's extra work (no dropout, no MoE
    /// aux loss or routing statistics): a frozen reference or teacher, or evaluation.
    pub fn forward_flat(&self, input_ids: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, None, None)?;
        let d = hidden.dim(D::Minus1)?;
        Ok(self.lm_head.forward(&hidden.reshape(((), d))?)?)
    }

    /// A training pass: logits `[B·T, V]` (dropout active when `dropout` is set) and, for a MoE
    /// model, the aux loss to add to the stage's loss and the experts' load.
    pub fn forward_train(&self, input_ids: &Tensor, dropout: DropoutSeed) -> Result<TrainOutput> {
        let mut moe = MoeStats::default();
        let hidden = self.run(input_ids, None, dropout, Some(&mut moe))?;
        let d = hidden.dim(D::Minus1)?;
        let logits = self.lm_head.forward(&hidden.reshape(((), d))?)?;
        Ok(TrainOutput { logits, hidden, moe })
    }

    /// Switches RoPE scaling (YaRN for long prompts, or none) and rebuilds the RoPE tables.
    pub fn set_rope_scaling(&mut self, scaling: Option<crate::model::config::RopeScaling>) -> Result<()> {
        self.config.rope_scaling = scaling;
        self.config = self.config.clone().resolved()?;
        self.model.rotary = RotaryEmbedding::new(&self.config, self.device())?;
        Ok(())
    }

    pub fn device(&self) -> &Device {
        self.model.embed_tokens.device()
    }

    /// The dtype the weights are stored in.
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.dtype()
    }

    /// The dtype of the activations (and of a KV cache for this model, unless
    /// [`kv_dtype`](Self::kv_dtype) says f16).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Mixed precision: computes in `dtype` (bf16) while the weights stay as they are (fp32 master
    /// weights that the optimizer updates). Matmuls and activations run in `dtype`; norms, softmax
    /// and the loss compute their statistics in f32 (see [`ops::composed`]).
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute_dtype = dtype;
    }

    /// The projection layers of every block by module path (`model.layers.{i}.self_attn.q_proj`, …),
    /// what LoRA adapters attach to.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &mut l.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            for (path, m) in l.mlp.mlps_mut(&format!("{p}.mlp")) {
                out.push((format!("{path}.gate_proj"), &mut m.gate_proj));
                out.push((format!("{path}.down_proj"), &mut m.down_proj));
                out.push((format!("{path}.up_proj"), &mut m.up_proj));
            }
        }
        out
    }

    /// Every tensor by checkpoint name (the tied head is stored once, as the embedding).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.model.embed_tokens.clone())];
        for (i, l) in self.model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            for (name, t) in [
                ("self_attn.q_proj", &a.q_proj.weight),
                ("self_attn.k_proj", &a.k_proj.weight),
                ("self_attn.v_proj", &a.v_proj.weight),
                ("self_attn.o_proj", &a.o_proj.weight),
                ("input_layernorm", &l.input_layernorm.weight),
                ("post_attention_layernorm", &l.post_attention_layernorm.weight),
            ] {
                out.push((format!("{p}.{name}.weight"), t.clone()));
            }
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), qn.weight.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), kn.weight.clone()));
            }
            if let FeedForward::Moe(moe) = &l.mlp {
                out.push((format!("{p}.mlp.gate.weight"), moe.gate.clone()));
            }
            for (path, m) in l.mlp.mlps(&format!("{p}.mlp")) {
                for (name, t) in [("gate_proj", &m.gate_proj), ("down_proj", &m.down_proj), ("up_proj", &m.up_proj)] {
                    out.push((format!("{path}.{name}.weight"), t.weight.clone()));
                }
            }
        }
        out.push(("model.norm.weight".into(), self.model.norm.weight.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".into(), self.lm_head.weight.clone()));
        }
        out
    }
}
