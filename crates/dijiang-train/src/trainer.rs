//! The step-based training loop (Burn's epoch-based `Learner` does not fit token budgets or exact
//! resume): teacher frozen on the inner backend, student on autodiff; per stage a trainable set,
//! a learning-rate schedule and a weighted sum of the LM, KL and attention-matching losses;
//! gradient accumulation, global-norm clipping, AdamW; evaluation, checkpoints, TensorBoard.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{self as collective, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use dijiang_data::dataset::{BatchOrder, LmBatch, LmBatcher, Split, Windows};
use dijiang_model::convert::{convert, is_kernel_param};
use dijiang_model::fidelity::measure;
use dijiang_model::import::native::{self, Manifest};
use dijiang_model::import::{Checkpoint, load};
use dijiang_model::tokenizer::Tokenizer;
use dijiang_model::{AttentionKernelConfig, DiJiangConfig, FeatureTraining, ModelConfig, Transformer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::checkpoint::{self, TrainerState, write_atomic};
use crate::experiment::{Experiment, LossWeights, Trainable};
use crate::losses::{cross_entropy, kl_divergence, mse, row_kl};
use crate::metrics::Metrics;
use crate::optim::AdamW;
use crate::params::set_trainable;
use crate::plan::Plan;
use crate::reducer::{Hub, Link};
use crate::schedule::learning_rate;

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

/// Held-out numbers of the student (and the teacher, for reference).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub perplexity: f64,
    pub teacher_loss: f64,
    pub teacher_perplexity: f64,
    /// KL(teacher || student) per token at temperature 1.
    pub kl: f64,
    /// Per layer: `||student - teacher|| / ||teacher||` of the attention output on the teacher's
    /// layer input.
    pub attention_error: Vec<f64>,
    /// Per layer: the mean total-variation distance between the teacher's softmax attention rows
    /// and the student's normalised rows (`dijiang fidelity`), on the first validation window.
    pub attention_tv: Vec<f64>,
    pub tokens: usize,
}

impl Evaluation {
    pub fn attention_error_mean(&self) -> f64 {
        self.attention_error.iter().sum::<f64>() / self.attention_error.len().max(1) as f64
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub step: usize,
    pub interrupted: bool,
    pub resumed_from: Option<usize>,
    /// Evaluations made by this process, with their steps (the first is the untrained student on
    /// a fresh run).
    pub evaluations: Vec<(usize, Evaluation)>,
    pub train_seconds: f64,
    pub tokens_seen: u64,
    /// The exported student (`runs/NAME/model`), when training finished.
    pub model: Option<PathBuf>,
}

/// Which stage `step` falls in, and the step within it.
fn stage_at(experiment: &Experiment, step: usize) -> (usize, usize) {
    let mut start = 0;
    for (i, stage) in experiment.stages.iter().enumerate() {
        if step < start + stage.steps {
            return (i, step - start);
        }
        start += stage.steps;
    }
    (experiment.stages.len() - 1, step - start)
}

/// Whether a stage trains the parameter `name`. The feature projection only with the `projection`
/// variant; the decays only when the experiment makes them learnable.
pub fn trains(trainable: Trainable, student: &DiJiangConfig, name: &str) -> bool {
    let frozen_proj = student.feature_training != FeatureTraining::Projection;
    if (name.ends_with(".kernel.proj") && frozen_proj)
        || (name.ends_with(".kernel.log_decay") && !student.learnable_decay)
    {
        return false;
    }
    match trainable {
        Trainable::Kernel => is_kernel_param(name),
        Trainable::All => true,
    }
}

/// The terms of one micro-batch's loss, as numbers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terms {
    pub lm: f64,
    pub kl: f64,
    pub attention: f64,
    pub attention_rows: f64,
    pub total: f64,
}

fn scalar<B: Backend>(x: &Tensor<B, 1>) -> f64 {
    x.clone().into_scalar().elem::<f64>()
}

