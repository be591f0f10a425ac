//! The training loop (Burn's epoch-based `Learner` does not fit token budgets or exact resume):
//! restore, then per step the stage's trainable set and learning rate, the next batches, one
//! optimizer [`step`], and the writer's logs, evaluations and checkpoints; one worker per device.
//!
//! The rooms: [`crate::start`] (inputs, run directory, resume or convert), [`crate::batches`],
//! [`crate::step`] (with [`crate::objective`] and [`crate::optim`]), [`crate::distributed`],
//! [`crate::recorder`] (with [`crate::cadence`], [`crate::evaluation`], [`crate::checkpoint`],
//! [`crate::metrics`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use dijiang_model::Transformer;
use dijiang_model::import::native::Manifest;

use crate::batches::Batches;
use crate::cadence::due;
use crate::checkpoint::TrainerState;
use crate::distributed::{Rank, Reducer, Reduction, on_each_device};
use crate::error::{Result, TrainError};
use crate::experiment::{Experiment, StorageDtype};
use crate::on_policy::Rollouts;
use crate::optim::AdamW;
use crate::params::{set_storage, set_trainable};
use crate::recorder::{Models, Outcome, Recorder};
use crate::schedule::learning_rate;
use crate::shard::{OptimizerLayout, Shards};
use crate::start::{Inputs, RunContext, RunLock, Start, Teacher, prepare_dir};
use crate::step::{Signals, StepInputs, step};
use crate::trainable::{TeacherHeld, frozen_for_run, teacher_held, trains};

