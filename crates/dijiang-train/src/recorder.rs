//! The writer's duties (global rank 0 of a run): the logs (TensorBoard + JSONL), the progress bar
//! or progress lines, evaluations, checkpoints, and the run's end (the exported student and
//! `outcome.json`). Every other worker only trains.

use std::io::IsTerminal;
use std::path::PathBuf;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_model::Transformer;
use dijiang_model::import::native::{self, Manifest};
use dijiang_model::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cadence::due;
use crate::checkpoint::{self, TrainerState, write_atomic};
use crate::error::{Result, TrainError};
use crate::evaluation::{Evaluation, TeacherSide, evaluate};
use crate::experiment::Stage;
use crate::metrics::Metrics;
use crate::optim::SavedState;
use crate::start::RunContext;
use crate::step::StepRecord;
use crate::zero_shot::ZeroShot;

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

impl Outcome {
    /// Where the run stands after its steps so far.
    pub fn at(state: &TrainerState, resumed_from: Option<usize>) -> Self {
        Self {
            step: state.step,
            interrupted: false,
            resumed_from,
            evaluations: Vec::new(),
            train_seconds: state.train_seconds,
            tokens_seen: state.tokens_seen,
            model: None,
        }
    }
}

/// What a step leaves for the writer to evaluate and checkpoint.
pub struct Models<'m, B: AutodiffBackend> {
    pub student: &'m Transformer<B>,
    /// The teacher, while the run holds one.
    pub teacher: Option<&'m Transformer<B::InnerBackend>>,
    /// The optimizer's whole state, gathered by every worker when a checkpoint is due.
    pub optimizer: Option<&'m SavedState>,
}

pub struct Recorder<'a> {
    run: &'a RunContext<'a>,
    metrics: Metrics,
    zero_shot: Option<ZeroShot>,
    bar: ProgressBar,
    outcome: Outcome,
    /// The teacher's held-out loss, from the last evaluation that had the teacher (kept in
    /// checkpoints: later evaluations without it report it beside the student's).
    teacher_loss: Option<f64>,
    /// The teacher's tokenizer, saved beside every checkpoint's model and the exported one (none
    /// when the teacher's files carry no tokenizer).
    tokenizer: Option<Tokenizer>,
}

impl<'a> Recorder<'a> {
    pub fn open(run: &'a RunContext<'a>, state: &TrainerState) -> Result<Self> {
        let metrics = Metrics::open(run.dir, state.step)?;
        let total = run.experiment.total_steps() as u64;
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new(total) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} (eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(state.step as u64);
        let zero_shot = ZeroShot::new(run.experiment)?;
        let outcome = Outcome::at(state, run.resumed_from);
        let tokenizer = Tokenizer::for_model(&run.experiment.teacher.path).ok();
        Ok(Self { run, metrics, zero_shot, bar, outcome, teacher_loss: state.teacher_loss, tokenizer })
    }

    /// Evaluates the student at `step` on the held-out windows (against `teacher`, or beside its
    /// kept perplexity without it), and logs it.
    pub fn evaluate<B: AutodiffBackend>(
        &mut self,
        step: usize,
        student: &Transformer<B>,
        teacher: Option<&Transformer<B::InnerBackend>>,
        device: &B::Device,
    ) -> Result<()> {
        let e = &self.run.experiment;
        let micro = e.data.batch_size / e.data.grad_accumulation;
        let student = student.valid();
        let side = match teacher {
            Some(teacher) => TeacherSide::Model(teacher),
            None => TeacherSide::Kept(self.teacher_loss.unwrap_or(f64::NAN)),
        };
        let mut evaluation = evaluate(&student, side, &self.run.validation, e.eval.batches, micro, device);
        if teacher.is_some() {
            self.teacher_loss = Some(evaluation.teacher_loss);
        }
        if let Some(zero_shot) = self.zero_shot.as_ref().filter(|_| step == 0 || e.ends_a_stage(step)) {
            evaluation.zero_shot = self.bar.suspend(|| zero_shot.evaluate(&student))?;
            let scores: Vec<String> = evaluation.zero_shot.iter().map(|(tag, v)| format!("{tag} {v:.4}")).collect();
            self.bar.suspend(|| tracing::info!("step {step}: {}", scores.join(", ")));
        }
        let against = match evaluation.kl {
            Some(kl) => format!(", KL {kl:.4}, attention error {:.3}", evaluation.attention_error_mean()),
            None => String::new(),
        };
        let (perplexity, teacher) = (evaluation.perplexity, evaluation.teacher_perplexity);
        self.bar
            .suspend(|| tracing::info!("step {step}: eval perplexity {perplexity:.3} (teacher {teacher:.3}){against}"));
        self.metrics.log(step, &evaluation.tagged())?;
        self.outcome.evaluations.push((step, evaluation));
        Ok(())
    }