/// The weighted loss of one micro-batch: what a training step differentiates.
pub fn loss<B: AutodiffBackend>(
    student: &Transformer<B>,
    teacher: &Transformer<B::InnerBackend>,
    batch: &LmBatch<B::InnerBackend>,
    weights: &LossWeights,
) -> (Tensor<B, 1>, Terms) {
    let mut terms = Terms::default();
    let layer_terms = weights.attention > 0.0 || weights.attention_rows > 0.0;
    let trace = (weights.kl > 0.0 || layer_terms).then(|| teacher.trace(batch.inputs.clone(), weights.kl > 0.0));
    let mut parts: Vec<Tensor<B, 1>> = Vec::new();
    if weights.lm > 0.0 || weights.kl > 0.0 {
        let logits = student.forward(Tensor::from_inner(batch.inputs.clone()));
        if weights.lm > 0.0 {
            let lm = cross_entropy(logits.clone(), Tensor::from_inner(batch.targets.clone()));
            terms.lm = scalar(&lm);
            parts.push(lm.mul_scalar(weights.lm));
        }
        if weights.kl > 0.0 {
            let teacher_logits = trace.as_ref().and_then(|t| t.logits.clone()).expect("traced with logits");
            let kl = kl_divergence(Tensor::from_inner(teacher_logits), logits, weights.temperature);
            terms.kl = scalar(&kl);
            parts.push(kl.mul_scalar(weights.kl));
        }
    }
    if weights.attention > 0.0 {
        let trace = trace.as_ref().expect("traced");
        let layers = trace.layer_inputs.len();
        let errors: Vec<Tensor<B, 1>> = (0..layers)
            .map(|i| {
                let out = student.layer_attention(i, Tensor::from_inner(trace.layer_inputs[i].clone()));
                mse(out, Tensor::from_inner(trace.attention_outputs[i].clone()))
            })
            .collect();
        let attention = Tensor::cat(errors, 0).mean();
        terms.attention = scalar(&attention);
        parts.push(attention.mul_scalar(weights.attention));
    }
    if weights.attention_rows > 0.0 {
        let trace = trace.as_ref().expect("traced");
        let layers = trace.layer_inputs.len();
        let divergences: Vec<Tensor<B, 1>> = (0..layers)
            .map(|i| {
                let x = trace.layer_inputs[i].clone();
                let p = teacher.layer_rows(i, x.clone());
                row_kl(Tensor::from_inner(p), student.layer_rows(i, Tensor::from_inner(x)))
            })
            .collect();
        let rows = Tensor::cat(divergences, 0).mean();
        terms.attention_rows = scalar(&rows);
        parts.push(rows.mul_scalar(weights.attention_rows));
    }
    let total = parts.into_iter().reduce(|a, b| a + b).expect("a stage has at least one loss term");
    terms.total = scalar(&total);
    (total, terms)
}

