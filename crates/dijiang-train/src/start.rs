//! How a run starts: its inputs (the frozen teacher and the data, checked by the plan first), its
//! directory (a previous run moved aside unless resuming, half-written checkpoints removed), and
//! its student: the newest checkpoint's (exact resume) or the converted teacher (a fresh start).
//! Resume is not init: the two paths share nothing but the architecture check.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::{Split, TokenStream, Windows};
use dijiang_model::convert::convert;
use dijiang_model::import::native::Manifest;
use dijiang_model::import::{Checkpoint, load};
use dijiang_model::{ModelConfig, Transformer};

use crate::checkpoint::{self, Found, TrainerState, write_atomic};
use crate::distributed::Reduction;
use crate::error::{Result, TrainError};
use crate::experiment::Experiment;
use crate::plan::Plan;
use crate::trainable::teacher_is_view;

/// The teacher as a run gets it.
// One value per run, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Teacher<B: Backend> {
    /// Its weights, loaded: some stage trains the base weights, so the teacher must stay apart.
    Loaded(Transformer<B>),
    /// Only its architecture: no stage trains the base weights, so the teacher will be a view of
    /// the student's (converted from the same checkpoint) and its weights are never loaded twice.
    View(ModelConfig),
}

impl<B: Backend> Teacher<B> {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Teacher::Loaded(model) => model.config(),
            Teacher::View(config) => config,
        }
    }
}

/// The frozen teacher and the data of a run.
pub struct Inputs<B: Backend> {
    pub teacher: Teacher<B>,
    pub train: Windows,
    pub validation: Windows,
}

impl<B: Backend> Inputs<B> {
    /// The experiment's teacher and prepared data, after the plan's checks (missing inputs are
    /// errors naming the command that makes them).
    pub fn load(experiment: &Experiment, device: &B::Device) -> Result<Self> {
        let plan = Plan::check(experiment)?;
        if !plan.errors.is_empty() {
            return Err(TrainError::Input(plan.errors.join("\n")));
        }
        if let Some(m) = plan.missing.first() {
            return Err(TrainError::Input(format!("{} is missing: run `{}` first", m.what, m.command)));
        }
        let path = &experiment.teacher.path;
        let teacher = if teacher_is_view(experiment) {
            Teacher::View(plan.teacher.expect("checked by the plan: the teacher is there"))
        } else {
            let loaded = load::<B>(path, device)
                .map_err(|e| TrainError::context(format!("loading the teacher {}", path.display()), e))?;
            Teacher::Loaded(loaded.model)
        };
        let d = &experiment.data;
        Ok(Self {
            teacher,
            train: Windows::open(&d.path, Split::Train, d.block_size)?,
            validation: Windows::open(&d.path, Split::Validation, d.block_size)?,
        })
    }

    /// A teacher and data held in memory (`train` and `validation` token streams).
    pub fn in_memory(teacher: Transformer<B>, train: Vec<u32>, validation: Vec<u32>, block: usize) -> Self {
        let windows = |tokens| Windows::new(TokenStream::from_tokens(tokens).into(), block);
        Self { teacher: Teacher::Loaded(teacher), train: windows(train), validation: windows(validation) }
    }
}

/// What every worker of a run reads.
pub struct RunContext<'a> {
    pub experiment: &'a Experiment,
    /// `runs/NAME`.
    pub dir: &'a Path,
    /// Set (by Ctrl-C) to checkpoint and stop after the current step.
    pub stop: &'a AtomicBool,
    /// The student's manifest, written with every checkpoint and the exported model.
    pub manifest: Manifest,
    pub train: Windows,
    pub validation: Windows,
    /// The step of the checkpoint this run resumed from.
    pub resumed_from: Option<usize>,
    pub reduction: Option<Reduction>,
}