    /// Logs a step (`state` already advanced past it), then evaluates and checkpoints when due.
    pub fn after_step<B: AutodiffBackend>(
        &mut self,
        state: &TrainerState,
        stage: &Stage,
        record: &StepRecord,
        seconds: f64,
        models: Models<'_, B>,
        device: &B::Device,
    ) -> Result<()> {
        self.log_step(state, stage, record, seconds)?;
        let Models { student, teacher, optimizer } = models;
        let due = due(self.run.experiment, state.step, record.signals.stop);
        if due.evaluate {
            self.evaluate(state.step, student, teacher, device)?;
        }
        if due.checkpoint {
            self.metrics.flush()?;
            let optimizer = optimizer.expect("the optimizer state is gathered whenever a checkpoint is due");
            let dir = self.save(state, student, optimizer)?;
            self.bar.suspend(|| tracing::info!("checkpoint {}", dir.display()));
        }
        Ok(())
    }

    fn log_step(&mut self, state: &TrainerState, stage: &Stage, record: &StepRecord, seconds: f64) -> Result<()> {
        let e = self.run.experiment;
        // `state` is past the step just taken.
        let taken = state.step - 1;
        let tokens_per_s = e.data.tokens_at(taken) as f64 / seconds;
        let block = e.data.block_size_at(taken);
        if taken > 0 && block != e.data.block_size_at(taken - 1) {
            self.bar
                .suspend(|| tracing::info!("step {taken}: blocks of {block} tokens from here (data.block_schedule)"));
        }
        let mut values = record.tagged();
        values.push(("train/tokens_per_s".into(), tokens_per_s));
        values.push(("train/tokens_seen".into(), state.tokens_seen as f64));
        if !record.applied {
            values.push(("train/skipped".into(), state.skipped as f64));
            tracing::warn!(
                "step {}: non-finite loss {} or gradient norm {}: update skipped ({} so far)",
                state.step,
                record.terms.total,
                record.grad_norm,
                state.skipped
            );
        }
        self.metrics.log(state.step, &values)?;
        if state.skipped > e.optimizer.max_nonfinite {
            self.metrics.flush()?;
        }
        let (loss, lr, total) = (record.terms.total, record.lr, e.total_steps());
        self.bar.set_position(state.step as u64);
        self.bar.set_message(format!("{} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s", stage.name));
        if self.bar.is_hidden() && due(e, state.step, false).report {
            let grad = record.grad_norm;
            tracing::info!(
                "step {}/{total} [{}] loss {loss:.4} lr {lr:.2e} grad {grad:.3} {tokens_per_s:.0} tok/s",
                state.step,
                stage.name
            );
        }
        Ok(())
    }

    fn save<B: AutodiffBackend>(
        &self,
        state: &TrainerState,
        student: &Transformer<B>,
        optimizer: &SavedState,
    ) -> Result<PathBuf> {
        let inner = student.valid();
        if !all_finite(&inner) {
            return Err(TrainError::NonFiniteParameters(state.step));
        }
        let keep = self.run.experiment.checkpoint.keep;
        let state = TrainerState { teacher_loss: self.teacher_loss, ..state.clone() };
        let model = (&inner, &self.run.manifest, self.tokenizer_of());
        checkpoint::save(self.run.dir, &state, model, optimizer, keep)
    }

    fn tokenizer_of(&self) -> Option<checkpoint::TokenizerOf<'_>> {
        self.tokenizer.as_ref().map(|t| (t, self.run.experiment.teacher.path.as_path()))
    }

    /// The end of the run: the exported student (unless interrupted) and `outcome.json`.
    pub fn finish<B: AutodiffBackend>(
        mut self,
        state: &TrainerState,
        student: &Transformer<B>,
        interrupted: bool,
    ) -> Result<Outcome> {
        if interrupted {
            self.bar.abandon_with_message("interrupted");
            tracing::info!("stopped at step {}; the same command resumes", state.step);
        } else {
            self.bar.finish_and_clear();
        }
        self.metrics.flush()?;
        let evaluations = std::mem::take(&mut self.outcome.evaluations);
        let mut outcome = Outcome { interrupted, evaluations, ..Outcome::at(state, self.run.resumed_from) };
        if !interrupted {
            let dir = self.run.dir.join("model");
            // LoRA adapters merged into their weights: the exported model is a plain student.
            let model = student.valid().merged();
            let manifest = Manifest { config: model.config().clone(), ..self.run.manifest.clone() };
            native::save(&model, &manifest, &dir)?;
            if let Some((tokenizer, source)) = self.tokenizer_of() {
                tokenizer.save_beside(&dir, source)?;
            }
            outcome.model = Some(dir);
        }
        let json = serde_json::to_vec_pretty(&outcome).expect("an outcome serialises");
        write_atomic(&self.run.dir.join("outcome.json"), &json)?;
        Ok(outcome)
    }
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
