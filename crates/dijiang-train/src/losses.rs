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
    let (per_position, p, log_q) = per_position_kl(teacher, student, temperature);
    (per_position.mean().mul_scalar(temperature * temperature), p, log_q)
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

/// [`kl_divergence`] with a weight per position (`weights`: `[b, t, 1]`, >= 0): the weighted mean
/// of the per-position KLs, `sum_t w_t KL_t / sum_t w_t` (times `temperature^2`); all weights 1
/// is [`kl_divergence`], all 0 gives 0. An on-policy stage weighs the student's written positions
/// by the loss's `written_kl` ([`crate::objective::Objective`]).
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]`, weights: `[b, t, 1]` -> `[1]`
pub fn weighted_kl_divergence<B: Backend>(
    teacher: Tensor<B, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
    weights: Tensor<B, 3>,
) -> Tensor<B, 1> {
    let (per_position, _, _) = per_position_kl(teacher, student, temperature);
    let total = weights.clone().sum().into_scalar().elem::<f64>();
    (per_position * weights).sum().mul_scalar(temperature * temperature / total.max(f64::MIN_POSITIVE))
}

/// The per-position KL(teacher || student) at `temperature` (`[b, t, 1]`, not yet scaled by
/// `temperature^2`), the teacher's probabilities and the student's log-probabilities.
fn per_position_kl<B: Backend>(
    teacher: Tensor<B, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let teacher = teacher.div_scalar(temperature);
    let log_p = log_softmax(teacher.clone(), 2);
    let p = softmax(teacher, 2);
    let log_q = log_softmax(student.div_scalar(temperature), 2);
    ((p.clone() * (log_p - log_q.clone())).sum_dim(2), p, log_q)
}

/// [`weighted_kl_divergence`] for training (the teacher is a constant): the same value; its
/// gradient with respect to the student's logits is `temperature * w_t (q - p) / sum_t w_t`.
///
/// # Shapes
/// - teacher, student: `[b, t, vocab]`, weights: `[b, t, 1]` -> `[1]`
pub fn weighted_kl_divergence_train<B: AutodiffBackend>(
    teacher: Tensor<B::InnerBackend, 3>,
    student: Tensor<B, 3>,
    temperature: f64,
    weights: Tensor<B::InnerBackend, 3>,
) -> Tensor<B, 1> {
    let (per_position, p, log_q) = per_position_kl(teacher, student.clone().inner(), temperature);
    let total = weights.clone().sum().into_scalar().elem::<f64>().max(f64::MIN_POSITIVE);
    let value = (per_position * weights.clone()).sum().mul_scalar(temperature * temperature / total);
    let grad = (log_q.exp() - p) * weights.mul_scalar(temperature / total);
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

/// Sequence-level unlikelihood (Welleck et al., "Neural Text Generation with Unlikelihood
/// Training", arXiv 1908.04319): `-ln(1 - p(token))` at each position whose `unlikely` entry is a
/// token (not [`IGNORED`]), summed and divided by `positions` (the positions the penalties were
/// looked for at: a rollout's written ones), so a continuation that repeats twice as much costs
/// twice as much. `1 - p` is floored at [`UNLIKELY_FLOOR`]: a token the student is sure of costs
/// at most `ln(1e5)`, not infinity.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, unlikely: `[b, t]` -> `[1]`
pub fn unlikelihood<B: Backend>(logits: Tensor<B, 3>, unlikely: Tensor<B, 2, Int>, positions: usize) -> Tensor<B, 1> {
    let parts = unlikelihood_parts(logits, unlikely);
    let penalties = parts.one_minus.log().neg() * parts.mask;
    penalties.sum().div_scalar(positions.max(1) as f64)
}

/// The floor of `1 - p` in [`unlikelihood`].
pub const UNLIKELY_FLOOR: f64 = 1e-5;

/// What [`unlikelihood`] reads, kept for its training twin's gradient.
struct UnlikelihoodParts<B: Backend> {
    /// `[b, t, vocab]`
    probs: Tensor<B, 3>,
    /// `[b, t, 1]`: the penalised tokens, the ignored ones pointing at word 0.
    tokens: Tensor<B, 3, Int>,
    /// `[b, t, 1]`: the penalised token's probability.
    picked: Tensor<B, 3>,
    /// `[b, t, 1]`: `1 - picked`, floored.
    one_minus: Tensor<B, 3>,
    /// `[b, t, 1]`: 1 where a token is penalised, 0 elsewhere.
    mask: Tensor<B, 3>,
}

fn unlikelihood_parts<B: Backend>(logits: Tensor<B, 3>, unlikely: Tensor<B, 2, Int>) -> UnlikelihoodParts<B> {
    let [b, t, _] = logits.dims();
    let unlikely = unlikely.reshape([b, t, 1]);
    let mask = unlikely.clone().not_equal_elem(IGNORED).float();
    let tokens = unlikely.clamp_min(0);
    let probs = log_softmax(logits, 2).exp();
    let picked = probs.clone().gather(2, tokens.clone());
    let one_minus = picked.clone().neg().add_scalar(1.0).clamp_min(UNLIKELY_FLOOR);
    UnlikelihoodParts { probs, tokens, picked, one_minus, mask }
}

/// [`unlikelihood`] for training: the same value; its gradient with respect to the logits is
/// `p_y / (1 - p_y) * (one_hot(y) - softmax) / positions` at the penalised positions (the
/// derivative of `-ln(1 - p_y)`), 0 elsewhere. Where the floor holds (`p_y > 1 - 1e-5`) it keeps
/// that form with the floored `1 - p_y`, still bounded (its entries sum to at most `2 p_y`), where
/// autodiff through the clamp would give 0: the surest repeats are the ones to push down.
///
/// # Shapes
/// - logits: `[b, t, vocab]`, unlikely: `[b, t]` -> `[1]`
pub fn unlikelihood_train<B: AutodiffBackend>(
    logits: Tensor<B, 3>,
    unlikely: Tensor<B::InnerBackend, 2, Int>,
    positions: usize,
) -> Tensor<B, 1> {
    let parts = unlikelihood_parts(logits.clone().inner(), unlikely);
    let scale = 1.0 / positions.max(1) as f64;
    let value = (parts.one_minus.clone().log().neg() * parts.mask.clone()).sum().mul_scalar(scale);
    let coef = (parts.picked / parts.one_minus * parts.mask).mul_scalar(scale);
    let grad = (parts.probs * coef.clone()).neg().scatter(2, parts.tokens, coef, IndexingUpdateOp::Add);
    with_gradient(logits, value, grad)
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

    type Loss = Box<dyn Fn(Tensor<A, 3>) -> Tensor<A, 1>>;

    /// A loss of the student's logits that also reads its own copy of `x` (targets or teacher).
    fn with<T: Clone + 'static>(x: &T, loss: impl Fn(T, Tensor<A, 3>) -> Tensor<A, 1> + 'static) -> Loss {
        let x = x.clone();
        Box::new(move |s| loss(x.clone(), s))
    }

    /// Each vocabulary term's plain reference (autodiff goes through it) and its training twin, on
    /// the given targets (also the unlikelihood's tokens) and teacher logits.
    fn twins(targets: Tensor<B, 2, Int>, teacher: Tensor<B, 3>) -> Vec<(&'static str, Loss, Loss)> {
        let weights = || {
            Tensor::<B, 3>::from_data(
                [[[1.0], [0.0], [0.25], [1.0], [1.0]], [[0.0], [1.0], [1.0], [0.5], [0.0]]],
                &Default::default(),
            )
        };
        vec![
            (
                "cross-entropy",
                with(&targets, |t, s| cross_entropy(s, Tensor::from_inner(t))),
                with(&targets, |t, s| cross_entropy_train(s, t)),
            ),
            (
                "kl at temperature 2",
                with(&teacher, |t, s| kl_divergence(Tensor::from_inner(t), s, 2.0)),
                with(&teacher, |t, s| kl_divergence_train(t, s, 2.0)),
            ),
            (
                "reverse kl at temperature 2",
                with(&teacher, |t, s| reverse_kl_divergence(Tensor::from_inner(t), s, 2.0)),
                with(&teacher, |t, s| reverse_kl_divergence_train(t, s, 2.0)),
            ),
            (
                "kl at temperature 2, positions weighted",
                with(&teacher, move |t, s| {
                    weighted_kl_divergence(Tensor::from_inner(t), s, 2.0, Tensor::from_inner(weights()))
                }),
                with(&teacher, move |t, s| weighted_kl_divergence_train(t, s, 2.0, weights())),
            ),
            (
                "unlikelihood over 7 positions",
                with(&targets, |t, s| unlikelihood(s, Tensor::from_inner(t), 7)),
                with(&targets, |t, s| unlikelihood_train(s, t, 7)),
            ),
        ]
    }

    /// The training twins give their references' values and autodiff's gradients.
    #[test]
    fn training_twins_match_autodiff_through_the_references() {
        let shape = [2, 5, 37];
        // One ignored position: the twin's gradient there is 0, as autodiff's through the mask.
        let targets = Tensor::<B, 2, Int>::from_data([[0, 36, 5, 5, 17], [1, 2, IGNORED, 30, 36]], &Default::default());
        let student = || Tensor::<A, 3>::from_inner(logits(1, shape)).require_grad();
        let teacher = logits(2, shape);
        let pairs = twins(targets, teacher);
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

    /// Weights of 1 give the plain KL; weights of 0 drop their positions, as if sliced out.
    #[test]
    fn weighted_kl_is_the_kl_over_the_weighted_positions() {
        let device = Default::default();
        let (teacher, student) = (logits(4, [1, 4, 9]), logits(5, [1, 4, 9]));
        let ones = Tensor::<B, 3>::ones([1, 4, 1], &device);
        let plain = kl_divergence(teacher.clone(), student.clone(), 2.0).into_scalar();
        let weighted = weighted_kl_divergence(teacher.clone(), student.clone(), 2.0, ones).into_scalar();
        assert!((plain - weighted).abs() <= 1e-6 * plain.abs(), "{weighted} vs {plain}");
        let data = Tensor::<B, 3>::from_data([[[1.0], [1.0], [0.0], [0.0]]], &device);
        let got = weighted_kl_divergence(teacher.clone(), student.clone(), 2.0, data).into_scalar();
        let sliced = |x: Tensor<B, 3>| x.slice([0..1, 0..2]);
        let want = kl_divergence(sliced(teacher), sliced(student), 2.0).into_scalar();
        assert!((got - want).abs() <= 1e-6 * want.abs(), "{got} vs {want}");
    }

    /// Unlikelihood written out: `-ln(1 - p)` of the penalised tokens over the given count, its
    /// floor for a token the student is sure of, and nothing to push down giving 0.
    #[test]
    fn unlikelihood_matches_its_definition() {
        let device = Default::default();
        let z = [[0.0f32, 1.0, 2.0], [30.0, 0.0, 0.0]];
        let logits = Tensor::<B, 3>::from_data([z], &device);
        let p = |row: [f32; 3], j: usize| {
            let e = row.map(|x| (x as f64).exp());
            e[j] / e.iter().sum::<f64>()
        };
        let got = unlikelihood(logits.clone(), Tensor::from_data([[2, IGNORED]], &device), 4).into_scalar() as f64;
        let want = -(1.0 - p(z[0], 2)).ln() / 4.0;
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        let sure = unlikelihood(logits.clone(), Tensor::from_data([[IGNORED, 0]], &device), 1).into_scalar() as f64;
        assert!((sure + UNLIKELY_FLOOR.ln()).abs() < 1e-3, "floored: {sure}");
        let none = unlikelihood(logits, Tensor::from_data([[IGNORED, IGNORED]], &device), 0).into_scalar();
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
