//! Packing a model for CPU inference: every f32 projection and the head become panels
//! ([`ops::panel`]), the layout whose one kernel serves a decode batch and a prompt, runs a batched
//! decode step near the CPU's multiply-add peak, and gives a sequence the same bits in any batch.
//!
//! (Packing q/k/v and gate/up side by side, one product each, was measured slower: splitting the
//! joint output costs more than the passes it saves — docs/PERFORMANCE.md.)

use crate::model::transformer::{Linear, MiniMindForCausalLM};
use crate::ops;
use anyhow::Result;
use candle_core::DType;

impl Linear {
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
}
