//! Training: experiments (typed TOML), the learning-rate schedule, and (to come) the step-based
//! distillation / fine-tuning loop with checkpoints and TensorBoard logs.

pub mod experiment;
pub mod schedule;

pub use experiment::{Experiment, ExperimentError};
