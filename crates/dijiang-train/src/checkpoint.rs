//! Training checkpoints: `runs/NAME/checkpoints/step-NNNNNNNN/` holding the student
//! (`model/`, our saved-model format), the optimizer state (`optimizer.safetensors`) and
//! `trainer.json` (step, stage, tokens seen, data cursor, skipped updates, the resolved experiment).
//!
//! A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
//! place and the parent fsynced: a process killed at any moment leaves either the complete new
//! checkpoint or none, and the previous ones untouched. `trainer.json` is written last, so a
//! directory without it is never taken for a checkpoint.

use std::fs::File;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use dijiang_data::dataset::Cursor;
use dijiang_model::Transformer;
use dijiang_model::import::native::{self, Manifest};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::experiment::Experiment;
use crate::optim::AdamW;

pub const TRAINER_STATE: &str = "trainer.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const MODEL: &str = "model";

/// Where training stands: everything besides the model and optimizer needed to continue exactly.
///
/// The run's only randomness is the data order, a pure function of the experiment's seed and
/// `cursor` (no dropout, the new parameters are seeded): this is the whole RNG state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps taken (over all stages).
    pub step: usize,
    /// Tokens consumed by training so far.
    pub tokens_seen: u64,
    /// Position in the training data order.
    pub cursor: Cursor,
    /// Updates skipped for a non-finite loss or gradient.
    pub skipped: usize,
    /// Seconds spent training so far (for throughput across restarts).
    pub train_seconds: f64,
    /// The experiment the run was started with (after overrides).
    pub experiment: Experiment,
}

impl TrainerState {
    /// The state of a fresh run.
    pub fn start(experiment: Experiment) -> Self {
        Self { step: 0, tokens_seen: 0, cursor: Cursor::default(), skipped: 0, train_seconds: 0.0, experiment }
    }

    /// After a step of `tokens` tokens that took `seconds` and left the data order at `cursor`.
    pub fn advance(&mut self, applied: bool, tokens: u64, seconds: f64, cursor: Cursor) {
        self.step += 1;
        self.tokens_seen += tokens;
        self.train_seconds += seconds;
        self.cursor = cursor;
        if !applied {
            self.skipped += 1;
        }
    }
}

/// A checkpoint found on disk.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub state: TrainerState,
}

fn io<T>(result: std::io::Result<T>, path: &Path) -> Result<T> {
    result.map_err(|e| TrainError::io(path, e))
}

fn fsync(path: &Path) -> Result<()> {
    io(File::open(path).and_then(|f| f.sync_all()), path)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    io(std::fs::create_dir_all(parent), parent)?;
    let name = path
        .file_name()
        .ok_or_else(|| TrainError::Input(format!("{}: not a file name", path.display())))?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    io(std::fs::write(&tmp, bytes), &tmp)?;
    fsync(&tmp)?;
    io(std::fs::rename(&tmp, path), path)?;
    fsync(parent)
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Test hook: `DIJIANG_FAULT=abort-in-checkpoint:STEP` kills the process (abort: no unwinding, no
/// cleanup, as SIGKILL would) half-way through writing the checkpoint of STEP.
fn fault_injected(step: usize) -> bool {
    std::env::var("DIJIANG_FAULT").is_ok_and(|f| f == format!("abort-in-checkpoint:{step}"))
}

/// Saves a checkpoint of `state` and returns its directory; keeps the newest `keep`.
pub fn save<B: Backend>(
    run: &Path,
    state: &TrainerState,
    model: &Transformer<B>,
    manifest: &Manifest,
    optimizer: &AdamW<B>,
    keep: usize,
) -> Result<PathBuf> {
    let parent = checkpoints_dir(run);
    io(std::fs::create_dir_all(&parent), &parent)?;
    let name = step_dir_name(state.step);
    let dir = parent.join(&name);
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        io(std::fs::remove_dir_all(&tmp), &tmp)?;
    }
    io(std::fs::create_dir_all(&tmp), &tmp)?;
    native::save(model, manifest, &tmp.join(MODEL))?;
    optimizer.save(&tmp.join(OPTIMIZER))?;
    fsync(&tmp.join(OPTIMIZER))?;
    if fault_injected(state.step) {
        eprintln!("DIJIANG_FAULT: aborting while writing the checkpoint of step {}", state.step);
        std::process::abort();
    }
    let json = serde_json::to_vec_pretty(state).expect("trainer state serialises");
    io(std::fs::write(tmp.join(TRAINER_STATE), json), &tmp)?;
    fsync(&tmp.join(TRAINER_STATE))?;
    fsync(&tmp)?;
    if dir.exists() {
        // A checkpoint of the same step from an earlier attempt: replace it.
        io(std::fs::remove_dir_all(&dir), &dir)?;
    }
    io(std::fs::rename(&tmp, &dir), &dir)?;
    fsync(&parent)?;
    prune(&parent, keep)?;
    Ok(dir)
}

/// Step directories under `parent`, newest first.
fn step_dirs(parent: &Path) -> Vec<(usize, PathBuf)> {
    let mut dirs: Vec<(usize, PathBuf)> = std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs
}

fn prune(parent: &Path, keep: usize) -> Result<()> {
    for (_, dir) in step_dirs(parent).into_iter().skip(keep) {
        io(std::fs::remove_dir_all(&dir), &dir)?;
    }
    Ok(())
}

/// Removes the temporary directories of checkpoints that were being written when a process died.
pub fn remove_partial(run: &Path) -> Result<Vec<PathBuf>> {
    let parent = checkpoints_dir(run);
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            io(std::fs::remove_dir_all(entry.path()), &entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Reads a checkpoint's trainer state, checking the other files are there.
pub fn read(dir: &Path) -> Result<TrainerState> {
    for needed in [MODEL, OPTIMIZER, TRAINER_STATE] {
        if !dir.join(needed).exists() {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!("incomplete checkpoint, {needed} is missing"),
            });
        }
    }
    let path = dir.join(TRAINER_STATE);
    let text = io(std::fs::read_to_string(&path), &path)?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: format!("not a trainer state: {e}") })
}

/// The newest readable checkpoint of the run, skipping (and reporting) unreadable ones.
pub fn latest(run: &Path) -> Option<Found> {
    for (_, dir) in step_dirs(&checkpoints_dir(run)) {
        match read(&dir) {
            Ok(state) => return Some(Found { dir, state }),
            Err(e) => tracing::warn!("skipping checkpoint: {e}"),
        }
    }
    None
}
