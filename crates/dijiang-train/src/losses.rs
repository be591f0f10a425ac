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
/// Summed per position, then averaged: one f32 sum over all `b * t * vocab` terms (196,608 for 12
/// windows of 32 tokens and 512 words) carried a rounding error of ~1e-5 relative, enough to make
/// the same batch's KL differ by that much when split across data-parallel workers.
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]` -> `[1]`
pub fn kl_divergence<B: Backend>(teacher: Tensor<B, 3>, student: Tensor<B, 3>, temperature: f64) -> Tensor<B, 1> {
    let teacher = teacher.div_scalar(temperature);
    let log_p = log_softmax(teacher.clone(), 2);
    let p = softmax(teacher, 2);
    let log_q = log_softmax(student.div_scalar(temperature), 2);
    (p * (log_p - log_q)).sum_dim(2).mean().mul_scalar(temperature * temperature)
}

/// Mean squared error over all elements (summed in an order that threads do not change).
pub fn mse<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 1> {
    dijiang_model::reduce::mean((a - b).square())
}

/// KL(p || s) between attention rows, `s` being `raw` divided by its row sums, averaged over rows:
/// `sum_j p_j (ln p_j - ln raw_j) + ln sum_j raw_j`. Zero entries (masked positions) of `p`
/// contribute nothing.
///
/// # Shapes
/// - p (rows summing to 1), raw (non-negative): `[b, h, t, t_k]` -> `[1]`
pub fn row_kl<B: Backend>(p: Tensor<B, 4>, raw: Tensor<B, 4>) -> Tensor<B, 1> {
    const TINY: f64 = 1e-30;
    let log_sum = raw.clone().sum_dim(3).clamp_min(TINY).log();
    let cross = (p.clone() * raw.clamp_min(TINY).log()).sum_dim(3);
    let neg_entropy = (p.clone() * p.clamp_min(TINY).log()).sum_dim(3);
    (neg_entropy - cross + log_sum).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = dijiang_model::cpu::Cpu;

    #[test]
    fn row_kl_is_zero_for_equal_rows_and_matches_the_definition() {
        let device = Default::default();
        // Two rows of 3 keys; the second row's last key is masked (0 in p and raw).
        let p = Tensor::<B, 1>::from_floats([0.2, 0.3, 0.5, 0.6, 0.4, 0.0], &device).reshape([1, 1, 2, 3]);
        let same = row_kl(p.clone(), p.clone().mul_scalar(7.0)).into_scalar();
        assert!(same.abs() < 1e-6, "{same}");
        let raw = Tensor::<B, 1>::from_floats([1.0, 1.0, 2.0, 3.0, 1.0, 0.0], &device).reshape([1, 1, 2, 3]);
        let q: [[f64; 3]; 2] = [[0.25, 0.25, 0.5], [0.75, 0.25, 0.0]];
        let p_rows: [[f64; 3]; 2] = [[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]];
        let expected: f64 = (0..2)
            .map(|r| {
                (0..3)
                    .filter(|&j| p_rows[r][j] > 0.0)
                    .map(|j| p_rows[r][j] * (p_rows[r][j] / q[r][j]).ln())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / 2.0;
        let got = f64::from(row_kl(p, raw).into_scalar());
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }
}
