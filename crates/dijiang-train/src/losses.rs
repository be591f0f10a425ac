//! The loss terms, on any backend (autodiff for training, the inner one for evaluation).
//!
//! The terms over the vocabulary have a training twin ([`cross_entropy_train`],
//! [`kl_divergence_train`], [`reverse_kl_divergence_train`]): the same value (to an ulp), with the gradient with respect to the student's logits
//! given in closed form instead of by autodiff. Autodiff's way back through log-softmax, gather and
//! the products makes about ten passes over the `[b, t, vocab]` logits (412 MB for pythia-70m at
//! 2,048 tokens), each into a fresh allocation; the closed form makes two or three. The plain
//! functions stay the reference the twins are tested against.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::AutodiffBackend;

/// The target of a position no loss is taken at (PyTorch's `ignore_index`): an on-policy
/// rollout's written positions, whose next tokens are the student's own samples, not data.
pub const IGNORED: i64 = -100;

/// Mean next-token cross-entropy over the positions whose target is not [`IGNORED`].
///
/// # Shapes
/// - logits: `[b, t, vocab]`, targets: `[b, t]` -> `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    cross_entropy_parts(logits, targets).value
}

/// What [`cross_entropy`] reads and computes, kept for its training twin's gradient.
struct CrossEntropyParts<B: Backend> {
    value: Tensor<B, 1>,
    /// `[b, t, vocab]`
    log_probs: Tensor<B, 3>,
    /// `[b, t, 1]`: the targets, the ignored ones pointing at word 0.
    targets: Tensor<B, 3, Int>,
    /// `[b, t, 1]`: 1 at the counted positions, 0 at the ignored ones.
    mask: Tensor<B, 3>,
    /// How many positions are counted.
    positions: usize,
}

fn cross_entropy_parts<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> CrossEntropyParts<B> {
    let [b, t, _] = logits.dims();
    let targets = targets.reshape([b, t, 1]);
    let counted = targets.clone().not_equal_elem(IGNORED);
    let mask = counted.clone().float();
    let positions = counted.int().sum().into_scalar().elem::<i64>() as usize;
    let targets = targets.clamp_min(0);
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.clone().gather(2, targets.clone()) * mask.clone();
    let value = picked.sum().div_scalar(positions.max(1) as f64).neg();
    CrossEntropyParts { value, log_probs, targets, mask, positions }
}

/// [`cross_entropy`] for training: the same value; its gradient with respect to the logits is
/// `(softmax - one_hot(target)) / positions` at the counted positions, 0 at the ignored ones.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, targets: `[b, t]` -> `[1]`
pub fn cross_entropy_train<B: AutodiffBackend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B::InnerBackend, 2, Int>,
) -> Tensor<B, 1> {
    let [b, t, _] = logits.dims();
    let parts = cross_entropy_parts(logits.clone().inner(), targets);
    let scale = 1.0 / parts.positions.max(1) as f64;
    let picked = Tensor::full([b, t, 1], -scale, &parts.log_probs.device());
    let grad = parts.log_probs.exp().mul_scalar(scale).scatter(2, parts.targets, picked, IndexingUpdateOp::Add);
    with_gradient(logits, parts.value, grad * parts.mask)
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
    kl_divergence_parts(teacher, student, temperature).0
}

