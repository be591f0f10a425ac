//! Exact block recomputation: a training step that keeps only the blocks' boundaries (the
//! embedding output and each block's output) instead of every activation of every block.
//!
//! A micro-batch's forward pass runs without autodiff and keeps the `L + 1` boundaries. Backward
//! then goes from the top: the final norm, head and loss from the last boundary (a leaf that asks
//! for its gradient), then each block recomputed from its input boundary with autodiff and
//! differentiated against the gradient arriving at its output (the surrogate `sum(y * g)`, whose
//! gradient with respect to `y` is `g` exactly), and last the embedding. Each piece's parameter
//! gradients are added to the step's as soon as they exist, so at most one block's graph and its
//! gradients are alive besides the boundaries: activation memory is `L` boundaries plus one block,
//! not `L` blocks. The result equals plain autodiff's up to the order of floating-point sums (the
//! tied embedding's two gradients are added in another order; tested in `tests/recompute.rs`).
//! The cost: every block's forward runs twice.
//!
//! PyTorch's `torch.utils.checkpoint` per decoder layer does the same; Burn 0.21's
//! `BalancedCheckpointing` works per operation and keeps every matmul output, so it cannot reach
//! one block's memory (see docs/memory.md).

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::LmBatch;
use dijiang_model::Transformer;

use crate::objective::{Objective, TermValues};
use crate::params::params;

/// The gradients of `objective`'s mean loss over `micro_batches` by block recomputation, and its
/// terms. The objective reads logits only (`lm`, `kl`; checked when the experiment is loaded).
pub fn accumulate<B: AutodiffBackend>(
    student: &Transformer<B>,
    teacher: Option<&Transformer<B::InnerBackend>>,
    objective: &Objective,
    micro_batches: &[LmBatch<B::InnerBackend>],
) -> (GradientsParams, TermValues) {
    let lowest = lowest_trainable(student);
    let inner = student.valid();
    let scale = 1.0 / micro_batches.len() as f64;
    let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
    let mut terms = TermValues::zeros(objective);
    for batch in micro_batches {
        let teacher_logits = objective.needs_teacher_logits().then(|| {
            let teacher = teacher.expect("an objective with kl reads the teacher");
            // The same pass (and values) as the one-graph step's teacher trace, keeping no layer.
            teacher.trace_layers(batch.inputs.clone(), None, true, drop).expect("asked for the logits")
        });
        let mut boundaries = inner.block_boundaries(batch.inputs.clone());
        let mut add = |grads: <B as AutodiffBackend>::Gradients| {
            accumulator.accumulate(student, GradientsParams::from_grads(grads, student));
        };

        // The head and the loss, from the last block's output.
        let last = leaf::<B>(boundaries.pop().expect("L + 1 boundaries"));
        let logits = student.logits_from_last(last.clone());
        let (loss, values) = objective.loss_from_logits(logits, teacher_logits, batch);
        terms.add_scaled(&values, scale);
        let mut grads = loss.mul_scalar(scale).backward();
        let mut upstream = last.grad(&grads).expect("the loss depends on the last block's output");
        add(grads);

        // The blocks, top down, each recomputed from its input, down to the lowest that trains.
        let Some(lowest) = lowest else { continue };
        for layer in (lowest..student.layers.len()).rev() {
            let input = leaf::<B>(boundaries.pop().expect("a boundary per block"));
            let output = student.block(layer, input.clone());
            grads = surrogate(output, upstream).backward();
            upstream = input.grad(&grads).expect("a block's output depends on its input");
            add(grads);
        }

        // The embedding, when it trains.
        if lowest == 0 && embedding_trains(student) {
            let x = student.embed_tokens(Tensor::from_inner(batch.inputs.clone()));
            add(surrogate(x, upstream).backward());
        }
    }
    (accumulator.grads(), terms)
}

/// A boundary as a leaf of a new graph whose gradient backward computes.
fn leaf<B: AutodiffBackend>(x: Tensor<B::InnerBackend, 3>) -> Tensor<B, 3> {
    Tensor::from_inner(x).require_grad()
}

/// `sum(y * g)`: backward from it puts exactly `g` on `y` (the sum's gradient is ones, times `g`).
fn surrogate<B: AutodiffBackend>(y: Tensor<B, 3>, g: Tensor<B::InnerBackend, 3>) -> Tensor<B, 1> {
    (y * Tensor::from_inner(g)).sum()
}

/// The lowest place a trainable parameter sits: `Some(0)` for the embedding or block 0, `Some(i)`
/// for block `i`, `None` when only the final norm or head train. Backward stops there: nothing
/// below needs a gradient.
fn lowest_trainable<B: AutodiffBackend>(student: &Transformer<B>) -> Option<usize> {
    let trainable: Vec<String> = params(student).into_iter().filter(|p| p.trainable).map(|p| p.name).collect();
    if trainable.iter().any(|name| name.starts_with("embed.")) {
        return Some(0);
    }
    (0..student.layers.len()).find(|i| {
        let prefix = format!("layers.{i}.");
        trainable.iter().any(|name| name.starts_with(&prefix))
    })
}

fn embedding_trains<B: AutodiffBackend>(student: &Transformer<B>) -> bool {
    params(student).iter().any(|p| p.trainable && p.name.starts_with("embed."))
}
