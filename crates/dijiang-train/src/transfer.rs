//! Layer-local attention transfer: every layer's student attention learns from the teacher's
//! trace of the same layer (its input, heads, attention output and rows), so the layers' graphs
//! are disjoint and a step needs neither a student forward through the model nor the LM head.
//!
//! A step streams the teacher's layers: the teacher's forward pass runs on a helper thread and
//! hands each layer's trace over as soon as the layer is done, while this thread computes that
//! layer's loss and backward and adds its gradients. On a one-core-per-thread CPU backend the two
//! halves overlap on two cores, and the result does not depend on the overlap (each half is the
//! same sequence of operations either way); only about three layers' traces and one layer's graph
//! are alive at a time, whatever the depth. The gradients equal those of the one-graph loss
//! (`Objective::loss`; tested in `tests/transfer.rs`): each parameter belongs to one layer.

use std::sync::mpsc::sync_channel;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::LmBatch;
use dijiang_model::{LayerTrace, Transformer};

use crate::objective::{Objective, TermValues};
use crate::params::{flat_values, params};

/// The gradients of a layer-local objective's mean loss over `micro_batches`, and its terms.
pub fn accumulate<B: AutodiffBackend>(
    student: &Transformer<B>,
    teacher: &Transformer<B::InnerBackend>,
    objective: &Objective,
    micro_batches: &[LmBatch<B::InnerBackend>],
) -> (GradientsParams, TermValues) {
    assert!(objective.is_layer_local(), "the objective {} is not layer-local", objective.describe());
    let shared = shares_heads(student, teacher);

    let scale = 1.0 / (micro_batches.len() * student.layers.len()) as f64;
    let mut accumulator = GradientsAccumulator::<Transformer<B>>::new();
    let mut terms = TermValues::zeros(objective);
    for batch in micro_batches {
        std::thread::scope(|scope| {
            // A buffer of one: the teacher runs at most two layers ahead of the student.
            let (send, receive) = sync_channel::<LayerTrace<B::InnerBackend>>(1);
            let tokens = batch.inputs.clone();
            let rows = objective.teacher_rows(tokens.dims()[1]);
            scope.spawn(move || {
                // A failed send means this thread stopped (it panicked): nothing left to do.
                teacher.trace_layers(tokens, rows, false, |trace| drop(send.send(trace)));
            });
            for (layer, trace) in receive.iter().enumerate() {
                let (loss, values) = objective.layer_loss(student, layer, &lift(&trace), shared);
                terms.add_scaled(&values, scale);
                let grads = loss.mul_scalar(scale).backward();
                accumulator.accumulate(student, GradientsParams::from_grads(grads, student));
            }
        });
    }
    (accumulator.grads(), terms)
}

/// A teacher's layer trace on the student's autodiff backend (constants: no gradient flows
/// into the teacher).
pub fn lift<B: AutodiffBackend>(trace: &LayerTrace<B::InnerBackend>) -> LayerTrace<B> {
    LayerTrace {
        input: Tensor::from_inner(trace.input.clone()),
        normed: Tensor::from_inner(trace.normed.clone()),
        heads: trace.heads.clone().map(Tensor::from_inner),
        attention: Tensor::from_inner(trace.attention.clone()),
        rows: trace.rows.clone().map(Tensor::from_inner),
    }
}

/// Whether every block's attention input side (`attn_norm`, q, k, v) of the student is frozen
/// and equal to the teacher's, so that the student's heads are the teacher's heads. True in
/// attention transfer right after conversion; false once a stage trained them (or when they
/// train now).
pub fn shares_heads<B: AutodiffBackend>(student: &Transformer<B>, teacher: &Transformer<B::InnerBackend>) -> bool {
    student.layers.len() == teacher.layers.len()
        && student.layers.iter().zip(&teacher.layers).all(|(s, t)| {
            frozen_equal(&s.attn_norm, &t.attn_norm)
                && frozen_equal(&s.attn.q, &t.attn.q)
                && frozen_equal(&s.attn.k, &t.attn.k)
                && frozen_equal(&s.attn.v, &t.attn.v)
        })
}

/// Whether no parameter of `student` trains and its values equal `teacher`'s exactly.
fn frozen_equal<B: AutodiffBackend, M: AutodiffModule<B>>(student: &M, teacher: &M::InnerModule) -> bool {
    if params(student).iter().any(|p| p.trainable) {
        return false;
    }
    let (a, b) = (flat_values(&student.valid()), flat_values(teacher));
    a.len() == b.len()
        && a.into_iter().zip(b).all(|(x, y)| {
            // Not equal if either holds a NaN: max(|NaN|) is NaN, and NaN == 0 is false.
            x.dims() == y.dims() && (x - y).abs().max().into_scalar().elem::<f64>() == 0.0
        })
}