/// [`kl_divergence`]'s value, the teacher's probabilities `p` and the student's log-probabilities
/// `log_q` (both at `temperature`).
fn kl_divergence_parts<B: Backend>(
    teacher: Tensor<B, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> (Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 3>) {
    let teacher = teacher.div_scalar(temperature);
    let log_p = log_softmax(teacher.clone(), 2);
    let p = softmax(teacher, 2);
    let log_q = log_softmax(student.div_scalar(temperature), 2);
    let value = (p.clone() * (log_p - log_q.clone())).sum_dim(2).mean().mul_scalar(temperature * temperature);
    (value, p, log_q)
}

/// [`kl_divergence`] for training (the teacher is a constant): the same value; its gradient with
/// respect to the student's logits is `temperature * (q - p) / positions`.
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]` -> `[1]`
pub fn kl_divergence_train<B: AutodiffBackend>(
    teacher: Tensor<B::InnerBackend, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [b, t, _] = student.dims();
    let (value, p, log_q) = kl_divergence_parts(teacher, student.clone().inner(), temperature);
    let grad = (log_q.exp() - p).mul_scalar(temperature / (b * t) as f64);
    with_gradient(student, value, grad)
}

/// KL(student || teacher), the reverse direction of [`kl_divergence`]: the same temperature,
/// per-position sum and `temperature^2` scale. It is mode-seeking: a word the student likes and the
/// teacher does not costs `q log(q / p)`, large where `p` is small, so the student is pushed off
/// continuations the teacher would not write (MiniLLM, arXiv 2306.08543, argues this for
/// generation; the forward direction spreads the student over every word the teacher might say).
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]` -> `[1]`
pub fn reverse_kl_divergence<B: Backend>(
    teacher: Tensor<B, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 1> {
    reverse_kl_divergence_parts(teacher, student, temperature).0
}

/// [`reverse_kl_divergence`]'s value, the student's probabilities `q`, `log q - log p` and its
/// per-position sums `sum q (log q - log p)` (`[b, t, 1]`), all at `temperature`.
fn reverse_kl_divergence_parts<B: Backend>(
    teacher: Tensor<B, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> (Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let log_p = log_softmax(teacher.div_scalar(temperature), 2);
    let log_q = log_softmax(student.div_scalar(temperature), 2);
    let q = log_q.clone().exp();
    let log_ratio = log_q - log_p;
    let per_position = (q.clone() * log_ratio.clone()).sum_dim(2);
    let value = per_position.clone().mean().mul_scalar(temperature * temperature);
    (value, q, log_ratio, per_position)
}

/// [`reverse_kl_divergence`] for training (the teacher is a constant): the same value; its
/// gradient with respect to the student's logits is
/// `temperature * q * (log q - log p - sum q (log q - log p)) / positions`.
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]` -> `[1]`
pub fn reverse_kl_divergence_train<B: AutodiffBackend>(
    teacher: Tensor<B::InnerBackend, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 1> {
    let [b, t, v] = student.dims();
    let (value, q, log_ratio, per_position) =
        reverse_kl_divergence_parts(teacher, student.clone().inner(), temperature);
    let grad = (q * (log_ratio - per_position.expand([b, t, v]))).mul_scalar(temperature / (b * t) as f64);
    with_gradient(student, value, grad)
}

/// `value` as a function of `input` whose gradient is `grad`: `s - detach(s) + value` with
/// `s = sum(input * grad)`. `s - detach(s)` is exactly zero for finite inputs (the same
/// operations on the same numbers), so the result is `value` to the bit; its gradient is `grad`.
/// Burn 0.21 has no backend-generic custom backward (a custom op is written per backend against
/// burn-autodiff's internals), so the closed-form gradient enters through this one product.
fn with_gradient<B: AutodiffBackend, const D: usize>(
    input: Tensor<B, D>,
    value: Tensor<B::InnerBackend, 1>,
    grad: Tensor<B::InnerBackend, D>,
) -> Tensor<B, 1> {
    let s = (input * Tensor::from_inner(grad)).sum();
    s.clone() - s.detach() + Tensor::from_inner(value)
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
    type A = burn::backend::Autodiff<B>;

    /// Scrambled logits with a spread like a language model's (several nats between words), the
    /// same on every call (no shared random generator between tests).
    fn logits(seed: u64, shape: [usize; 3]) -> Tensor<B, 3> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n as u64).map(|i| (((i + 1) * (seed + 7)) as f32 * 0.618).sin() * 6.0).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// The training twins give their references' values and autodiff's gradients.
    #[test]
    fn training_twins_match_autodiff_through_the_references() {
        let shape = [2, 5, 37];
        // One ignored position: the twin's gradient there is 0, as autodiff's through the mask.
        let targets = Tensor::<B, 2, Int>::from_data([[0, 36, 5, 5, 17], [1, 2, IGNORED, 30, 36]], &Default::default());
        let student = || Tensor::<A, 3>::from_inner(logits(1, shape)).require_grad();
        let teacher = logits(2, shape);
        type Loss = Box<dyn Fn(Tensor<A, 3>) -> Tensor<A, 1>>;
        let pairs: [(&str, Loss, Loss); 3] = [
            (
                "cross-entropy",
                Box::new({
                    let targets = targets.clone();
                    move |s| cross_entropy(s, Tensor::from_inner(targets.clone()))
                }),
                Box::new(move |s| cross_entropy_train(s, targets.clone())),
            ),
            (
                "kl at temperature 2",
                Box::new({
                    let teacher = teacher.clone();
                    move |s| kl_divergence(Tensor::from_inner(teacher.clone()), s, 2.0)
                }),
                Box::new({
                    let teacher = teacher.clone();
                    move |s| kl_divergence_train(teacher.clone(), s, 2.0)
                }),
            ),
            (
                "reverse kl at temperature 2",
                Box::new({
                    let teacher = teacher.clone();
                    move |s| reverse_kl_divergence(Tensor::from_inner(teacher.clone()), s, 2.0)
                }),
                Box::new(move |s| reverse_kl_divergence_train(teacher.clone(), s, 2.0)),
            ),
        ];
        for (name, reference, twin) in pairs {
            let (x, y) = (student(), student());
            let (want, got) = (reference(x.clone()), twin(y.clone()));
            // Measured: the cross-entropy to the bit, the KL one ulp apart (9.772734 vs 9.772735).
            let (w, g) = (want.clone().into_scalar(), got.clone().into_scalar());
            assert!((w - g).abs() <= 2e-7 * w.abs(), "{name}: value {g} vs {w}");
            // Weighted like an objective's term, so the gradient's scale is checked too.
            let (gw, gg) = (want.mul_scalar(0.7).backward(), got.mul_scalar(0.7).backward());
            let want_grad: Vec<f32> = x.grad(&gw).unwrap().into_data().to_vec().unwrap();
            let got_grad: Vec<f32> = y.grad(&gg).unwrap().into_data().to_vec().unwrap();
            let largest = want_grad.iter().fold(0f32, |m, g| m.max(g.abs()));
            for (i, (w, g)) in want_grad.iter().zip(&got_grad).enumerate() {
                assert!((w - g).abs() <= 1e-6 * largest.max(1e-3), "{name}: gradient {i}: {g} vs {w}");
            }
            assert!(largest > 1e-3, "{name}: a gradient worth comparing ({largest})");
        }
    }

    /// Ignored targets drop their positions: the mean is over the others alone, as if they were
    /// not there; all ignored gives 0, not a division by zero.
    #[test]
    fn cross_entropy_counts_only_the_targets_not_ignored() {
        let device = Default::default();
        let all = logits(3, [1, 4, 11]);
        let targets = Tensor::<B, 2, Int>::from_data([[4, IGNORED, 10, IGNORED]], &device);
        let got = cross_entropy(all.clone(), targets).into_scalar();
        let kept = Tensor::cat(vec![all.clone().slice([0..1, 0..1]), all.clone().slice([0..1, 2..3])], 1);
        let want = cross_entropy(kept, Tensor::<B, 2, Int>::from_data([[4, 10]], &device)).into_scalar();
        assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
        let none = cross_entropy(all, Tensor::<B, 2, Int>::full([1, 4], IGNORED, &device)).into_scalar();
        assert_eq!(none, 0.0);
    }

    /// Both directions of the KL against sums written out in f64, at temperature 2: the reverse
    /// one weighs by the student's probabilities, the forward one by the teacher's.
    #[test]
    fn the_two_kl_directions_match_their_definitions() {
        let device = Default::default();
        let (teacher, student) = ([[6.0, 0.0, -6.0], [0.5, 0.0, 3.0]], [[0.0, 0.5, 0.0], [0.5, 0.0, 3.0]]);
        let t = 2.0f64;
        let probs = |z: [f64; 3]| {
            let e = z.map(|x| (x / t).exp());
            let sum: f64 = e.iter().sum();
            e.map(|x| x / sum)
        };
        let kl = |a: [f64; 3], b: [f64; 3]| (0..3).map(|j| a[j] * (a[j] / b[j]).ln()).sum::<f64>();
        let mean_over_positions = |f: &dyn Fn([f64; 3], [f64; 3]) -> f64| {
            (0..2).map(|i| f(probs(teacher[i]), probs(student[i]))).sum::<f64>() / 2.0 * t * t
        };
        let forward = mean_over_positions(&|p, q| kl(p, q));
        let reverse = mean_over_positions(&|p, q| kl(q, p));
        let tensor = |rows: [[f64; 3]; 2]| {
            Tensor::<B, 2>::from_data(rows.map(|r| r.map(|x| x as f32)), &device).reshape([1, 2, 3])
        };
        let got_forward = f64::from(kl_divergence(tensor(teacher), tensor(student), t).into_scalar());
        let got_reverse = f64::from(reverse_kl_divergence(tensor(teacher), tensor(student), t).into_scalar());
        assert!(
            (got_forward - forward).abs() < 1e-5 * forward && (got_reverse - reverse).abs() < 1e-5 * reverse,
            "forward {got_forward} vs {forward}, reverse {got_reverse} vs {reverse}"
        );
        // A peaked teacher against a flat student at the first position: 1.94 forward, 3.92 reverse.
        assert!(reverse > 1.5 * forward, "the example tells the directions apart: {forward} vs {reverse}");
    }

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