/// Held-out evaluation on the first `batches` micro-batches of the validation windows.
pub fn evaluate<B: Backend>(
    student: &Transformer<B>,
    teacher: &Transformer<B>,
    validation: &Windows,
    batches: usize,
    micro: usize,
    device: &B::Device,
) -> Evaluation {
    let n = validation.len().min(batches.max(1) * micro);
    let layers = teacher.layers.len();
    let (mut loss, mut teacher_loss, mut kl) = (0.0, 0.0, 0.0);
    let (mut err2, mut norm2) = (vec![0.0; layers], vec![0.0; layers]);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(micro) {
        let windows: Vec<Vec<u32>> = chunk.iter().map(|&i| validation.get(i).expect("in range")).collect();
        let batch: LmBatch<B> = LmBatcher.batch(windows, device);
        let w = chunk.len() as f64 / n as f64;
        let trace = teacher.trace(batch.inputs.clone(), true);
        let teacher_logits = trace.logits.expect("traced with logits");
        let logits = student.forward(batch.inputs.clone());
        loss += w * scalar(&cross_entropy(logits.clone(), batch.targets.clone()));
        teacher_loss += w * scalar(&cross_entropy(teacher_logits.clone(), batch.targets.clone()));
        kl += w * scalar(&kl_divergence(teacher_logits, logits, 1.0));
        for i in 0..layers {
            let out = student.layer_attention(i, trace.layer_inputs[i].clone());
            let target = trace.attention_outputs[i].clone();
            err2[i] += scalar(&(out - target.clone()).square().sum());
            norm2[i] += scalar(&target.square().sum());
        }
    }
    let first: LmBatch<B> = LmBatcher.batch(vec![validation.get(0).expect("a validation window")], device);
    let all: Vec<usize> = (0..layers).collect();
    let attention_tv = measure(teacher, student, first.inputs, &all).into_iter().map(|f| f.tv_mean).collect();
    Evaluation {
        attention_tv,
        loss,
        perplexity: loss.exp(),
        teacher_loss,
        teacher_perplexity: teacher_loss.exp(),
        kl,
        attention_error: err2.iter().zip(&norm2).map(|(e, t)| (e / t.max(f64::MIN_POSITIVE)).sqrt()).collect(),
        tokens: n * validation.block(),
    }
}

fn log_evaluation(metrics: &mut Metrics, step: usize, e: &Evaluation) -> Result<()> {
    let mut values = vec![
        ("eval/loss", e.loss),
        ("eval/perplexity", e.perplexity),
        ("eval/teacher_perplexity", e.teacher_perplexity),
        ("eval/kl", e.kl),
        ("eval/attention_error", e.attention_error_mean()),
        ("eval/attention_tv", e.attention_tv.iter().sum::<f64>() / e.attention_tv.len().max(1) as f64),
    ];
    let names: Vec<String> =
        (0..e.attention_error.len()).map(|i| format!("eval/attention_error/layer_{i:02}")).collect();
    values.extend(names.iter().map(String::as_str).zip(e.attention_error.iter().copied()));
    let tv_names: Vec<String> = (0..e.attention_tv.len()).map(|i| format!("eval/attention_tv/layer_{i:02}")).collect();
    values.extend(tv_names.iter().map(String::as_str).zip(e.attention_tv.iter().copied()));
    metrics.log(step, &values)
}

struct AllFinite(bool);

impl<B: Backend> ModuleVisitor<B> for AllFinite {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.0 {
            let v = param.val();
            self.0 = !(v.clone().is_nan().any().into_scalar().to_bool() || v.is_inf().any().into_scalar().to_bool());
        }
    }
}

fn all_finite<B: Backend, M: Module<B>>(module: &M) -> bool {
    let mut visitor = AllFinite(true);
    module.visit(&mut visitor);
    visitor.0
}

/// Moves a previous run out of the way (never deletes it) and returns where it went.
fn move_aside(run: &Path) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = run.file_name().context("run directory name")?.to_string_lossy().to_string();
    let aside = run.with_file_name(format!("{name}.old-{stamp}"));
    std::fs::rename(run, &aside).with_context(|| format!("moving {} aside", run.display()))?;
    Ok(aside)
}

/// The student's architecture: the teacher's with DiJiang attention.
pub fn student_config(teacher: &ModelConfig, experiment: &Experiment) -> ModelConfig {
    teacher.clone().with_attention(AttentionKernelConfig::Dijiang(experiment.student.clone()))
}

/// Where a worker sits in a data-parallel run.
#[derive(Debug, Clone, Copy)]
struct Rank {
    /// Index among all devices of all nodes.
    global: usize,
    world: usize,
}

impl Rank {
    /// The one worker that evaluates, logs and checkpoints.
    fn is_writer(self) -> bool {
        self.global == 0
    }
}

/// What every worker shares.
struct Shared<'a> {
    experiment: &'a Experiment,
    run: &'a Path,
    stop: &'a AtomicBool,
    manifest: Manifest,
    train_windows: Windows,
    validation: Windows,
    resumed_from: Option<usize>,
    reduction: Option<Reduction>,
}