/// How to run an experiment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub experiment: Experiment,
    /// `runs/NAME`.
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir` (otherwise a previous run there is moved
    /// aside, never deleted).
    pub resume: bool,
    /// Set (by Ctrl-C) to checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
}

/// Runs (or resumes) an experiment to its end, or until `stop` is set, on `devices` (this node's:
/// one worker each, gradients averaged across them and across nodes).
pub fn train<B: AutodiffBackend>(options: RunOptions, devices: &[B::Device]) -> Result<Outcome> {
    let inputs = Inputs::load(&options.experiment, &devices[0])?;
    train_with::<B>(options, inputs, devices)
}

/// [`train`] with its teacher and data already in hand.
pub fn train_with<B: AutodiffBackend>(
    options: RunOptions,
    inputs: Inputs<B::InnerBackend>,
    devices: &[B::Device],
) -> Result<Outcome> {
    let experiment = &options.experiment;
    let dist = &experiment.distributed;
    if devices.len() != dist.local_devices() {
        let message = format!("{} devices given for distributed.devices = {:?}", devices.len(), dist.devices);
        return Err(TrainError::Input(message));
    }
    let student_config = experiment.student_config(inputs.teacher.config());
    // Node 0 owns the run directory: one trainer at a time.
    let _lock = (dist.node_rank == 0).then(|| RunLock::acquire(&options.run_dir)).transpose()?;
    let found = prepare_dir(&options.run_dir, experiment, options.resume)?;
    let mut start = Start::<B>::resume_or_convert(found.as_ref(), experiment, &student_config, &devices[0])?;
    start.student = store_frozen_weights(start.student, experiment, &devices[0])?;
    let manifest =
        Manifest { source: Some(experiment.teacher.path.display().to_string()), ..Manifest::new(student_config) };
    let run = RunContext {
        experiment,
        dir: &options.run_dir,
        stop: &options.stop,
        manifest,
        train: inputs.train,
        validation: inputs.validation,
        resumed_from: start.resumed_from,
        reduction: Reduction::of(dist)?,
    };
    if run.reduction.is_some() {
        let (here, world, node) = (devices.len(), dist.world(), dist.node_rank);
        tracing::info!("data parallel: {here} device(s) here, {world} in all (node {node} of {})", dist.nodes);
    }
    // Node 0 hosts burn-collective's orchestrator for as long as its workers train.
    let orchestrator = run.reduction.as_ref().map(Reduction::host).transpose()?.flatten();
    let teacher = run_teacher(inputs.teacher, &start, experiment);
    let first = dist.node_rank as usize * devices.len();
    let replicas = Replica::for_devices(start, teacher, devices, experiment, first)?;
    let outcome = on_each_device(devices, replicas, first, dist.world(), |rank, device, replica| {
        worker::<B>(&run, rank, device, replica)
    });
    if orchestrator.is_some() {
        run.reduction.as_ref().expect("an orchestrator belongs to a reduction").await_departures();
    }
    outcome
}

/// The student with the weights no stage trains stored in `memory.frozen_dtype` (before the
/// teacher view is taken: it shares these tensors).
fn store_frozen_weights<B: AutodiffBackend>(
    student: Transformer<B>,
    experiment: &Experiment,
    device: &B::Device,
) -> Result<Transformer<B>> {
    let frozen = experiment.memory.frozen_dtype;
    if frozen == StorageDtype::F32 {
        return Ok(student);
    }
    if !B::supports_dtype(device, frozen.dtype()) {
        return Err(TrainError::Input(format!(
            "memory.frozen_dtype = {frozen:?}: this backend has no {frozen:?} tensors (NdArray has f32 only); use \
             backend=flex (the default CPU build), wgpu or cuda, or frozen_dtype = \"f32\""
        )));
    }
    let (student, rounded) = set_storage(student, frozen.dtype(), &|name| frozen_for_run(experiment, name));
    if let Some(first) = rounded.first() {
        tracing::warn!(
            "memory.frozen_dtype = {frozen:?} rounded {} frozen weights ({first}, ...): the teacher's checkpoint is \
             not in that precision, so the student no longer starts exactly from it",
            rounded.len()
        );
    }
    Ok(student)
}

/// The teacher the run holds: the loaded one, a view of the student's weights when no stage
/// trains them, or none when it is dropped after step 0 and the run resumes.
fn run_teacher<B: AutodiffBackend>(
    inputs: Teacher<B::InnerBackend>,
    start: &Start<B>,
    experiment: &Experiment,
) -> Option<Transformer<B::InnerBackend>> {
    // No stage trains the base weights: the teacher is the student's own weights run as softmax
    // (bit for bit the teacher's values: the student was converted from them), and a teacher
    // handed in loaded goes.
    let held = teacher_held(experiment);
    let teacher = match inputs {
        Teacher::Loaded(teacher) if held != TeacherHeld::View => teacher,
        _ => {
            tracing::info!("teacher: a view of the student's weights (no stage trains them), no second copy");
            start.student.valid().teacher_view()
        }
    };
    // Dropped after the step-0 evaluation (no stage reads it), so a resumed run needs none.
    match held {
        TeacherHeld::AtStart if start.resumed_from.is_some() => None,
        TeacherHeld::AtStart => {
            tracing::info!("teacher: evaluated at step 0, then dropped (no stage reads it, eval.teacher = \"start\")");
            Some(teacher)
        }
        TeacherHeld::View | TeacherHeld::Copy => Some(teacher),
    }
}

/// A worker's model, teacher (if it needs one), optimizer and position.
struct Replica<B: AutodiffBackend> {
    student: Transformer<B>,
    teacher: Option<Transformer<B::InnerBackend>>,
    optimizer: AdamW<B::InnerBackend>,
    state: TrainerState,
}

impl<B: AutodiffBackend> Replica<B> {
    /// One replica per device: identical values (and ParamIds) on every device. A single device
    /// takes the models themselves, so that no second copy of the weights stays alive. Each
    /// worker reads the saved optimizer state for itself: all of it, or its own shard's. A teacher
    /// needed only for the step-0 evaluation goes to the writer alone.
    fn for_devices(
        start: Start<B>,
        teacher: Option<Transformer<B::InnerBackend>>,
        devices: &[B::Device],
        experiment: &Experiment,
        first_rank: usize,
    ) -> Result<Vec<Self>> {
        let Start { student, optimizer, state, .. } = start;
        let shards = (experiment.distributed.optimizer == OptimizerLayout::Sharded).then(|| {
            let (stage, _) = experiment.stage_at(state.step.min(experiment.total_steps() - 1));
            Shards::of_stage(experiment, student.config(), stage)
        });
        let optimizer_on = |device: &B::Device, rank: usize| match &optimizer {
            None => Ok(AdamW::new(experiment.optimizer.clone())),
            Some(path) => {
                let keep = |name: &str| shards.as_ref().is_none_or(|s| s.updates(rank, name));
                AdamW::load(experiment.optimizer.clone(), path, device, &keep)
            }
        };
        let needs_teacher = |rank: usize| teacher_held(experiment) != TeacherHeld::AtStart || rank == 0;
        if devices.len() == 1 {
            let optimizer = optimizer_on(&devices[0], first_rank)?;
            let teacher = teacher.filter(|_| needs_teacher(first_rank));
            return Ok(vec![Self { student, teacher, optimizer, state }]);
        }
        let fork = |(i, device): (usize, &B::Device)| -> Result<Self> {
            let optimizer = optimizer_on(device, first_rank + i)?;
            let teacher = teacher.as_ref().filter(|_| needs_teacher(first_rank + i)).map(|t| t.clone().fork(device));
            Ok(Self { student: student.clone().fork(device), teacher, optimizer, state: state.clone() })
        };
        devices.iter().enumerate().map(fork).collect()
    }
}

/// One device's run: joins the reduction, trains, and leaves it whatever happened.
fn worker<B: AutodiffBackend>(
    run: &RunContext,
    rank: Rank,
    device: &B::Device,
    replica: Replica<B>,
) -> Result<Outcome> {
    let mut reducer = Reducer::join(run.reduction.as_ref(), rank, device)?;
    let outcome = train_loop(run, rank, device, replica, &mut reducer);
    let left = reducer.leave();
    let outcome = outcome?;
    left.map(|()| outcome)
}

/// The step loop. Only the writer (global rank 0) evaluates, logs and checkpoints; every worker
/// takes the same decisions from all-reduced numbers, so all stay in lockstep. A writer failure
/// is announced to the others by the next step's `abort` signal.
fn train_loop<B: AutodiffBackend>(
    run: &RunContext,
    rank: Rank,
    device: &B::Device,
    replica: Replica<B>,
    reducer: &mut Reducer<B::InnerBackend>,
) -> Result<Outcome> {
    let Replica { mut student, mut teacher, mut optimizer, mut state } = replica;
    let e = run.experiment;
    let mut batches = Batches::new(&run.train, &e.data, e.seed, rank, state.step, state.cursor);
    let rollouts = Rollouts { seed: e.seed, rank: rank.global };
    let mut recorder = rank.is_writer().then(|| Recorder::open(run, &state)).transpose()?;
    if let Some(r) = recorder.as_mut().filter(|_| run.resumed_from.is_none()) {
        r.evaluate(0, &student, teacher.as_ref(), device)?;
    }
    teacher = teacher.filter(|_| teacher_held(e) != TeacherHeld::AtStart);
    let (mut failure, mut trainable_stage, mut interrupted) = (None, None, false);
    while state.step < e.total_steps() {
        let (index, stage_step) = e.stage_at(state.step);
        let stage = &e.stages[index];
        if trainable_stage.replace(index) != Some(index) {
            student = set_trainable(student, &|name| trains(stage.trainable, &e.student, name));
            if e.distributed.optimizer == OptimizerLayout::Sharded {
                reducer.shard(Some(Shards::of_stage(e, student.config(), index)));
            }
        }
        if stage_step == 0 {
            // Each stage optimises its own objective over its own parameters: fresh moments.
            optimizer = AdamW::new(e.optimizer.clone());
        }
        let started = Instant::now();
        let data = batches.next_step(state.step, device);
        let inputs = StepInputs {
            objective: &stage.loss,
            teacher: teacher.as_ref(),
            micro_batches: rollouts.prepare(stage, &student, data, (state.step, stage_step)),
            lr: learning_rate(stage, stage_step),
            lr_scale: stage.lr_scale,
            recompute: e.memory.recompute,
            clip: e.optimizer.clip_grad_norm,
            signals: Signals { stop: run.stop.load(Ordering::SeqCst), abort: failure.is_some() },
        };
        let (next, record) = step(student, &mut optimizer, inputs, reducer)?;
        student = next;
        if record.signals.abort {
            break;
        }
        let seconds = started.elapsed().as_secs_f64();
        state.advance(record.applied, e.data.tokens_at(state.step), seconds, batches.cursor());
        // Every worker takes part in gathering a sharded optimizer state for the checkpoint.
        let saved = match due(e, state.step, record.signals.stop).checkpoint {
            true => reducer.optimizer_state(&optimizer)?,
            false => None,
        };
        let models = Models { student: &student, teacher: teacher.as_ref(), optimizer: saved.as_ref() };
        if let Some(Err(err)) = recorder.as_mut().map(|r| r.after_step(&state, stage, &record, seconds, models, device))
        {
            if rank.world == 1 {
                return Err(err);
            }
            failure = Some(err);
            continue;
        }
        if state.skipped > e.optimizer.max_nonfinite {
            return Err(TrainError::NonFinite { skipped: state.skipped, limit: e.optimizer.max_nonfinite });
        }
        if record.signals.stop {
            interrupted = true;
            break;
        }
    }
    match (failure, recorder) {
        (Some(err), _) => Err(err),
        (None, Some(recorder)) => recorder.finish(&state, &student, interrupted),
        (None, None) if state.step < e.total_steps() && !interrupted => {
            Err(TrainError::Distributed("device 0 failed and stopped the run".into()))
        }
        (None, None) => Ok(Outcome { interrupted, ..Outcome::at(&state, run.resumed_from) }),
    }
}