/// The student, its optimizer's saved state and the trainer's position, before the first step of
/// this process.
#[derive(Debug)]
pub struct Start<B: AutodiffBackend> {
    pub student: Transformer<B>,
    /// The checkpoint's optimizer state, which each worker reads for itself (a sharded worker only
    /// its own parameters' moments); `None`: a fresh optimizer.
    pub optimizer: Option<PathBuf>,
    pub state: TrainerState,
    pub resumed_from: Option<usize>,
}

/// The one trainer of a run directory: an advisory lock (`flock`) on `.NAME.lock` beside it, held
/// for the whole run. The kernel releases it when the process ends however it ends, so a lock
/// left by a killed trainer never blocks; the file holds the holder's PID for the message.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
        let path = parent.join(format!(".{name}.lock"));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).ok();
                return Err(TrainError::Input(format!(
                    "{} is in use by another trainer (PID {}): wait for it to finish or stop it, or train into \
                     another run directory (run=NAME)",
                    dir.display(),
                    holder.trim()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0).and_then(|()| file.write_all(pid.as_bytes())).map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { _file: file })
    }
}

/// Makes the run directory ready (on node 0, which owns it) and returns the checkpoint to resume
/// from, if any.
pub fn prepare_dir(dir: &Path, experiment: &Experiment, resume: bool) -> Result<Option<Found>> {
    if experiment.distributed.node_rank == 0 {
        if !resume && dir.exists() {
            let aside = move_aside(dir)?;
            tracing::info!("resume=false: the previous run is now {}", aside.display());
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        for partial in checkpoint::remove_partial(dir)? {
            tracing::warn!("removed the partial checkpoint {} (a process died while writing it)", partial.display());
        }
    }
    let found = if resume { checkpoint::latest(dir) } else { None };
    if experiment.distributed.node_rank == 0 {
        write_atomic(&dir.join("experiment.toml"), toml::to_string(experiment).expect("serialises").as_bytes())?;
    }
    Ok(found)
}

/// Moves a previous run out of the way (never deletes it) and returns where it went.
fn move_aside(run: &Path) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = run.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    let aside = run.with_file_name(format!("{name}.old-{stamp}"));
    std::fs::rename(run, &aside).map_err(|e| TrainError::io(run, e))?;
    Ok(aside)
}

impl<B: AutodiffBackend> Start<B> {
    /// Resumes from `found`, or converts the experiment's teacher into a fresh student.
    pub fn resume_or_convert(
        found: Option<&Found>,
        experiment: &Experiment,
        student_config: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        match found {
            Some(found) => Self::resume(found, experiment, student_config, device),
            None => Ok(Self {
                student: {
                    let student = convert::<B>(&experiment.teacher.path, experiment.student.clone(), device)?.model;
                    match &experiment.lora {
                        Some(lora) => student.with_lora(lora, experiment.seed),
                        None => student,
                    }
                },
                optimizer: None,
                state: TrainerState::start(experiment.clone()),
                resumed_from: None,
            }),
        }
    }

    fn resume(
        found: &Found,
        experiment: &Experiment,
        student_config: &ModelConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let saved = Checkpoint::open(&found.dir.join(checkpoint::MODEL))?;
        if saved.config != *student_config {
            return Err(TrainError::Checkpoint {
                path: found.dir.clone(),
                reason: format!(
                    "made for another architecture than this experiment's student:\n  saved:    {:?}\n  \
                     expected: {:?}\nstart over with resume=false (the old run is kept aside) or use another \
                     experiment name",
                    saved.config, student_config
                ),
            });
        }
        if found.state.experiment != *experiment {
            tracing::warn!("the experiment differs from the one this run started with; continuing with the new one");
        }
        let student = saved.build::<B>(student_config, &|_| false, 0, device)?.model;
        let optimizer = Some(found.dir.join(checkpoint::OPTIMIZER));
        tracing::info!("resuming from {} (step {})", found.dir.display(), found.state.step);
        let state = TrainerState { experiment: experiment.clone(), ..found.state.clone() };
        Ok(Self { student, optimizer, state, resumed_from: Some(found.state.step) })
    }
}