/// How workers average their gradients.
enum Reduction {
    /// This node's devices only: burn-collective's all-reduce between threads.
    Local(CollectiveConfig),
    /// Several nodes: every worker through the hub on node 0 (see [`crate::reducer`]).
    Nodes(String),
}

/// A worker's model, teacher, optimizer and position.
struct Replica<B: AutodiffBackend> {
    student: Transformer<B>,
    teacher: Transformer<B::InnerBackend>,
    optimizer: AdamW<B::InnerBackend>,
    state: TrainerState,
}

/// How the workers of this experiment average their gradients (`None`: a single worker).
fn reduction(experiment: &Experiment) -> Result<Option<Reduction>> {
    let d = &experiment.distributed;
    if d.world() == 1 {
        return Ok(None);
    }
    if d.nodes > 1 {
        let address = d.orchestrator.clone().context("distributed.orchestrator is needed with nodes > 1")?;
        return Ok(Some(Reduction::Nodes(address)));
    }
    Ok(Some(Reduction::Local(
        CollectiveConfig::default()
            .with_num_devices(d.local_devices())
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2)),
    )))
}

/// Averages `grads` and a few `values` over all workers in one all-reduce: the gradients are
/// flattened in the module's visiting order (the same on every replica; `ParamId`s differ between
/// processes, so their order cannot be used) and packed with the values into one tensor.
fn all_reduce_step<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    values: Vec<f64>,
    device: &B::Device,
    reduce: impl FnOnce(Tensor<B::InnerBackend, 1>) -> Result<Tensor<B::InnerBackend, 1>>,
) -> Result<(GradientsParams, Vec<f64>)> {
    struct Pack<I: Backend> {
        grads: GradientsParams,
        parts: Vec<Tensor<I, 1>>,
        ids: HashSet<ParamId>,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Pack<AB::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
                let n = grad.shape().num_elements();
                self.parts.push(grad.reshape([n]));
                self.ids.insert(param.id);
            }
        }
    }
    struct Unpack<I: Backend> {
        flat: Tensor<I, 1>,
        offset: usize,
        grads: GradientsParams,
        ids: HashSet<ParamId>,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Unpack<AB::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            if self.ids.contains(&param.id) {
                let dims = param.val().dims();
                let n: usize = dims.iter().product();
                let part = self.flat.clone().slice(self.offset..self.offset + n).reshape(dims);
                self.grads.register::<AB::InnerBackend, D>(param.id, part);
                self.offset += n;
            }
        }
    }
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    let mut pack = Pack::<I<B>> { grads, parts: Vec::new(), ids: HashSet::new() };
    module.visit(&mut pack);
    let n_values = values.len();
    pack.parts.push(Tensor::from_data(TensorData::new(values, [n_values]), device));
    let flat = Tensor::cat(pack.parts, 0);
    let total = flat.shape().num_elements();
    let flat = reduce(flat)?;
    let values: Vec<f64> =
        flat.clone().slice(total - n_values..total).into_data().convert::<f64>().to_vec().expect("f64");
    let mut unpack = Unpack::<I<B>> { flat, offset: 0, grads: GradientsParams::new(), ids: pack.ids };
    module.visit(&mut unpack);
    Ok((unpack.grads, values))
}

