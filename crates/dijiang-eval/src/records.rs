//! A task's per-document log-likelihoods on disk, so that a long evaluation can stop and resume:
//! JSON Lines, a header (what produced them) then one line per finished document, appended and
//! flushed as documents finish. A line cut short by an interruption is dropped on reopening.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::encode::BosPolicy;
use crate::error::EvalError;
use crate::loglikelihood::LogLikelihood;
use crate::task::Task;

/// Version of the records' format.
const FORMAT: u32 = 1;

/// What the records were computed with; resuming requires the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub task: Task,
    /// The model as the caller names it (the CLI: its path).
    pub model: String,
    /// The tokenizer's content fingerprint.
    pub tokenizer: String,
    pub bos: BosPolicy,
}

impl Header {
    pub fn new(task: Task, model: &str, tokenizer: &str, bos: BosPolicy) -> Self {
        Self { format: FORMAT, task, model: model.to_string(), tokenizer: tokenizer.to_string(), bos }
    }
}

/// A finished document: its requests' scores and its share of the wall time (that of the batch
/// that finished it, split evenly among the documents it finished), so that a resumed task still
/// reports its whole wall time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub scores: Vec<LogLikelihood>,
    pub seconds: f64,
}

/// One line of the records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    doc: usize,
    #[serde(flatten)]
    scored: Scored,
}

/// The records file of one task, open for appending.
#[derive(Debug)]
pub struct Records {
    path: PathBuf,
    file: File,
    /// Documents already scored, by index.
    pub done: BTreeMap<usize, Scored>,
}

impl Records {
    /// Opens (or creates) the records at `path`, refusing records made with another header.
    pub fn open(path: &Path, header: &Header) -> Result<Self, EvalError> {
        let io = |e| EvalError::io(path, e);
        let mut done = BTreeMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            // An interrupted append leaves a line without its newline: drop it.
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            if complete < text.len() {
                OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(complete as u64)).map_err(io)?;
            }
            done = Self::parse(path, &text[..complete], header)?;
        }
        if done.is_empty() {
            let mut file = File::create(path).map_err(io)?;
            writeln!(file, "{}", serde_json::to_string(header).expect("header serialises")).map_err(io)?;
        }
        let file = OpenOptions::new().append(true).open(path).map_err(io)?;
        Ok(Self { path: path.to_path_buf(), file, done })
    }

    fn parse(path: &Path, text: &str, header: &Header) -> Result<BTreeMap<usize, Scored>, EvalError> {
        let mut lines = text.lines().enumerate();
        let Some((_, first)) = lines.next() else { return Ok(BTreeMap::new()) };
        let found: Header = serde_json::from_str(first).map_err(|e| EvalError::row(path, 1, e.to_string()))?;
        if &found != header {
            return Err(EvalError::Records {
                path: path.to_path_buf(),
                reason: format!(
                    "these records were computed with {found:?}, not {header:?}; remove the file or choose another output directory"
                ),
            });
        }
        let mut done = BTreeMap::new();
        for (i, line) in lines {
            let line: Line = serde_json::from_str(line).map_err(|e| EvalError::row(path, i + 1, e.to_string()))?;
            done.insert(line.doc, line.scored);
        }
        Ok(done)
    }

    /// Appends finished documents and flushes them to disk.
    pub fn append(&mut self, docs: Vec<(usize, Scored)>) -> Result<(), EvalError> {
        let mut text = String::new();
        for (doc, scored) in docs {
            let line = Line { doc, scored };
            text.push_str(&serde_json::to_string(&line).expect("records serialise"));
            text.push('\n');
            self.done.insert(line.doc, line.scored);
        }
        // One write per batch, so that an interruption cuts at most the last line.
        self.file.write_all(text.as_bytes()).and_then(|_| self.file.flush()).map_err(|e| EvalError::io(&self.path, e))
    }
}
