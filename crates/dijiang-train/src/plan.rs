//! What a run will do, checked before any work: inputs present (or how to get them), the teacher a
//! softmax model, the data made with the teacher's tokenizer, enough windows; parameter counts,
//! tokens per step and a memory estimate. `just train --dry-run` prints it and stops.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use dijiang_data::manifest::Manifest;
use dijiang_model::import::Checkpoint;
use dijiang_model::tokenizer::Tokenizer;
use dijiang_model::{AttentionKernelConfig, FeatureTraining, ModelConfig};

use crate::experiment::{Experiment, Trainable};

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

/// Parameter counts of the student: (total, trainable per stage).
pub fn parameter_counts(experiment: &Experiment, teacher: &ModelConfig) -> (usize, Vec<usize>) {
    let dj = &experiment.student;
    let student = teacher.clone().with_attention(AttentionKernelConfig::Dijiang(dj.clone()));
    let total = student.num_params();
    let kernel = total - teacher.clone().with_attention(AttentionKernelConfig::Softmax).num_params();
    let layers = student.num_layers;
    // Never trained: the frozen feature projections, and the decays unless learnable.
    let proj = if dj.feature_training == FeatureTraining::Projection {
        0
    } else {
        layers * student.head_dim * dj.num_features(student.head_dim)
    };
    let frozen = proj + if dj.learnable_decay { 0 } else { layers * student.num_heads };
    let trainable = experiment
        .stages
        .iter()
        .map(|s| match s.trainable {
            Trainable::Kernel => kernel - frozen,
            Trainable::All => total - frozen,
        })
        .collect();
    (total, trainable)
}

/// A rough peak-memory estimate per device in bytes (f32): both models' weights, gradients and
/// AdamW moments of the largest trainable set (all replicated on every device), and the
/// activations autodiff keeps for one device's share of a micro-batch.
pub fn memory_estimate(experiment: &Experiment, teacher: &ModelConfig) -> u64 {
    let (total, trainable) = parameter_counts(experiment, teacher);
    let trainable = trainable.into_iter().max().unwrap_or(0) as u64;
    let weights = (teacher.num_params() + total) as u64;
    let d = &experiment.data;
    // Data parallelism replicates everything but the activations, which are split.
    let micro = (d.batch_size / d.grad_accumulation / experiment.distributed.world()).max(1) as u64;
    let (b, t) = (micro, d.block_size as u64);
    let (h, i, v) = (teacher.hidden_size as u64, teacher.intermediate_size as u64, teacher.vocab_size as u64);
    let heads = teacher.num_heads as u64;
    let c = experiment.student.chunk_len as u64;
    let m = experiment.student.num_features(teacher.head_dim) as u64;
    // Per layer and token: ~16 hidden-sized tensors (norms, projections, gate, residuals), ~4
    // intermediate-sized (MLP), the chunk scores, and the feature maps.
    let per_token_layer = 16 * h + 4 * i + 2 * heads * c + 2 * heads * m;
    let activations = b * t * teacher.num_layers as u64 * per_token_layer;
    // Logits: student logits, their softmax / log-softmax and gradient, the teacher's.
    let logits = 5 * b * t * v;
    4 * (weights + 3 * trainable + activations + logits)
}

