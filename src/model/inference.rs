//! A trained model's weights made ready for inference, in one of three forms:
//! - **panels** (CPU, f32): every projection and the head packed so that one kernel serves a decode
//!   batch and a prompt, runs a batched decode step near the CPU's multiply-add peak, and gives a
//!   sequence the same bits in any batch ([`ops::panel`]). (Packing q/k/v and gate/up side by side,
//!   one product each, was measured slower: splitting the joint output costs more than the passes it
//!   saves — docs/PERFORMANCE.md.)
//! - **int8** (CPU): int8 panels with a scale per group of inputs ([`ops::panel_int8`]), ≈ 3.6× fewer
//!   bytes per decoded token than f32.
//! - **a copy in bf16** (any device): half the bytes, rebuilt through the checkpoint walk.

use crate::model::params::{InitScheme, WeightBuilder};
use crate::model::transformer::{Linear, MiniMindForCausalLM};
use crate::ops;
use anyhow::{bail, Result};
use candle_core::DType;

impl Linear {
    /// Replaces the (adapted) weight by its int8 packing ([`ops::int8`]).
    fn quantize_int8(&mut self) -> Result<()> {
        if !ops::int8::is_int8(&self.weight) {
            let w = self.effective_weight()?;
            // Int8 panels where the shape has them (batched decoding shares the f32 panels' tile).
            self.weight =
                if ops::panel_int8::packable(&w) { ops::panel_int8::quantize(&w)? } else { ops::int8::quantize(&w)? };
            self.lora = None;
        }
        Ok(())
    }

    /// Replaces the (adapted) f32 weight by its panels where it has them.
    fn pack_panels(&mut self) -> Result<()> {
        let w = self.effective_weight()?;
        if ops::panel::packable(&w) {
            self.weight = ops::panel::pack(&w)?;
            self.lora = None;
        }
        Ok(())
    }
}

impl MiniMindForCausalLM {
    /// Packs every f32 projection and the head into panels for CPU inference. LoRA adapters are
    /// merged first; the weights keep their memory (a tied head gets its own packed copy, as with
    /// int8). Such a model cannot be trained or saved. Does nothing for int8, bf16 or non-CPU models.
    pub fn pack_panels(&mut self) -> Result<()> {
        let cpu_f32 = self.dtype() == DType::F32 && self.compute_dtype() == DType::F32 && self.device().is_cpu();
        if !cpu_f32 || self.is_int8() {
            return Ok(());
        }
        for (_, linear) in self.linears_mut() {
            linear.pack_panels()?;
        }
        self.lm_head.pack_panels()
    }

    /// Converts every projection and the head to int8 weights ([`ops::int8`]) for inference: ≈ 3.6×
    /// fewer bytes read per decoded token. LoRA adapters are merged first; the embedding lookup keeps
    /// its f32 table. Such a model cannot be trained or saved.
    pub fn quantize_int8(&mut self) -> Result<()> {
        if self.dtype() != DType::F32 {
            bail!("int8 quantization starts from f32 weights, this model is {:?}", self.dtype());
        }
        for (_, linear) in self.linears_mut() {
            linear.quantize_int8()?;
        }
        self.lm_head.quantize_int8()
    }

    /// Whether [`Self::quantize_int8`] was applied.
    pub fn is_int8(&self) -> bool {
        ops::int8::is_int8(&self.lm_head.weight)
    }

    /// A copy with every weight stored (and computed) in `dtype`: bf16 inference reads half the
    /// bytes. Rebuilt through the same walk as loading a checkpoint.
    pub fn with_weights_in(&self, dtype: DType) -> Result<Self> {
        if self.is_int8() || ops::panel::is_packed(&self.lm_head.weight) {
            bail!("int8 or panel-packed weights cannot be converted to {dtype:?}");
        }
        let mut merged = self.clone();
        for (_, linear) in merged.linears_mut() {
            linear.weight = linear.effective_weight()?;
            linear.lora = None;
        }
        let tensors = merged.named_tensors().into_iter().collect();
        let wb = WeightBuilder::loaded(tensors, dtype, self.device(), false);
        let model = Self::new(&self.config, &wb, InitScheme::Minimind2)?;
        wb.finish()?;
        Ok(model)
    }
}
