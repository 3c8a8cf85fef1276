//! Mixture-of-experts feed-forward: the MLP variant of MiniMind2-MoE and minimind-3-MoE.
//!
//! ```text
//! s = softmax(x·W_gateᵀ)                      router scores over E experts, per token
//! (w, idx) = top-k(s)                         k experts per token; w renormalized to sum 1 (norm_topk_prob)
//! y = Σ_j w_j · Expert_idx_j(x) + Σ Shared(x)  each expert a SwiGLU MLP; MiniMind2 adds one shared expert
//! ```
//! Dispatch groups tokens by expert — one SwiGLU over each expert's own tokens, scaled by their
//! weights and scattered back with `index_add` — so every token costs k experts, never E; all of it
//! has a backward (the router's weights get their gradient through `gather`).
//!
//! In training a load-balancing loss joins the model's loss (spec §2.8), summed over layers:
//! - MiniMind2, `seq_aux`: `α · mean_b Σ_e c[b,e]·P[b,e]`, `c[b,e]` = slots of sequence b routed to e
//!   over `T·k/E`, `P[b,e]` = mean score of e over b's tokens; without `seq_aux`: `α · Σ_e (E·f_e)·P_e`
//!   with `f_e` the share of all slots routed to e;
//! - minimind-3: `coef · E · Σ_j Σ_e load[j,e]·P_e`, `load[j,e]` = share of tokens whose j-th choice is e.

use super::config::ModelConfig;
use super::params::WeightBuilder;
use super::transformer::Mlp;
use crate::ops;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Which load-balancing loss a MoE layer adds in training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AuxLoss {
    /// MiniMind2 with `seq_aux`: per sequence, then averaged.
    Sequence { alpha: f64 },
    /// MiniMind2 without `seq_aux`: over all tokens of the batch.
    Batch { alpha: f64 },
    /// minimind-3 (Switch-style, per choice rank).
    PerChoice { coef: f64 },
}

/// What one MoE layer's routing produced: its aux loss (training only) and how many slots each
/// expert received.
#[derive(Debug, Clone)]
pub struct Routing {
    pub aux_loss: Option<Tensor>,
    pub counts: Vec<usize>,
}

#[derive(Clone)]
pub struct MoeFeedForward {
    /// The router `[E, d]` (`mlp.gate.weight`).
    pub gate: Tensor,
    /// `mlp.experts.{e}`.
    pub experts: Vec<Mlp>,
    /// `mlp.shared_experts.{s}` (MiniMind2: one; minimind-3: none).
    pub shared_experts: Vec<Mlp>,
    pub top_k: usize,
    /// Renormalize the chosen weights to sum to 1 (MiniMind2 only when k > 1).
    pub renormalize: bool,
    pub aux: AuxLoss,
}

impl MoeFeedForward {
    pub fn new(wb: &WeightBuilder, name: &str, c: &ModelConfig, scheme: super::params::InitScheme) -> Result<Self> {
        let (d, f, e) = (c.hidden_size, c.expert_ffn_size(), c.n_routed_experts);
        let gate = wb.get(&format!("{name}.gate.weight"), (e, d), scheme.linear(d))?;
        let experts =
            (0..e).map(|i| Mlp::with_width(wb, &format!("{name}.experts.{i}"), d, f, scheme)).collect::<Result<_>>()?;
        let shared_experts = (0..c.n_shared_experts)
            .map(|i| Mlp::with_width(wb, &format!("{name}.shared_experts.{i}"), d, f, scheme))
            .collect::<Result<_>>()?;
        let minimind3 = c.router_aux_loss_coef.is_some();
        let aux = match (c.router_aux_loss_coef, c.seq_aux) {
            (Some(coef), _) => AuxLoss::PerChoice { coef },
            (None, true) => AuxLoss::Sequence { alpha: c.aux_loss_alpha },
            (None, false) => AuxLoss::Batch { alpha: c.aux_loss_alpha },
        };
        let top_k = c.num_experts_per_tok;
        let renormalize = c.norm_topk_prob && (top_k > 1 || minimind3);
        Ok(Self { gate, experts, shared_experts, top_k, renormalize, aux })
    }

