//! One optimizer step: each micro-batch's loss and gradients, accumulated; the gradients averaged
//! across workers together with the step's numbers and signals; global-norm clipping; the AdamW
//! update (of this worker's share when the optimizer state is sharded), skipped when the loss or
//! the gradient norm is not finite. The trainer and the benchmark
//! both take their steps through [`step`].

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::LmBatch;
use dijiang_model::Transformer;

use crate::distributed::Reducer;
use crate::error::Result;
use crate::experiment::{LrScale, Recompute};
use crate::objective::{Objective, TermValues};
use crate::optim::{AdamW, Rates};
use crate::{recompute, transfer};

/// What every worker must agree on after a step, besides the gradients: any worker's signal is
/// every worker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// Checkpoint and stop after this step (Ctrl-C).
    pub stop: bool,
    /// Stop without saving: a worker failed after the previous step (its error is the run's).
    pub abort: bool,
}

impl Signals {
    fn to_values(self) -> [f64; 2] {
        [f64::from(u8::from(self.stop)), f64::from(u8::from(self.abort))]
    }

    /// From values averaged over workers: set if any worker set it.
    fn from_values(values: &[f64]) -> Self {
        Self { stop: values[0] > 0.0, abort: values[1] > 0.0 }
    }
}

/// A step's inputs besides the student and its optimizer.
pub struct StepInputs<'a, B: AutodiffBackend> {
    pub objective: &'a Objective,
    /// The frozen teacher (`None` when the objective does not read it).
    pub teacher: Option<&'a Transformer<B::InnerBackend>>,
    /// This worker's micro-batches (their gradients are averaged).
    pub micro_batches: Vec<LmBatch<B::InnerBackend>>,
    pub lr: f64,
    /// The learning rate's multiplier per parameter group.
    pub lr_scale: LrScale,
    /// What backward recomputes instead of keeping.
    pub recompute: Recompute,
    /// Global-norm clipping threshold (0: off).
    pub clip: f64,
    pub signals: Signals,
}

/// What a step did.
#[derive(Debug, Clone)]
pub struct StepRecord {
    /// The loss terms, averaged over micro-batches and workers.
    pub terms: TermValues,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Whether the update was applied (the loss and gradient norm were finite).
    pub applied: bool,
    /// The signals of all workers.
    pub signals: Signals,
}

impl StepRecord {
    /// The step's metric tags and values.
    pub fn tagged(&self) -> Vec<(String, f64)> {
        let mut values = vec![
            ("train/loss".to_string(), self.terms.total),
            ("train/lr".to_string(), self.lr),
            ("train/grad_norm".to_string(), self.grad_norm),
        ];
        values.extend(self.terms.tagged());
        values
    }
}

/// Takes one optimizer step of `student`.
pub fn step<B: AutodiffBackend>(
    student: Transformer<B>,
    optimizer: &mut AdamW<B::InnerBackend>,
    inputs: StepInputs<'_, B>,
    reducer: &mut Reducer<B::InnerBackend>,
) -> Result<(Transformer<B>, StepRecord)> {
    let (grads, terms) = accumulate(&student, &inputs);
    let mut values = terms.to_vec();
    let n = values.len();
    values.extend(inputs.signals.to_values());
    let (grads, values) = reducer.average(&student, grads, values)?;
    let terms = terms.with_values(&values[..n]);
    let signals = Signals::from_values(&values[n..]);
    let grad_norm = AdamW::grad_norm(&student, &grads);
    let applied = terms.total.is_finite() && grad_norm.is_finite();
    let student = if applied {
        let scale = if inputs.clip > 0.0 && grad_norm > inputs.clip { inputs.clip / (grad_norm + 1e-6) } else { 1.0 };
        let lr = |name: &str| inputs.lr * inputs.lr_scale.of(name);
        // Each worker updates what it owns (everything, unless the state is sharded), then the
        // owners hand their parameters to the others.
        let student =
            optimizer.step(student, grads, Rates { lr: &lr, grad_scale: scale }, &|name| reducer.updates(name));
        reducer.share_updates(student)?
    } else {
        student
    };
    Ok((student, StepRecord { terms, grad_norm, lr: inputs.lr, applied, signals }))
}

/// The gradients of the mean loss over the micro-batches, and its terms.
fn accumulate<B: AutodiffBackend>(
    student: &Transformer<B>,
    inputs: &StepInputs<'_, B>,
) -> (GradientsParams, TermValues) {
    if inputs.objective.is_layer_local() {
        let teacher = inputs.teacher.expect("attention transfer reads the teacher");
        return transfer::accumulate(student, teacher, inputs.objective, &inputs.micro_batches);
    }
    if inputs.recompute == Recompute::Blocks {
        return recompute::accumulate(student, inputs.teacher, inputs.objective, &inputs.micro_batches);
    }
    let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
    let mut terms = TermValues::zeros(inputs.objective);
    let scale = 1.0 / inputs.micro_batches.len() as f64;
    for batch in &inputs.micro_batches {
        let (loss, values) = inputs.objective.loss(student, inputs.teacher, batch);
        terms.add_scaled(&values, scale);
        let grads = loss.mul_scalar(scale).backward();
        accumulator.accumulate(student, GradientsParams::from_grads(grads, student));
    }
    (accumulator.grads(), terms)
}
