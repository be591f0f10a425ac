//! Training: experiments (typed TOML), the checked plan, and the step-based distillation /
//! fine-tuning loop with atomic checkpoints, exact resume and TensorBoard logs.
//!
//! - [`experiment`]: the experiment files and `key=value` overrides; [`objective`]: a stage's loss
//!   terms; [`trainable`]: which parameters a stage trains.
//! - [`plan`]: what a run needs and will do, checked before any work (`--dry-run`); [`memory`]: the
//!   memory model it prints.
//! - [`trainer`]: the loop, from the rooms below it:
//!   - [`start`]: inputs, run directory, resume or convert;
//!   - [`batches`]: each worker's share of each step's micro-batches;
//!   - [`step`]: one optimizer step ([`optim`]: AdamW and global-norm clipping; [`schedule`];
//!     [`transfer`]: layer-local stages streamed; [`recompute`]: block recomputation);
//!   - [`distributed`]: ranks, averaging across devices and nodes ([`nodes`]: addresses, node 0's
//!     orchestrator, lost-node detection; [`shard`]: the optimizer state sharded over the
//!     workers, ZeRO-1);
//!   - [`recorder`]: the writer's logs ([`metrics`], [`events`] for TensorBoard), evaluations ([`evaluation`], [`losses`],
//!     [`zero_shot`]: lm-eval tasks),
//!     checkpoints ([`checkpoint`]) by the [`cadence`], and the run's end.
//! - [`params`]: parameters by name. [`error`]: what can stop a run.

pub mod batches;
pub mod cadence;
pub mod checkpoint;
pub mod distributed;
pub mod error;
pub mod evaluation;
pub mod events;
pub mod experiment;
pub mod losses;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod objective;
pub mod on_policy;
pub mod optim;
pub mod params;
pub mod plan;
pub mod recipes;
pub mod recompute;
pub mod recorder;
pub mod schedule;
pub mod shard;
pub mod start;
pub mod step;
pub mod trainable;
pub mod trainer;
pub mod transfer;
pub mod zero_shot;

pub use error::TrainError;
pub use evaluation::Evaluation;
pub use experiment::{Experiment, ExperimentError};
pub use plan::Plan;
pub use recorder::Outcome;
pub use trainer::{RunOptions, train, train_with};
