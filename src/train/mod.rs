//! Training: one loop ([`trainer`]) that every stage uses, the optimizer and schedule
//! ([`optim`]), exact resume ([`resume`]), metrics ([`metrics`]), what every stage's entry point
//! shares ([`run`]), and one module per stage — each a dataset plus a loss:
//! [`pretrain()`], [`sft()`], [`dpo()`], [`lora()`], [`distill()`], [`reason()`]. Reinforcement
//! learning: [`grpo()`] (GRPO / CISPO), its losses ([`policy_loss`], with PPO's GAE) and rewards ([`rewards`]).
//!
//! ```no_run
//! use minimind::train::{self, SftConfig, TrainConfig};
//! let summary = train::sft(&SftConfig {
//!     model: "runs/base".into(),
//!     data: "data/chat_zh_en.jsonl".into(),
//!     train: TrainConfig { max_steps: Some(100), ..TrainConfig::new("runs/chat") },
//! })?;
//! println!("loss {:.3} → {:.3}", summary.first_loss, summary.final_loss);
//! # anyhow::Ok(())
//! ```

pub mod agent;
pub mod distill;
pub mod dpo;
pub mod grpo;
pub mod lm;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod policy_loss;
pub mod ppo;
pub mod pretrain;
pub mod reason;
pub mod resume;
pub mod reward_model;
pub mod rewards;
pub mod rollout;
pub mod run;
pub mod sft;
pub mod stage;
pub mod tensorboard;
pub mod trainer;

pub use distill::{distill, DistillConfig};
pub use dpo::{dpo, DpoConfig};
pub use grpo::{grpo, GrpoConfig};
pub use lora::{lora, LoraTrainConfig};
pub use ppo::{ppo, PpoTrainConfig};
pub use pretrain::{pretrain, PretrainConfig};
pub use reason::{reason, ReasonConfig};
pub use reward_model::{reward_model, RewardModelConfig};
pub use run::{StageDefaults, TrainConfig};
pub use sft::{sft, SftConfig};
pub use trainer::*;