/// Runs (or resumes) an experiment to its end, or until `stop` is set, on `devices` (this node's:
/// one worker thread each, gradients averaged across them and across nodes).
pub fn train<B: AutodiffBackend>(options: RunOptions, devices: &[B::Device]) -> Result<Outcome> {
    let experiment = &options.experiment;
    let dist = &experiment.distributed;
    if devices.len() != dist.local_devices() {
        bail!("{} devices given for distributed.devices = {:?}", devices.len(), dist.devices);
    }
    let plan = Plan::check(experiment)?;
    if !plan.errors.is_empty() {
        bail!("{}", plan.errors.join("\n"));
    }
    if let Some(m) = plan.missing.first() {
        bail!("{} is missing: run `{}` first", m.what, m.command);
    }
    let teacher_config = plan.teacher.clone().expect("checked: the teacher exists");
    let student_config = student_config(&teacher_config, experiment);
    let run = options.run_dir.as_path();
    // Node 0 owns the run directory; the other nodes only read its checkpoints.
    let writer_node = dist.node_rank == 0;

    if writer_node {
        if !options.resume && run.exists() {
            let aside = move_aside(run)?;
            tracing::info!("resume=false: the previous run is now {}", aside.display());
        }
        std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
        for partial in checkpoint::remove_partial(run)? {
            tracing::warn!("removed the partial checkpoint {} (a process died while writing it)", partial.display());
        }
    }
    let found = if options.resume { checkpoint::latest(run) } else { None };
    if writer_node {
        write_atomic(&run.join("experiment.toml"), toml::to_string(experiment).expect("serialises").as_bytes())?;
    }

    let device = &devices[0];
    let teacher = load::<B::InnerBackend>(&experiment.teacher.path, device)
        .with_context(|| format!("loading the teacher {}", experiment.teacher.path.display()))?
        .model;
    let manifest = Manifest {
        source: Some(experiment.teacher.path.display().to_string()),
        ..Manifest::new(student_config.clone())
    };
    let (student, state, optimizer) = match &found {
        Some(found) => {
            let model_dir = found.dir.join(checkpoint::MODEL);
            let saved = Checkpoint::open(&model_dir)?;
            if saved.config != student_config {
                bail!(
                    "{} was made for another architecture than this experiment's student:\n  saved:    {:?}\n  \
                     expected: {:?}\nstart over with resume=false (the old run is kept aside) or use another experiment name",
                    found.dir.display(),
                    saved.config,
                    student_config
                );
            }
            if found.state.experiment != *experiment {
                tracing::warn!(
                    "the experiment differs from the one this run started with; continuing with the new one"
                );
            }
            let student = saved.build::<B>(&student_config, &|_| false, 0, device)?.model;
            let optimizer = AdamW::load(experiment.optimizer.clone(), &found.dir.join(checkpoint::OPTIMIZER), device)
                .map_err(anyhow::Error::msg)?;
            tracing::info!("resuming from {} (step {})", found.dir.display(), found.state.step);
            (student, found.state.clone(), optimizer)
        }
        None => {
            let student = convert::<B>(&experiment.teacher.path, experiment.student.clone(), device)?.model;
            let state = TrainerState {
                step: 0,
                tokens_seen: 0,
                cursor: Default::default(),
                skipped: 0,
                train_seconds: 0.0,
                experiment: experiment.clone(),
            };
            (student, state, AdamW::new(experiment.optimizer.clone()))
        }
    };
    let mut state = state;
    state.experiment = experiment.clone();

    let d = &experiment.data;
    let world = dist.world();
    let context = Shared {
        experiment,
        run,
        stop: &options.stop,
        manifest,
        train_windows: Windows::open(&d.path, Split::Train, d.block_size)?,
        validation: Windows::open(&d.path, Split::Validation, d.block_size)?,
        resumed_from: found.as_ref().map(|f| f.state.step),
        reduction: reduction(experiment)?,
    };
    let first = dist.node_rank as usize * devices.len();
    if world == 1 {
        let replica = Replica { student, teacher, optimizer, state };
        return worker::<B>(&context, Rank { global: 0, world }, device, replica);
    }
    tracing::info!(
        "data parallel: {} device(s) here, {world} in all (node {} of {})",
        devices.len(),
        dist.node_rank,
        dist.nodes
    );
    let hub = match &context.reduction {
        Some(Reduction::Nodes(address)) if writer_node => {
            let hub = Hub::bind(address, world)?;
            Some(std::thread::spawn(move || hub.serve()))
        }
        _ => None,
    };
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                // Replicas of one model: identical values (and ParamIds) on every device.
                let replica = Replica {
                    student: student.clone().fork(device),
                    teacher: teacher.clone().fork(device),
                    optimizer: optimizer.to_device(device),
                    state: state.clone(),
                };
                let context = &context;
                scope.spawn(move || {
                    let rank = Rank { global: first + i, world };
                    match worker::<B>(context, rank, device, replica) {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            // The other workers wait in collective calls that have no timeout and
                            // cannot be cancelled: end the process.
                            eprintln!("Error on device {} ({device:?}): {e:#}", rank.global);
                            std::process::exit(1);
                        }
                    }
                })
            })
            .collect();
        let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().expect("a worker panicked")).collect();
        Ok(outcomes.into_iter().next().expect("at least one device"))
    });
    if let Some(hub) = hub {
        hub.join().expect("the hub panicked").context("averaging across nodes")?;
    }
    result
}