    /// `x` `[B, T, d]` → `[B, T, d]` and the routing; the aux loss is computed when `training`.
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<(Tensor, Routing)> {
        let (b, t, d) = x.dims3()?;
        let (n, k, e) = (b * t, self.top_k, self.experts.len());
        let flat = x.reshape((n, d))?;
        // Router probabilities in f32 whatever the compute dtype (autocast does the same).
        let router_logits = ops::matmul_nt(&flat, &self.gate.to_dtype(flat.dtype())?)?.to_dtype(DType::F32)?;
        let scores = ops::softmax_last_dim(&router_logits)?; // [N, E]
        let choice = top_k(&scores.to_vec2::<f32>()?, k);
        let idx = Tensor::from_vec(choice.iter().map(|&c| c as u32).collect::<Vec<_>>(), (n, k), x.device())?;
        let mut weights = scores.gather(&idx, 1)?; // [N, k]
        if self.renormalize {
            weights = weights.broadcast_div(&(weights.sum_keepdim(1)? + 1e-20)?)?;
        }
        let weights = weights.flatten_all()?.to_dtype(flat.dtype())?;
        let mut out = flat.zeros_like()?;
        let mut counts = vec![0usize; e];
        for (expert_id, expert) in self.experts.iter().enumerate() {
            let slots: Vec<u32> = (0..n * k).filter(|&s| choice[s] == expert_id).map(|s| s as u32).collect();
            counts[expert_id] = slots.len();
            if slots.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = slots.iter().map(|&s| s / k as u32).collect();
            let (slots, tokens) = (Tensor::new(slots, x.device())?, Tensor::new(tokens, x.device())?);
            let y = expert.forward(&flat.index_select(&tokens, 0)?)?;
            let w = weights.index_select(&slots, 0)?.unsqueeze(1)?;
            out = out.index_add(&tokens, &y.broadcast_mul(&w)?, 0)?;
        }
        for shared in &self.shared_experts {
            out = (out + shared.forward(&flat)?)?;
        }
        let aux_loss = if training { self.aux_loss(&scores, &choice, b, t)? } else { None };
        Ok((out.reshape((b, t, d))?, Routing { aux_loss, counts }))
    }

    /// The load-balancing loss of one batch (`None` when its coefficient is 0).
    fn aux_loss(&self, scores: &Tensor, choice: &[usize], b: usize, t: usize) -> Result<Option<Tensor>> {
        let (k, e) = (self.top_k, self.experts.len());
        let scores = scores.to_dtype(DType::F32)?;
        let device = scores.device();
        let loss = match self.aux {
            AuxLoss::Sequence { alpha } if alpha > 0.0 => {
                // c[b,e] = slots of sequence b routed to e / (T·k/E)
                let mut c = vec![0f32; b * e];
                for (s, &ex) in choice.iter().enumerate() {
                    c[(s / k) / t * e + ex] += e as f32 / (t * k) as f32;
                }
                let c = Tensor::from_vec(c, (b, e), device)?;
                let p = scores.reshape((b, t, e))?.mean(1)?; // P[b,e]
                ((c * p)?.sum(1)?.mean(0)? * alpha)?
            }
            AuxLoss::Batch { alpha } if alpha > 0.0 => {
                let mut f = vec![0f32; e];
                for &ex in choice {
                    f[ex] += e as f32 / choice.len() as f32; // E·f_e
                }
                let p = scores.mean(0)?;
                ((Tensor::from_vec(f, e, device)? * p)?.sum_all()? * alpha)?
            }
            AuxLoss::PerChoice { coef } if coef > 0.0 => {
                // Σ_j load[j,e] = (slots routed to e) / N
                let n = choice.len() / k;
                let mut load = vec![0f32; e];
                for &ex in choice {
                    load[ex] += 1.0 / n as f32;
                }
                let p = scores.mean(0)?;
                ((Tensor::from_vec(load, e, device)? * p)?.sum_all()? * (coef * e as f64))?
            }
            _ => return Ok(None),
        };
        Ok(Some(loss))
    }
}

/// The `k` highest-scoring experts of each row (ties to the lower index), row-major `[N·k]`.
pub fn top_k(scores: &[Vec<f32>], k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(scores.len() * k);
    for row in scores {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        out.extend_from_slice(&order[..k]);
    }
    out
}

/// Routing of every MoE layer of one forward pass, summed up for the loss and the metrics.
#[derive(Debug, Clone, Default)]
pub struct MoeStats {
    /// Σ over layers of their aux losses (training only).
    pub aux_loss: Option<Tensor>,
    /// Slots each expert received, summed over layers.
    pub counts: Vec<usize>,
}

impl MoeStats {
    pub fn add(&mut self, routing: Routing) -> Result<()> {
        self.aux_loss = match (self.aux_loss.take(), routing.aux_loss) {
            (Some(a), Some(b)) => Some((a + b)?),
            (a, b) => a.or(b),
        };
        if self.counts.is_empty() {
            self.counts = routing.counts;
        } else if self.counts.len() == routing.counts.len() {
            self.counts.iter_mut().zip(routing.counts).for_each(|(c, r)| *c += r);
        } else {
            bail!("MoE layers with different expert counts");
        }
        Ok(())
    }

    /// `aux_loss` and each expert's share of the routed slots (`expert_load_{e}`), for metrics.jsonl.
    pub fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        if let Some(aux) = &self.aux_loss {
            out.push(("aux_loss".to_string(), aux.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64));
        }
        let total: usize = self.counts.iter().sum();
        for (e, &c) in self.counts.iter().enumerate() {
            out.push((format!("expert_load_{e}"), c as f64 / total.max(1) as f64));
        }
        Ok(out)
    }

    /// `loss + aux_loss` (the loss alone for a dense model).
    pub fn add_aux(&self, loss: Tensor) -> Result<Tensor> {
        Ok(match &self.aux_loss {
            Some(aux) => (loss + aux.to_dtype(DType::F32)?.reshape(())?)?,
            None => loss,
        })
    }
}
