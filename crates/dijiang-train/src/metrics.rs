//! Where the numbers go: TensorBoard event files (`runs/NAME/tb/`) and a JSONL file beside them
//! (`runs/NAME/metrics.jsonl`, one `{"step", "tag", "value"}` object per line).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::events::EventWriter;

/// One logged value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: usize,
    pub tag: String,
    pub value: f64,
}

pub const JSONL: &str = "metrics.jsonl";
pub const TENSORBOARD: &str = "tb";

pub struct Metrics {
    tensorboard: EventWriter,
    jsonl: File,
    jsonl_path: PathBuf,
}

impl Metrics {
    /// Opens the run's logs. Records after `resumed_step` (written by a process that died after its
    /// last checkpoint, and about to be recomputed) are dropped from the JSONL file.
    pub fn open(run: &Path, resumed_step: usize) -> Result<Self> {
        let path = run.join(JSONL);
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
            let kept: String = text
                .lines()
                .filter(|line| serde_json::from_str::<Record>(line).is_ok_and(|r| r.step <= resumed_step))
                .map(|line| format!("{line}\n"))
                .collect();
            crate::checkpoint::write_atomic(&path, kept.as_bytes())?;
        }
        let jsonl = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { tensorboard: EventWriter::create(&run.join(TENSORBOARD))?, jsonl, jsonl_path: path })
    }

    pub fn log<S: AsRef<str>>(&mut self, step: usize, values: &[(S, f64)]) -> Result<()> {
        let mut lines = String::new();
        for (tag, value) in values {
            let (tag, value) = (tag.as_ref(), *value);
            self.tensorboard.scalar(tag, value as f32, step)?;
            let record = Record { step, tag: tag.to_string(), value };
            lines.push_str(&serde_json::to_string(&record).expect("a record serialises"));
            lines.push('\n');
        }
        dijiang_data::fault::check("metrics", Some(step))
            .and_then(|()| self.jsonl.write_all(lines.as_bytes()))
            .map_err(|e| TrainError::io(&self.jsonl_path, e))
    }

    /// Pushes everything to disk (called at checkpoints and at the end).
    pub fn flush(&mut self) -> Result<()> {
        self.tensorboard.flush()?;
        self.jsonl.sync_data().map_err(|e| TrainError::io(&self.jsonl_path, e))
    }
}

/// Reads a run's JSONL metrics.
pub fn read(run: &Path) -> Result<Vec<Record>> {
    let path = run.join(JSONL);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| TrainError::Input(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}
