//! Errors of evaluation. Each names the file (and line) or the task, and where it helps, what to do.

use std::path::{Path, PathBuf};

use dijiang_model::ModelError;

/// The recipe that fetches the evaluation data into `datasets/evals`.
pub const DATA_RECIPE: &str = "just evaldata";

/// What went wrong evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("unknown task `{name}`; known tasks: {known}")]
    UnknownTask { name: String, known: String },
    #[error(
        "evaluation data not found: {path} is absent. Run `{DATA_RECIPE}` (it fetches the splits into datasets/evals), or pass --data DIR (e.g. ../shared/evaldata)"
    )]
    MissingData { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Row { path: PathBuf, line: usize, reason: String },
    #[error("{task}, document {doc}: {reason}")]
    Request { task: String, doc: usize, reason: String },
    #[error("{path}: {reason}")]
    Records { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl EvalError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn row(path: &Path, line: usize, reason: impl Into<String>) -> Self {
        Self::Row { path: path.to_path_buf(), line, reason: reason.into() }
    }
}
