//! Training: experiments (typed TOML), the learning-rate schedule, and the step-based distillation /
//! fine-tuning loop with atomic checkpoints, exact resume and TensorBoard logs.
//!
//! - [`experiment`]: the experiment files and `key=value` overrides.
//! - [`plan`]: what a run needs and will do, checked before any work (`--dry-run`).
//! - [`trainer`]: the loop; [`losses`], [`optim`] (AdamW, global-norm clipping), [`schedule`].
//! - [`checkpoint`], [`metrics`]: what a run leaves in `runs/NAME/`.

pub mod checkpoint;
pub mod experiment;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod plan;
pub mod reducer;
pub mod schedule;
pub mod trainer;

pub use experiment::{Experiment, ExperimentError};
pub use plan::Plan;
pub use trainer::{Evaluation, Outcome, RunOptions, train};
