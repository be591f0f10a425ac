//! What a run will do, checked before any work: inputs present (or how to get them), the teacher a
//! softmax model, the data made with the teacher's tokenizer, enough windows; parameter counts,
//! tokens per step and a memory estimate. `just train --dry-run` prints it and stops.

use std::fmt::Write as _;
use std::path::Path;

use dijiang_data::manifest::Manifest;
use dijiang_model::import::Checkpoint;
use dijiang_model::tokenizer::Tokenizer;
use dijiang_model::{AttentionKernelConfig, ModelConfig};

use crate::error::{Result, TrainError};
use crate::experiment::Experiment;
use crate::trainable::parameter_counts;

/// Something the run needs that is not there yet, and the command that makes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Missing {
    pub what: String,
    pub command: String,
}

/// The checked plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The teacher's architecture (from its weights, or from its preset while they are missing).
    pub teacher: Option<ModelConfig>,
    /// Training tokens, validation tokens (unknown until the data is prepared).
    pub data: Option<(usize, usize)>,
    /// Inputs missing that a command of the experiment provides.
    pub missing: Vec<Missing>,
    /// Inputs missing that the user must provide: the run cannot start.
    pub errors: Vec<String>,
}

/// The plan's memory line: the estimate by component at the run's peak, the devices.
fn memory_line(experiment: &Experiment, teacher: &ModelConfig) -> String {
    let dist = &experiment.distributed;
    format!(
        "memory      {} ({} device(s) on each of {} node(s), f32)",
        crate::memory::estimate(experiment, teacher),
        dist.local_devices(),
        dist.nodes
    )
}

impl Plan {
    /// Checks the experiment's inputs. Inputs that are missing but have a fetch / prepare command are
    /// listed in `missing`; missing without one is an error saying what to provide.
    pub fn check(experiment: &Experiment) -> Result<Self> {
        let mut plan = Self { teacher: None, data: None, missing: Vec::new(), errors: Vec::new() };
        let tokenizer = plan.check_teacher(experiment)?;
        plan.check_data(experiment, tokenizer.as_ref())?;
        plan.check_task_data(experiment);
        Ok(plan)
    }

    /// The zero-shot evaluation data of `eval.tasks`: `just evaldata` fetches it into its default
    /// place; elsewhere it is the user's to provide.
    fn check_task_data(&mut self, experiment: &Experiment) {
        let missing = crate::zero_shot::missing_data(experiment);
        if missing.is_empty() {
            return;
        }
        let dir = &experiment.eval.task_data;
        let what = format!("zero-shot data {} ({})", dir.display(), missing.join(", "));
        if dir == Path::new("datasets/evals") {
            self.missing.push(Missing { what, command: "just evaldata".into() });
        } else {
            self.errors.push(format!(
                "eval.task_data = {}: {what} not found; `just evaldata` writes it to datasets/evals",
                dir.display()
            ));
        }
    }

    /// The teacher's architecture and tokenizer (from its preset while its weights are missing).
    fn check_teacher(&mut self, experiment: &Experiment) -> Result<Option<Tokenizer>> {
        let path = &experiment.teacher.path;
        let at = || format!("teacher.path = {}", path.display());
        if !path.exists() {
            match &experiment.teacher.fetch {
                Some(fetch) => {
                    self.missing.push(Missing { what: format!("teacher {}", path.display()), command: fetch.clone() })
                }
                None => self.errors.push(format!(
                    "{}: not found. Put the teacher there (an HF model directory with config.json and \
                     safetensors, a GGUF file or a llama2.c .bin), or point to it with teacher.path=PATH",
                    at()
                )),
            }
            if let Some(name) = &experiment.teacher.preset {
                let known = ModelConfig::PRESETS.join(", ");
                let unknown = || TrainError::Input(format!("teacher.preset = {name}: unknown (known: {known})"));
                self.teacher = Some(ModelConfig::preset(name).ok_or_else(unknown)?);
            }
            return Ok(None);
        }
        let checkpoint = Checkpoint::open(path).map_err(|e| TrainError::context(at(), e))?;
        if checkpoint.config.attention != AttentionKernelConfig::Softmax {
            return Err(TrainError::Input(format!("{}: a DiJiang model; the teacher must be a softmax model", at())));
        }
        experiment
            .student_config(&checkpoint.config)
            .validate()
            .map_err(|e| TrainError::context("the student's configuration", e))?;
        let tokenizer = Tokenizer::for_model(path)
            .map_err(|e| TrainError::context(format!("the tokenizer of the teacher {}", path.display()), e))?;
        self.teacher = Some(checkpoint.config);
        Ok(Some(tokenizer))
    }