/// One device's training loop. Only the writer (global rank 0) evaluates, logs and checkpoints; all
/// workers take the same decisions from all-reduced numbers, so they stay in lockstep.
fn worker<B: AutodiffBackend>(
    context: &Shared,
    rank: Rank,
    device: &B::Device,
    replica: Replica<B>,
) -> Result<Outcome> {
    let Replica { mut student, teacher, mut optimizer, mut state } = replica;
    let experiment = context.experiment;
    let run = context.run;
    let d = &experiment.data;
    let writer = rank.is_writer();
    let peer = PeerId::from(rank.global);
    let mut link = None;
    match &context.reduction {
        Some(Reduction::Local(config)) => {
            collective::register::<B::InnerBackend>(peer, device.clone(), config.clone())
                .map_err(|e| anyhow::anyhow!("joining the collective as device {}: {e:?}", rank.global))?;
        }
        Some(Reduction::Nodes(address)) => link = Some(Link::connect(address, rank.global)?),
        None => {}
    }
    // Each micro-batch of the global batch is split evenly across all devices.
    let micro = d.batch_size / d.grad_accumulation;
    let per_device = micro / rank.world;
    let mut order = BatchOrder::new(context.train_windows.len(), experiment.seed, state.cursor);
    let mut metrics = if writer { Some(Metrics::open(run, state.step)?) } else { None };
    let total_steps = experiment.total_steps();
    let mut outcome = Outcome {
        step: state.step,
        interrupted: false,
        resumed_from: context.resumed_from,
        evaluations: Vec::new(),
        train_seconds: state.train_seconds,
        tokens_seen: state.tokens_seen,
        model: None,
    };

    let evaluate_now = |student: &Transformer<B>| {
        evaluate(&student.valid(), &teacher, &context.validation, experiment.eval.batches, micro, device)
    };
    if writer && context.resumed_from.is_none() {
        let e = evaluate_now(&student);
        tracing::info!(
            "step 0 (converted, untrained): perplexity {:.3} (teacher {:.3}), attention error {:.3}",
            e.perplexity,
            e.teacher_perplexity,
            e.attention_error_mean()
        );
        if let Some(m) = metrics.as_mut() {
            log_evaluation(m, 0, &e)?;
        }
        outcome.evaluations.push((0, e));
    }

    let save =
        |student: &Transformer<B>, state: &TrainerState, optimizer: &AdamW<B::InnerBackend>| -> Result<PathBuf> {
            let inner = student.valid();
            if !all_finite(&inner) {
                bail!("refusing to save a checkpoint with non-finite parameters at step {}", state.step);
            }
            checkpoint::save(run, state, &inner, &context.manifest, optimizer, experiment.checkpoint.keep)
        };

    let interactive = writer && std::io::stderr().is_terminal();
    let bar = if interactive { ProgressBar::new(total_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(state.step as u64);
    let report_every = (total_steps / 50).max(1);
    let mut applied_stage = None;

    while state.step < total_steps {
        let (stage_index, stage_step) = stage_at(experiment, state.step);
        let stage = &experiment.stages[stage_index];
        if applied_stage != Some(stage_index) {
            student = set_trainable(student, &|name| trains(stage.trainable, &experiment.student, name));
            applied_stage = Some(stage_index);
        }
        if stage_step == 0 {
            // Each stage optimises its own objective over its own parameters: fresh moments.
            optimizer = AdamW::new(experiment.optimizer.clone());
        }
        let lr = learning_rate(stage, stage_step);
        let started = Instant::now();

        let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
        let mut terms = Terms::default();
        for _ in 0..d.grad_accumulation {
            let indices = order.next_batch(micro);
            let windows: Vec<Vec<u32>> = indices[rank.global * per_device..(rank.global + 1) * per_device]
                .iter()
                .map(|&i| context.train_windows.get(i).expect("index from the order"))
                .collect();
            let batch: LmBatch<B::InnerBackend> = LmBatcher.batch(windows, device);
            let (loss, t) = loss(&student, &teacher, &batch, &stage.loss);
            let scale = 1.0 / d.grad_accumulation as f64;
            terms.lm += t.lm * scale;
            terms.kl += t.kl * scale;
            terms.attention += t.attention * scale;
            terms.attention_rows += t.attention_rows * scale;
            terms.total += t.total * scale;
            let grads = loss.mul_scalar(scale).backward();
            accumulator.accumulate(&student, GradientsParams::from_grads(grads, &student));
        }
        let mut grads = accumulator.grads();
        let mut stop = context.stop.load(Ordering::SeqCst);
        if let Some(reduction) = &context.reduction {
            let stopping = if stop { 1.0 } else { 0.0 };
            let local = vec![terms.lm, terms.kl, terms.attention, terms.attention_rows, terms.total, stopping];
            let reduce = |flat: Tensor<B::InnerBackend, 1>| -> Result<Tensor<B::InnerBackend, 1>> {
                match reduction {
                    Reduction::Local(_) => {
                        let reduced = collective::all_reduce::<B::InnerBackend>(
                            peer,
                            flat.into_primitive().tensor(),
                            ReduceOperation::Mean,
                        )
                        .map_err(|e| anyhow::anyhow!("all-reduce failed: {e:?}"))?;
                        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
                    }
                    Reduction::Nodes(_) => {
                        let values = flat.into_data().convert::<f32>().to_vec::<f32>().expect("f32");
                        let mean = link.as_mut().expect("connected").all_reduce_mean(&values)?;
                        let n = mean.len();
                        Ok(Tensor::from_data(TensorData::new(mean, [n]), device))
                    }
                }
            };
            let (reduced, v) = all_reduce_step(&student, grads, local, device, reduce)?;
            grads = reduced;
            terms = Terms { lm: v[0], kl: v[1], attention: v[2], attention_rows: v[3], total: v[4] };
            stop = v[5] > 0.0;
        }
        let grad_norm = AdamW::grad_norm(&student, &grads);
        let finite = terms.total.is_finite() && grad_norm.is_finite();
        if finite {
            let clip = experiment.optimizer.clip_grad_norm;
            let scale = if clip > 0.0 && grad_norm > clip { clip / (grad_norm + 1e-6) } else { 1.0 };
            student = optimizer.step(student, grads, lr, scale);
        } else {
            state.skipped += 1;
            if writer {
                tracing::warn!(
                    "step {}: non-finite loss {} or gradient norm {grad_norm}: update skipped ({} so far)",
                    state.step + 1,
                    terms.total,
                    state.skipped
                );
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let tokens = (d.batch_size * d.block_size) as u64;
        state.step += 1;
        state.tokens_seen += tokens;
        state.train_seconds += seconds;
        state.cursor = order.cursor();
        let tokens_per_s = tokens as f64 / seconds;

        if let Some(metrics) = metrics.as_mut() {
            let mut values = vec![
                ("train/loss", terms.total),
                ("train/lr", lr),
                ("train/grad_norm", grad_norm),
                ("train/tokens_per_s", tokens_per_s),
                ("train/tokens_seen", state.tokens_seen as f64),
            ];
            for (tag, weight, value) in [
                ("train/lm", stage.loss.lm, terms.lm),
                ("train/kl", stage.loss.kl, terms.kl),
                ("train/attention", stage.loss.attention, terms.attention),
                ("train/attention_rows", stage.loss.attention_rows, terms.attention_rows),
            ] {
                if weight > 0.0 {
                    values.push((tag, value));
                }
            }
            if !finite {
                values.push(("train/skipped", state.skipped as f64));
            }
            metrics.log(state.step, &values)?;
            if !finite && state.skipped > experiment.optimizer.max_nonfinite {
                metrics.flush()?;
            }
        }
        if !finite && state.skipped > experiment.optimizer.max_nonfinite {
            bail!(
                "{} updates skipped for non-finite losses or gradients (optimizer.max_nonfinite = {}): stopping; \
                 the last checkpoint is untouched. Lower the learning rate or check the data",
                state.skipped,
                experiment.optimizer.max_nonfinite
            );
        }
        bar.set_position(state.step as u64);
        bar.set_message(format!("{} loss {:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s", stage.name, terms.total));
        if writer && !interactive && (state.step.is_multiple_of(report_every) || state.step == total_steps) {
            tracing::info!(
                "step {}/{total_steps} [{}] loss {:.4} lr {lr:.2e} grad {grad_norm:.3} {tokens_per_s:.0} tok/s",
                state.step,
                stage.name,
                terms.total
            );
        }

        // The end of every stage (the last one's is the run's) is evaluated and checkpointed: stage
        // 1's student is a result of its own.
        let mut stage_ends = experiment.stages.iter().scan(0, |sum, s| {
            *sum += s.steps;
            Some(*sum)
        });
        let end = stage_ends.any(|e| e == state.step);
        let every = |n: usize| n > 0 && state.step.is_multiple_of(n);
        if writer && (every(experiment.eval.every) || end) {
            let e = evaluate_now(&student);
            bar.suspend(|| {
                tracing::info!(
                    "step {}: eval perplexity {:.3} (teacher {:.3}), KL {:.4}, attention error {:.3}",
                    state.step,
                    e.perplexity,
                    e.teacher_perplexity,
                    e.kl,
                    e.attention_error_mean()
                )
            });
            if let Some(m) = metrics.as_mut() {
                log_evaluation(m, state.step, &e)?;
            }
            outcome.evaluations.push((state.step, e));
        }
        if writer && (every(experiment.checkpoint.every) || end || stop) {
            if let Some(m) = metrics.as_mut() {
                m.flush()?;
            }
            let dir = save(&student, &state, &optimizer)?;
            bar.suspend(|| tracing::info!("checkpoint {}", dir.display()));
        }
        if stop {
            bar.abandon_with_message("interrupted");
            if writer {
                tracing::info!("stopped at step {}; the same command resumes", state.step);
            }
            outcome.interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    if let Some(Reduction::Local(_)) = &context.reduction {
        collective::finish_collective::<B::InnerBackend>(peer)
            .map_err(|e| anyhow::anyhow!("leaving the collective: {e:?}"))?;
    }
    drop(link);
    outcome.step = state.step;
    outcome.train_seconds = state.train_seconds;
    outcome.tokens_seen = state.tokens_seen;
    if !writer {
        return Ok(outcome);
    }
    if let Some(m) = metrics.as_mut() {
        m.flush()?;
    }
    if !outcome.interrupted {
        let dir = run.join("model");
        native::save(&student.valid(), &context.manifest, &dir)?;
        if let Ok(tokenizer) = Tokenizer::for_model(&experiment.teacher.path) {
            tokenizer.save_beside(&dir, &experiment.teacher.path)?;
        }
        outcome.model = Some(dir);
    }
    write_atomic(&run.join("outcome.json"), &serde_json::to_vec_pretty(&outcome).expect("serialises"))?;
    Ok(outcome)
}
