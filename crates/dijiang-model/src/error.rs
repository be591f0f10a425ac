//! Errors of model construction and weight import. Each names the file (or config) and the tensor,
//! and where it helps, what to do about it.

use std::path::PathBuf;

/// What went wrong building or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid {format} file: {reason}")]
    Format { path: PathBuf, format: &'static str, reason: String },
    #[error(
        "{path}: tensor `{name}` has shape {stored:?} in the file, {got:?} in the model's layout; the model expects {want:?}"
    )]
    Shape { path: PathBuf, name: String, stored: Vec<usize>, got: Vec<usize>, want: Vec<usize> },
    #[error("{path}: tensor `{name}` has data type {dtype}, which is not supported (use f32, f16 or bf16)")]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: {count} tensor(s) the model needs are missing: {names}")]
    Missing { path: PathBuf, count: usize, names: String },
    #[error("{path}: {count} tensor(s) are not used by the model (wrong architecture or config?): {names}")]
    Unknown { path: PathBuf, count: usize, names: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model config: {0}")]
    Config(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid { path: path.into(), message: message.into() }
    }
}

/// At most the first 20 names, comma-separated, for error messages.
pub(crate) fn name_list(names: &[String]) -> String {
    let mut shown = names.iter().take(20).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 20 {
        shown.push_str(&format!(", ... ({} more)", names.len() - 20));
    }
    shown
}
