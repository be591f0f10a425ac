//! What can stop a run. Each error names the file, the key or the step, and where it helps what to
//! do about it.

use std::path::PathBuf;

use dijiang_data::error::DataError;
use dijiang_model::ModelError;

use crate::experiment::ExperimentError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input the run needs is missing or does not fit the experiment (the message says which,
    /// and the command or key that fixes it).
    #[error("{0}")]
    Input(String),
    /// Something read from `path` while resuming or saving a checkpoint is wrong.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error(
        "{skipped} updates skipped for non-finite losses or gradients (optimizer.max_nonfinite = {limit}): \
         stopping; the last checkpoint is untouched. Lower the learning rate or check the data"
    )]
    NonFinite { skipped: usize, limit: usize },
    #[error("refusing to save a checkpoint with non-finite parameters at step {0}")]
    NonFiniteParameters(usize),
    /// Averaging across devices or nodes failed, or another worker stopped the run.
    #[error("data parallelism: {0}")]
    Distributed(String),
    /// `what` failed because of `cause` (the message of an error from a lower layer, with the
    /// input it was about).
    #[error("{what}: {cause}")]
    Context { what: String, cause: String },
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// `cause` seen as a failure of `what` (e.g. "teacher.path = models/x").
    pub fn context(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self::Context { what: what.into(), cause: cause.to_string() }
    }
}

/// Results of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