    /// The prepared data: made with the teacher's tokenizer, enough windows in both splits.
    fn check_data(&mut self, experiment: &Experiment, tokenizer: Option<&Tokenizer>) -> Result<()> {
        let dir = &experiment.data.path;
        let at = || format!("data.path = {}", dir.display());
        if !dir.join(dijiang_data::manifest::MANIFEST).exists() {
            match &experiment.data.prepare {
                Some(prepare) => {
                    self.missing.push(Missing { what: format!("data {}", dir.display()), command: prepare.clone() })
                }
                None => self.errors.push(format!(
                    "{}: no prepared dataset there (manifest.json). Make one with \
                     `dijiang prepare --tokenizer <teacher> --input <text, jsonl or jsonl.zst> --out {}`",
                    at(),
                    dir.display()
                )),
            }
            return Ok(());
        }
        let manifest = Manifest::read(dir).map_err(|e| TrainError::context(at(), e))?;
        if let Some(tokenizer) = tokenizer {
            manifest.check_tokenizer(&tokenizer.fingerprint(), dir)?;
        }
        // The longest block of the run (`data.block_schedule`) must fit the training split.
        let longest = experiment.data.block_sizes().max().expect("the base block");
        let (vocab, block, batch) = (manifest.tokenizer.vocab_size, longest, experiment.data.batch_size);
        if let Some(config) = self.teacher.as_ref().filter(|c| vocab > c.vocab_size) {
            let embeddings = config.vocab_size;
            let message =
                format!("{}: tokenised with a vocabulary of {vocab} but the teacher has {embeddings} embeddings", at());
            return Err(TrainError::Input(message));
        }
        let (train, validation) = (manifest.train.tokens, manifest.validation.tokens);
        let windows = train.saturating_sub(1) / block;
        if windows < batch {
            return Err(TrainError::Input(format!(
                "{}: the training split has {train} tokens, {windows} windows of {block}; a step needs {batch}: \
                 use more data or a smaller data.block_size / data.batch_size",
                at()
            )));
        }
        let evaluated = experiment.data.block_size;
        if validation.saturating_sub(1) / evaluated == 0 {
            return Err(TrainError::Input(format!(
                "{}: the validation split has {validation} tokens, less than one block of {evaluated}: prepare with \
                 a larger validation fraction or use a smaller data.block_size",
                at()
            )));
        }
        self.data = Some((train, validation));
        Ok(())
    }

    /// The plan as printed by `--dry-run` and at the start of a run.
    pub fn describe(&self, experiment: &Experiment) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "experiment  {}", experiment.description);
        match &self.teacher {
            Some(config) => {
                let (total, trainable) = parameter_counts(experiment, config);
                let _ = writeln!(
                    out,
                    "teacher     {} ({:?}, {} layers, hidden {}, {} parameters)",
                    experiment.teacher.path.display(),
                    config.arch,
                    config.num_layers,
                    config.hidden_size,
                    group(config.num_params())
                );
                let _ = writeln!(out, "student     {} parameters", group(total));
                for (stage, n) in experiment.stages.iter().zip(trainable) {
                    let _ = writeln!(
                        out,
                        "stage       {}: {} steps, lr {:e} -> {:e} (warmup {}), trains {:?} ({} parameters), loss {}",
                        stage.name,
                        stage.steps,
                        stage.lr,
                        stage.min_lr,
                        stage.warmup_steps,
                        stage.trainable,
                        group(n),
                        stage.loss.describe()
                    );
                    if let Some(p) = &stage.on_policy {
                        let place = match p.after {
                            Some(after) => format!("{} tokens after the first {after} of each block", p.tokens),
                            None => format!("the last {} tokens of each block", p.tokens),
                        };
                        let _ = writeln!(
                            out,
                            "            on-policy: the student writes {place} (temperature {}), every {} step(s)",
                            p.temperature, p.every
                        );
                    }
                }
                let _ = writeln!(out, "{}", memory_line(experiment, config));
            }
            None => {
                let _ = writeln!(out, "teacher     {} (not there yet)", experiment.teacher.path.display());
            }
        }
        self.describe_data(experiment, &mut out);
        for m in &self.missing {
            let _ = writeln!(out, "missing     {}: `{}` makes it", m.what, m.command);
        }
        for e in &self.errors {
            let _ = writeln!(out, "missing     {e}");
        }
        out
    }

    /// The plan's tokens and data lines.
    fn describe_data(&self, experiment: &Experiment, out: &mut String) {
        let d = &experiment.data;
        let tokens_per_step = d.batch_size * d.block_size;
        let steps = experiment.total_steps();
        let tokens = d.tokens_over(0..steps) as usize;
        let _ = writeln!(
            out,
            "tokens      {} per step ({} x {} in {} micro-batches), {} steps, {} in all",
            group(tokens_per_step),
            d.batch_size,
            d.block_size,
            d.grad_accumulation,
            steps,
            group(tokens)
        );
        for c in &d.block_schedule {
            let _ =
                writeln!(out, "            from step {}: {} x {} per step", c.from_step, d.batch_size, c.block_size);
        }
        match self.data {
            Some((train, validation)) => {
                let _ = writeln!(
                    out,
                    "data        {}: {} training tokens ({:.2} epochs), {} validation",
                    d.path.display(),
                    group(train),
                    tokens as f64 / train as f64,
                    group(validation)
                );
            }
            None => {
                let _ = writeln!(out, "data        {} (not prepared yet)", d.path.display());
            }
        }
    }
}

/// Digits grouped in threes: 6738415616 -> "6,738,415,616".
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
