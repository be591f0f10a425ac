//! Training checkpoints: `runs/NAME/checkpoints/step-NNNNNNNN/` holding the student
//! (`model/`, our saved-model format, with the teacher's tokenizer beside it so that a checkpoint's
//! model is usable by `eval`, `generate` and `evaluate` as it is), the optimizer state
//! (`optimizer.safetensors`) and `trainer.json` (step, stage, tokens seen, data cursor, skipped updates, the resolved experiment).
//!
//! A checkpoint is written into a temporary sibling directory, every file fsynced, then renamed into
//! place and the parent fsynced: a process killed at any moment leaves either the complete new
//! checkpoint or none, and the previous ones untouched. `trainer.json` is written last, so a
//! directory without it is never taken for a checkpoint. A write that fails (a full disk) removes
//! the temporary directory and stops the run; the previous checkpoints stay as they were.
//!
//! `trainer.json` records the size and SHA-256 of every other file of the checkpoint. Resuming
//! verifies them and falls back to the previous checkpoint when one does not match (a flipped bit,
//! a truncated copy), naming the file. SHA-256 because the workspace already uses it for data shards
//! and this CPU hashes it in hardware (SHA-NI, ~1-2 GB/s: seconds for a small model, about a minute
//! for a 7B model's weights and optimizer state, next to the minutes of writing them).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use dijiang_data::dataset::Cursor;
use dijiang_model::Transformer;
use dijiang_model::import::native::{self, Manifest};
use dijiang_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};
use crate::experiment::Experiment;
use crate::optim::SavedState;

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
    /// The teacher's held-out loss, kept for evaluations made without the teacher
    /// (`eval.teacher = "start"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_loss: Option<f64>,
    /// In a saved checkpoint: what its other files must contain (empty in memory, and in
    /// checkpoints written before digests were recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDigest>,
}

/// The size and SHA-256 of one file of a checkpoint, by its path inside the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileDigest {
    fn of(root: &Path, path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| TrainError::io(path, e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        let mut bytes = 0;
        loop {
            let n = file.read(&mut buffer).map_err(|e| TrainError::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            bytes += n as u64;
        }
        let relative = path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
        Ok(Self { path: relative, bytes, sha256: format!("{:x}", hasher.finalize()) })
    }

    /// Every file under `root` (sorted by path), `trainer.json` excepted.
    fn of_dir(root: &Path) -> Result<Vec<Self>> {
        let mut files = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::io(&dir, e))? {
                let path = entry.map_err(|e| TrainError::io(&dir, e))?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path != root.join(TRAINER_STATE) {
                    files.push(Self::of(root, &path)?);
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Checks the file under `root` against this digest: its size first (a truncated copy is
    /// caught without reading it), then its content.
    fn verify(&self, root: &Path) -> Result<()> {
        // A recorded path must stay inside the checkpoint: a damaged `trainer.json` must not make
        // resume read (and name) some other file.
        let inside = Path::new(&self.path).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside || self.path.is_empty() {
            return Err(TrainError::Checkpoint {
                path: root.join(TRAINER_STATE),
                reason: format!("records the file {:?}, which is not a path inside the checkpoint", self.path),
            });
        }
        let path = root.join(&self.path);
        let fail = |reason: String| Err(TrainError::Checkpoint { path: path.clone(), reason });
        let bytes = std::fs::metadata(&path).map_err(|e| TrainError::io(&path, e))?.len();
        if bytes != self.bytes {
            return fail(format!("{bytes} bytes, but the checkpoint recorded {} (truncated or replaced)", self.bytes));
        }
        if Self::of(root, &path)?.sha256 != self.sha256 {
            return fail("its content differs from the SHA-256 the checkpoint recorded (damaged)".into());
        }
        Ok(())
    }
}

impl TrainerState {
    /// The state of a fresh run.
    pub fn start(experiment: Experiment) -> Self {
        Self {
            step: 0,
            tokens_seen: 0,
            cursor: Cursor::default(),
            skipped: 0,
            train_seconds: 0.0,
            experiment,
            teacher_loss: None,
            files: Vec::new(),
        }
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

/// The tokenizer saved beside a checkpoint's model, and the model file it was read from (a
/// llama2.c tokenizer is copied from beside that file).
pub type TokenizerOf<'a> = (&'a Tokenizer, &'a Path);

/// Saves a checkpoint of `state` (with `tokenizer` beside its model, when there is one) and returns
/// its directory; keeps the newest `keep`.
pub fn save<B: Backend>(
    run: &Path,
    state: &TrainerState,
    model: (&Transformer<B>, &Manifest, Option<TokenizerOf>),
    optimizer: &SavedState,
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
    if let Err(e) = write_files(&tmp, state, model, optimizer) {
        // Free the space and leave nothing half-written; the previous checkpoints are untouched.
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }
    if dir.exists() {
        // A checkpoint of the same step from an earlier attempt: replace it.
        io(std::fs::remove_dir_all(&dir), &dir)?;
    }
    io(std::fs::rename(&tmp, &dir), &dir)?;
    fsync(&parent)?;
    prune(&parent, keep)?;
    Ok(dir)
}

/// The checkpoint's files in `dir`, `trainer.json` (with the others' digests) last.
fn write_files<B: Backend>(
    dir: &Path,
    state: &TrainerState,
    (model, manifest, tokenizer): (&Transformer<B>, &Manifest, Option<TokenizerOf>),
    optimizer: &SavedState,
) -> Result<()> {
    native::save(model, manifest, &dir.join(MODEL))?;
    if let Some((tokenizer, source)) = tokenizer {
        tokenizer.save_beside(&dir.join(MODEL), source)?;
    }
    optimizer.save(&dir.join(OPTIMIZER))?;
    fsync(&dir.join(OPTIMIZER))?;
    let stamped = TrainerState { files: FileDigest::of_dir(dir)?, ..state.clone() };
    let json = serde_json::to_vec_pretty(&stamped).expect("trainer state serialises");
    let path = dir.join(TRAINER_STATE);
    io(dijiang_data::fault::check("checkpoint", Some(state.step)).and_then(|()| std::fs::write(&path, json)), &path)?;
    fsync(&path)?;
    fsync(dir)
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

/// Reads a checkpoint's trainer state, checking the other files are there and match their
/// recorded digests.
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
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: format!("not a trainer state: {e}") })?;
    if state.files.is_empty() {
        tracing::warn!("{}: no file digests recorded (an older checkpoint): not verified", dir.display());
    }
    for file in &state.files {
        file.verify(dir)?;
    }
    Ok(TrainerState { files: Vec::new(), ..state })
}

/// The newest complete and intact checkpoint of the run, skipping (and naming) the others.
pub fn latest(run: &Path) -> Option<Found> {
    for (_, dir) in step_dirs(&checkpoints_dir(run)) {
        match read(&dir) {
            Ok(state) => return Some(Found { dir, state }),
            Err(e) => tracing::warn!("skipping checkpoint {}: {e}", dir.display()),
        }
    }
    None
}

/// Every checkpoint of the run, newest first, with what [`read`] says of it.
pub fn verify_run(run: &Path) -> Vec<(PathBuf, Result<TrainerState>)> {
    step_dirs(&checkpoints_dir(run)).into_iter().map(|(_, dir)| (dir.clone(), read(&dir))).collect()
}
