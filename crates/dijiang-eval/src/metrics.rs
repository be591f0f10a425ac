//! lm-eval's per-document metrics and their aggregation, with its standard errors
//! (`lm_eval/api/metrics.py`):
//!
//! - `acc`: the choice with the highest summed log-probability is the gold one (`np.argmax`: the
//!   first of equal maxima); `acc_norm`: the same after dividing each by its choice's length in
//!   characters; aggregated as the mean, standard error `sample_stddev / sqrt(n)`;
//! - LAMBADA: `acc` is whether the target is the greedy continuation; `perplexity` is
//!   `exp(-mean log-likelihood)`, whose standard error lm-eval bootstraps (100,000 resamples in
//!   chunks of 1,000, chunk `i` drawn by `random.Random(i)`), reproduced here draw for draw;
//! - groups (MMLU): the size-weighted mean of the subtasks, standard error pooled
//!   (`pooled_sample_stderr`).

use serde::{Deserialize, Serialize};

use crate::loglikelihood::LogLikelihood;
use crate::pyrandom::PyRandom;
use crate::task::Metric;

/// One aggregated metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    pub metric: Metric,
    pub value: f64,
    /// `None` where lm-eval reports "N/A" (fewer than two documents, or no bootstrap).
    pub stderr: Option<f64>,
}

/// `sum(xs) / len(xs)`.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The standard deviation with Bessel's correction (`None` for fewer than two values).
pub fn sample_stddev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let mu = mean(xs);
    Some((xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

/// lm-eval's `mean_stderr`: `sample_stddev / sqrt(n)`.
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    sample_stddev(xs).map(|s| s / (xs.len() as f64).sqrt())
}

/// `np.argmax`: the index of the first maximum.
pub fn argmax_first(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// `(acc, acc_norm)` of one multiple-choice document: 1.0 where the (length-normalised) argmax is
/// the gold choice. Lengths are Python's `len(choice)`: characters (code points).
pub fn multiple_choice(scores: &[LogLikelihood], choices: &[String], gold: usize) -> (f64, f64) {
    let lls: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
    let normed: Vec<f64> = lls.iter().zip(choices).map(|(ll, c)| ll / c.chars().count() as f64).collect();
    let hit = |i: usize| if i == gold { 1.0 } else { 0.0 };
    (hit(argmax_first(&lls)), hit(argmax_first(&normed)))
}

/// lm-eval's `perplexity` aggregation: `exp(-mean(log-likelihoods))`.
pub fn perplexity(lls: &[f64]) -> f64 {
    (-mean(lls)).exp()
}

/// lm-eval's `bootstrap_stderr(f, xs, iters)`: the sample standard deviation of `f` over
/// `(iters / chunk) * chunk` resamples with replacement, chunk = min(1000, iters), chunk `i`
/// drawn by `random.Random(i)`. `None` for `iters == 0` or an empty sample.
pub fn bootstrap_stderr(xs: &[f64], iters: usize, f: impl Fn(&[f64]) -> f64) -> Option<f64> {
    if iters == 0 || xs.is_empty() {
        return None;
    }
    let chunk = iters.min(1000);
    let mut replicates = Vec::with_capacity(iters);
    let mut sample = vec![0.0; xs.len()];
    for i in 0..iters / chunk {
        let mut rng = PyRandom::new(i as u64);
        for _ in 0..chunk {
            sample.iter_mut().for_each(|s| *s = xs[rng.choice_index(xs.len())]);
            replicates.push(f(&sample));
        }
    }
    sample_stddev(&replicates)
}

/// lm-eval's `pooled_sample_stderr`: a group's standard error from its subtasks' standard
/// errors and sizes (the pooled variance, `sum((n_i - 1) * se_i^2 * n_i) / (N - k)`, over `N`).
pub fn pooled_sample_stderr(stderrs: &[f64], sizes: &[usize]) -> f64 {
    let total: usize = sizes.iter().sum();
    let pooled_var: f64 = stderrs.iter().zip(sizes).map(|(se, &n)| (n as f64 - 1.0) * se * se * n as f64).sum::<f64>()
        / (total - sizes.len()) as f64;
    (pooled_var / total as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(logprob: f64) -> LogLikelihood {
        LogLikelihood { logprob, greedy: false }
    }

    #[test]
    fn acc_and_acc_norm_by_character_length() {
        // Raw: choice 0 wins (-4 > -6); per character: -4/2 = -2 against -6/6 = -1, choice 1 wins.
        let choices = ["ab".to_string(), "abcdéf".to_string()];
        let scores = [ll(-4.0), ll(-6.0)];
        assert_eq!(multiple_choice(&scores, &choices, 0), (1.0, 0.0));
        assert_eq!(multiple_choice(&scores, &choices, 1), (0.0, 1.0));
        // Ties go to the first choice, as np.argmax does.
        assert_eq!(multiple_choice(&[ll(-1.0), ll(-1.0)], &["a".into(), "b".into()], 1), (0.0, 0.0));
    }

    #[test]
    fn mean_stderr_is_the_sample_stderr() {
        // acc over 4 documents, 3 right: mean 0.75; by hand:
        // deviations 0.25, 0.25, 0.25, -0.75 -> squares sum 0.75, / 3 = 0.25, sd 0.5, / 2 = 0.25.
        let xs = [1.0, 1.0, 1.0, 0.0];
        assert_eq!(mean(&xs), 0.75);
        assert!((mean_stderr(&xs).unwrap() - 0.25).abs() < 1e-15);
        assert_eq!(mean_stderr(&[1.0]), None);
    }

    #[test]
    fn perplexity_of_log_likelihoods() {
        // Two targets with log-likelihoods ln(1/2) and ln(1/8): mean ln(1/4), perplexity 4.
        let lls = [(0.5f64).ln(), (0.125f64).ln()];
        assert!((perplexity(&lls) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_matches_lm_eval() {
        // lm-eval 0.4.13 `bootstrap_stderr(perplexity, xs, iters=2000)` in Python 3.
        let xs = [-1.0, -2.5, -0.25, -4.0, -1.5];
        let se = bootstrap_stderr(&xs, 2000, perplexity).unwrap();
        assert!((se - PYTHON_BOOTSTRAP).abs() < 1e-12, "{se}");
        assert_eq!(bootstrap_stderr(&xs, 0, perplexity), None);
    }

    const PYTHON_BOOTSTRAP: f64 = 5.067502123680704;

    #[test]
    fn pooled_stderr_of_equal_groups() {
        // Two subtasks of 3 documents each, [1, 1, 0] and [1, 0, 0]: each sample variance 1/3,
        // so the pooled variance is 1/3 and the stderr sqrt(1/3 / 6).
        let a = mean_stderr(&[1.0, 1.0, 0.0]).unwrap();
        let b = mean_stderr(&[1.0, 0.0, 0.0]).unwrap();
        let pooled = pooled_sample_stderr(&[a, b], &[3, 3]);
        assert!((pooled - (1.0f64 / 3.0 / 6.0).sqrt()).abs() < 1e-15);
    }
}
