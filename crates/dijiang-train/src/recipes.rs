//! A few real trainer steps of every stage of an experiment, on random weights of its
//! architecture drawn on the device: what the prepared GPU check (`bench/gpu-check.sh`, `dijiang bench recipes`)
//! measures where no checkpoint can be downloaded. Memory and speed do not depend on the weights'
//! values, so a 7B recipe is checked from its preset alone. Each step is the trainer's own
//! ([`crate::step::step`]) with the experiment's student options, LoRA, frozen-weight storage,
//! teacher (a view, a copy, or none once dropped) and recomputation, on one device and one
//! micro-batch per step.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution};
use dijiang_data::dataset::LmBatch;
use dijiang_model::{ModelConfig, Transformer};
use serde::Serialize;

use crate::distributed::Reducer;
use crate::error::Result;
use crate::experiment::{DistributedConfig, Experiment, StorageDtype};
use crate::memory::{StepMode, stage_estimate};
use crate::optim::AdamW;
use crate::params::{set_storage, set_trainable};
use crate::step::{Signals, StepInputs, step};
use crate::trainable::{TeacherHeld, frozen_for_run, teacher_held, trains};

/// What a few steps of one stage did.
#[derive(Debug, Clone, Serialize)]
pub struct StageCheck {
    pub stage: String,
    pub mode: String,
    pub block: usize,
    pub batch: usize,
    /// Seconds of each step (the first includes warm-up: kernel compilation, pools).
    pub step_seconds: Vec<f64>,
    /// Tokens per second of the last step.
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    /// The memory model's estimate for this stage on one device (bytes).
    pub estimate_bytes: u64,
    pub estimate: String,
}

/// The experiment as the check runs it: one device, one micro-batch per step (its micro-batch
/// size), frozen weights in f32 where the backend has no half precision.
pub fn as_checked<B: Backend>(experiment: &Experiment, device: &B::Device) -> Experiment {
    let mut e = experiment.clone();
    e.data.batch_size /= e.data.grad_accumulation * e.distributed.world();
    e.data.batch_size = e.data.batch_size.max(1);
    e.data.grad_accumulation = 1;
    e.distributed = DistributedConfig::default();
    if !B::supports_dtype(device, e.memory.frozen_dtype.dtype()) {
        e.memory.frozen_dtype = StorageDtype::F32;
    }
    e
}

/// `steps` steps of every stage of `experiment` (already [`as_checked`]) with a teacher of
/// architecture `teacher`, weights drawn on the device ([`Transformer::init_drawn`]; LoRA's seeded).
pub fn check_stages<B: AutodiffBackend>(
    experiment: &Experiment,
    teacher_config: &ModelConfig,
    steps: usize,
    device: &B::Device,
) -> Result<Vec<StageCheck>> {
    let e = experiment;
    let config = e.student_config(teacher_config);
    let mut student = Transformer::<B>::init_drawn(&config, device)?;
    if let Some(lora) = &e.lora {
        student = student.with_lora(lora, e.seed);
    }
    if e.memory.frozen_dtype != StorageDtype::F32 {
        student = set_storage(student, e.memory.frozen_dtype.dtype(), &|name| frozen_for_run(e, name)).0;
    }
    let teacher = match teacher_held(e) {
        TeacherHeld::View => Some(student.valid().teacher_view()),
        TeacherHeld::Copy => Some(Transformer::<B::InnerBackend>::init_drawn(teacher_config, device)?),
        TeacherHeld::AtStart => None,
    };
    let (block, batch) = (e.data.block_size, e.data.batch_size);
    let mut checks = Vec::new();
    for (index, stage) in e.stages.iter().enumerate() {
        student = set_trainable(student, &|name| trains(stage.trainable, &e.student, name));
        let mut optimizer = AdamW::new(e.optimizer.clone());
        let (mut step_seconds, mut losses) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            let tokens = Tensor::<B::InnerBackend, 2>::random(
                [batch, block + 1],
                Distribution::Uniform(0.0, config.vocab_size as f64),
                device,
            )
            .int();
            let batch_data = LmBatch {
                inputs: tokens.clone().slice([0..batch, 0..block]),
                targets: tokens.slice([0..batch, 1..block + 1]),
            };
            let started = Instant::now();
            let inputs = StepInputs {
                objective: &stage.loss,
                teacher: teacher.as_ref(),
                micro_batches: vec![batch_data],
                lr: stage.lr,
                lr_scale: stage.lr_scale,
                recompute: e.memory.recompute,
                clip: e.optimizer.clip_grad_norm,
                signals: Signals::default(),
            };
            let (next, record) = step(student, &mut optimizer, inputs, &mut Reducer::Single)?;
            student = next;
            B::sync(device).map_err(|err| crate::TrainError::context("device synchronisation", format!("{err:?}")))?;
            step_seconds.push(started.elapsed().as_secs_f64());
            losses.push(record.terms.total);
        }
        let estimate = stage_estimate(e, teacher_config, index);
        let last = step_seconds.last().copied().unwrap_or(f64::NAN);
        checks.push(StageCheck {
            stage: stage.name.clone(),
            mode: format!("{:?}", StepMode::of(e, stage)),
            block,
            batch,
            tokens_per_s: (block * batch) as f64 / last,
            step_seconds,
            losses,
            estimate_bytes: estimate.total(),
            estimate: estimate.to_string(),
        });
    }
    Ok(checks)
}

/// The largest difference between the logits of a model whose base matrices are stored in f16
/// and the same values stored in f32, relative to the largest logit (0 when every use casts
/// exactly; `None`: the backend has no f16). Weights seeded and rounded to f16 first, as an f16
/// checkpoint's are.
pub fn half_storage_logits_error<B: AutodiffBackend>(config: &ModelConfig, device: &B::Device) -> Result<Option<f64>> {
    if !B::supports_dtype(device, DType::F16) {
        return Ok(None);
    }
    let base = |name: &str| crate::trainable::Group::of(name) == crate::trainable::Group::Base;
    let model = Transformer::<B>::init(config, 11, device)?;
    let (half, _) = set_storage(model, DType::F16, &base);
    let (full, _) = set_storage(half.clone(), DType::F32, &base);
    let tokens =
        Tensor::<B::InnerBackend, 2>::random([1, 32], Distribution::Uniform(0.0, config.vocab_size as f64), device)
            .int();
    let (a, b) = (half.valid().forward(tokens.clone()), full.valid().forward(tokens));
    let scale = b.clone().abs().max().into_scalar().elem::<f64>();
    let diff = (a - b).abs().max().into_scalar().elem::<f64>();
    Ok(Some(diff / scale.max(f64::MIN_POSITIVE)))
}