impl Plan {
    /// Checks the experiment's inputs. Inputs that are missing but have a fetch / prepare command are
    /// listed in `missing`; missing without one is an error saying what to provide.
    pub fn check(experiment: &Experiment) -> Result<Self> {
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        let teacher_path = &experiment.teacher.path;
        let mut tokenizer = None;
        let teacher = if teacher_path.exists() {
            let checkpoint =
                Checkpoint::open(teacher_path).with_context(|| format!("teacher.path = {}", teacher_path.display()))?;
            if checkpoint.config.attention != AttentionKernelConfig::Softmax {
                bail!(
                    "teacher.path = {}: a DiJiang model; the teacher must be a softmax model",
                    teacher_path.display()
                );
            }
            let student =
                checkpoint.config.clone().with_attention(AttentionKernelConfig::Dijiang(experiment.student.clone()));
            student.validate().context("the student's configuration")?;
            tokenizer = Some(
                Tokenizer::for_model(teacher_path)
                    .with_context(|| format!("the tokenizer of the teacher {}", teacher_path.display()))?,
            );
            Some(checkpoint.config)
        } else {
            if let Some(fetch) = &experiment.teacher.fetch {
                missing.push(Missing { what: format!("teacher {}", teacher_path.display()), command: fetch.clone() });
            } else {
                errors.push(format!(
                    "teacher.path = {}: not found. Put the teacher there (an HF model directory with config.json \
                     and safetensors, a GGUF file or a llama2.c .bin), or point to it with teacher.path=PATH",
                    teacher_path.display()
                ));
            }
            match &experiment.teacher.preset {
                Some(name) => Some(ModelConfig::preset(name).with_context(|| {
                    format!("teacher.preset = {name}: unknown (known: {})", ModelConfig::PRESETS.join(", "))
                })?),
                None => None,
            }
        };

        let data_dir = &experiment.data.path;
        let data = if data_dir.join(dijiang_data::manifest::MANIFEST).exists() {
            let manifest = Manifest::read(data_dir).with_context(|| format!("data.path = {}", data_dir.display()))?;
            if let Some(tokenizer) = &tokenizer {
                manifest.check_tokenizer(&tokenizer.fingerprint(), data_dir)?;
            }
            if let Some(config) = &teacher
                && manifest.tokenizer.vocab_size > config.vocab_size
            {
                bail!(
                    "data.path = {}: tokenised with a vocabulary of {} but the teacher has {} embeddings",
                    data_dir.display(),
                    manifest.tokenizer.vocab_size,
                    config.vocab_size
                );
            }
            let block = experiment.data.block_size;
            let train_windows = manifest.train.tokens.saturating_sub(1) / block;
            if train_windows < experiment.data.batch_size {
                bail!(
                    "data.path = {}: the training split has {} tokens, {train_windows} windows of {block}; \
                     a step needs {}: use more data or a smaller data.block_size / data.batch_size",
                    data_dir.display(),
                    manifest.train.tokens,
                    experiment.data.batch_size
                );
            }
            if manifest.validation.tokens.saturating_sub(1) / block == 0 {
                bail!(
                    "data.path = {}: the validation split has {} tokens, less than one block of {block}: \
                     prepare with a larger validation fraction or use a smaller data.block_size",
                    data_dir.display(),
                    manifest.validation.tokens
                );
            }
            Some((manifest.train.tokens, manifest.validation.tokens))
        } else if let Some(prepare) = &experiment.data.prepare {
            missing.push(Missing { what: format!("data {}", data_dir.display()), command: prepare.clone() });
            None
        } else {
            errors.push(format!(
                "data.path = {}: no prepared dataset there (manifest.json). Make one with \
                 `dijiang prepare --tokenizer <teacher> --input <text, jsonl or jsonl.zst> --out {}`",
                data_dir.display(),
                data_dir.display()
            ));
            None
        };
        Ok(Self { teacher, data, missing, errors })
    }

    /// The plan as printed by `--dry-run` and at the start of a run.
    pub fn describe(&self, experiment: &Experiment) -> String {
        let mut out = String::new();
        let d = &experiment.data;
        let tokens_per_step = d.batch_size * d.block_size;
        let steps = experiment.total_steps();
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
                    let l = &stage.loss;
                    let _ = writeln!(
                        out,
                        "stage       {}: {} steps, lr {:e} -> {:e} (warmup {}), trains {:?} ({} parameters), \
                         loss lm {} kl {} attention {} attention_rows {}",
                        stage.name,
                        stage.steps,
                        stage.lr,
                        stage.min_lr,
                        stage.warmup_steps,
                        stage.trainable,
                        group(n),
                        l.lm,
                        l.kl,
                        l.attention,
                        l.attention_rows
                    );
                }
                let bytes = memory_estimate(experiment, config);
                let dist = &experiment.distributed;
                let _ = writeln!(
                    out,
                    "memory      ~{:.1} GiB per device, f32 ({} device(s) on each of {} node(s); rough estimate)",
                    bytes as f64 / (1u64 << 30) as f64,
                    dist.local_devices(),
                    dist.nodes
                );
            }
            None => {
                let _ = writeln!(out, "teacher     {} (not there yet)", experiment.teacher.path.display());
            }
        }
        let _ = writeln!(
            out,
            "tokens      {} per step ({} x {} in {} micro-batches), {} steps, {} in all",
            group(tokens_per_step),
            d.batch_size,
            d.block_size,
            d.grad_accumulation,
            steps,
            group(tokens_per_step * steps)
        );
        match self.data {
            Some((train, validation)) => {
                let _ = writeln!(
                    out,
                    "data        {}: {} training tokens ({:.2} epochs), {} validation",
                    d.path.display(),
                    group(train),
                    (tokens_per_step * steps) as f64 / train as f64,
                    group(validation)
                );
            }
            None => {
                let _ = writeln!(out, "data        {} (not prepared yet)", d.path.display());
            }
        }
        for m in &self.missing {
            let _ = writeln!(out, "missing     {}: `{}` makes it", m.what, m.command);
        }
        for e in &self.errors {
            let _ = writeln!(out, "missing     {e}");
        }
        out
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
