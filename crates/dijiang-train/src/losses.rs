//! The loss terms, on any backend (autodiff for training, the inner one for evaluation).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Mean next-token cross-entropy.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, targets: `[b, t]` -> `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, t, _] = logits.dims();
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.gather(2, targets.reshape([b, t, 1]));
    picked.mean().neg()
}

/// KL(teacher || student) of the next-token distributions at `temperature`, summed over the
/// vocabulary, averaged over positions and scaled by `temperature^2` (Hinton et al.), so that its
/// gradients keep their size when the temperature changes.
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]` -> `[1]`
pub fn kl_divergence<B: Backend>(teacher: Tensor<B, 3>, student: Tensor<B, 3>, temperature: f64) -> Tensor<B, 1> {
    let [b, t, _] = teacher.dims();
    let teacher = teacher.div_scalar(temperature);
    let log_p = log_softmax(teacher.clone(), 2);
    let p = softmax(teacher, 2);
    let log_q = log_softmax(student.div_scalar(temperature), 2);
    (p * (log_p - log_q)).sum().div_scalar((b * t) as f64).mul_scalar(temperature * temperature)
}

/// Mean squared error over all elements.
pub fn mse<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 1> {
    (a - b).square().mean()
}
