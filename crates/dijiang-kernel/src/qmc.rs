//! Scales for the DCT feature map: `t_i = Phi^{-1}(u_i)`, the diagonal of T (paper section 3.2,
//! docs/method.md sections 2, 3 and 5).
//!
//! The paper samples the `u_i` by quasi-Monte Carlo; the reference code draws them i.i.d. uniform
//! (plain Monte Carlo). Both are here:
//! - [`ScaleSampling::Qmc`]: the van der Corput sequence in base 2 (the one-dimensional Halton
//!   sequence), points `n = 1..=m`. Index 0 is skipped because it is 0, where `Phi^{-1}` is -inf.
//!   The sequence's order interleaves small and large scales over the frequencies (1/2, 1/4, 3/4,
//!   1/8, ...) instead of sorting them. An optional Cranley-Patterson rotation (`u + s mod 1` with
//!   a seeded uniform shift `s`) randomises it while keeping its low discrepancy.
//! - [`ScaleSampling::Mc`]: i.i.d. uniform draws, the reference's behaviour.
//!
//! Nothing reads global RNG state: every random choice takes its seed as an argument.

use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

/// Uniforms are kept inside `[U_MIN, 1 - U_MIN]` so that `Phi^{-1}` stays finite.
const U_MIN: f64 = 1e-12;

/// How the uniform points behind the scales `t_i` are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScaleSampling {
    /// Quasi-Monte Carlo: van der Corput base 2, optionally shifted by a seeded uniform offset.
    Qmc { shift_seed: Option<u64> },
    /// Monte Carlo: i.i.d. uniform draws from a seeded generator (the reference implementation).
    Mc { seed: u64 },
}

impl Default for ScaleSampling {
    fn default() -> Self {
        Self::Qmc { shift_seed: None }
    }
}

/// The radical inverse of `n` in base 2: the n-th point of the van der Corput sequence.
pub fn van_der_corput(n: u64) -> f64 {
    // Reversing the bits of n mirrors its binary digits around the radix point.
    (n.reverse_bits() >> 11) as f64 / (1u64 << 53) as f64
}

/// The inverse standard normal CDF `Phi^{-1}(p)` for `p` in (0, 1).
///
/// `statrs` computes it through `erfc_inv` (Boost's rational approximations), accurate to about
/// 1e-15 relative over (1e-300, 1 - 1e-16).
///
/// # Panics
/// If `p` is not strictly between 0 and 1.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "inverse_normal_cdf needs p in (0, 1), got {p}");
    Normal::standard().inverse_cdf(p)
}

/// `m` uniform points in (0, 1) drawn as `sampling` says.
pub fn uniform_points(m: usize, sampling: ScaleSampling) -> Vec<f64> {
    let points: Vec<f64> = match sampling {
        ScaleSampling::Qmc { shift_seed } => {
            let shift = shift_seed.map_or(0.0, |seed| StdRng::seed_from_u64(seed).random::<f64>());
            (1..=m as u64).map(|n| (van_der_corput(n) + shift).fract()).collect()
        }
        ScaleSampling::Mc { seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..m).map(|_| rng.random::<f64>()).collect()
        }
    };
    points.into_iter().map(|u| u.clamp(U_MIN, 1.0 - U_MIN)).collect()
}

/// The diagonal of T: `t_i = Phi^{-1}(u_i)` for the `m` points of `sampling`.
pub fn scales(m: usize, sampling: ScaleSampling) -> Vec<f64> {
    uniform_points(m, sampling).into_iter().map(inverse_normal_cdf).collect()
}

/// `n` standard normal draws from a seeded generator (inverse-CDF sampling), for random-feature
/// baselines.
pub fn standard_normals(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| inverse_normal_cdf(rng.random::<f64>().clamp(U_MIN, 1.0 - U_MIN))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use statrs::distribution::Continuous;

    /// Quantiles from CPython's `statistics.NormalDist().inv_cdf` (Wichura's AS241, double
    /// precision), an implementation independent of statrs.
    const QUANTILES: &[(f64, f64)] = &[
        (1e-12, -7.034483825301132),
        (1e-9, -5.9978070150076865),
        (1e-6, -4.753424308822899),
        (0.001, -3.090232306167813),
        (0.025, -1.9599639845400538),
        (0.1, -1.2815515655446008),
        (0.3, -0.5244005127080407),
        (0.5, 0.0),
        (0.7, 0.5244005127080407),
        (0.9, 1.2815515655446008),
        (0.975, 1.9599639845400536),
        (0.999, 3.090232306167813),
        (0.999999, 4.753424308817089),
        (0.999999999, 5.997807019601638),
        (0.999999999999, 7.0344869100478356),
    ];

    #[test]
    fn inverse_normal_cdf_matches_known_quantiles() {
        for &(p, want) in QUANTILES {
            let got = inverse_normal_cdf(p);
            assert!((got - want).abs() < 1e-9, "Phi^-1({p}) = {got}, want {want}");
        }
    }

    #[test]
    fn inverse_normal_cdf_inverts_the_cdf_across_the_range() {
        // Log-spaced p over (1e-12, 0.5), mirrored: x = Phi^-1(p) is off by at most
        // |CDF(x) - p| / pdf(x), which must stay below 1e-9.
        let normal = Normal::standard();
        for i in 0..=200 {
            let p = 10f64.powf(-12.0 + 12.0 * i as f64 / 200.0) * 0.5;
            for p in [p, 1.0 - p] {
                let x = inverse_normal_cdf(p);
                let error = (normal.cdf(x) - p).abs() / normal.pdf(x);
                assert!(error < 1e-9, "Phi^-1({p}) = {x} is off by about {error:e}");
            }
        }
    }

    #[test]
    fn van_der_corput_is_the_radical_inverse() {
        let want = [0.0, 0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875, 0.0625];
        for (n, w) in want.iter().enumerate() {
            assert_eq!(van_der_corput(n as u64), *w, "n = {n}");
        }
    }

    #[test]
    fn qmc_points_are_evenly_spread() {
        // The first 2^k - 1 points (n = 1..2^k-1) are exactly the grid j / 2^k, j = 1..2^k-1.
        let mut u = uniform_points(63, ScaleSampling::Qmc { shift_seed: None });
        u.sort_by(f64::total_cmp);
        for (j, uj) in u.iter().enumerate() {
            assert_eq!(*uj, (j + 1) as f64 / 64.0);
        }
        // Star discrepancy of QMC points is far below that of i.i.d. draws of the same size.
        let disc = |mut u: Vec<f64>| {
            u.sort_by(f64::total_cmp);
            let n = u.len() as f64;
            u.iter()
                .enumerate()
                .map(|(i, x)| ((i + 1) as f64 / n - x).abs().max((x - i as f64 / n).abs()))
                .fold(0.0, f64::max)
        };
        let qmc = disc(uniform_points(256, ScaleSampling::Qmc { shift_seed: Some(3) }));
        let mc = disc(uniform_points(256, ScaleSampling::Mc { seed: 3 }));
        assert!(qmc < 2.0 / 256.0, "QMC discrepancy {qmc}");
        assert!(mc > 2.0 * qmc, "MC discrepancy {mc} vs QMC {qmc}");
    }

    #[test]
    fn seeds_are_reproducible_and_matter() {
        for make in [|s| ScaleSampling::Qmc { shift_seed: Some(s) }, |s| ScaleSampling::Mc { seed: s }] {
            assert_eq!(scales(64, make(1)), scales(64, make(1)));
            assert_ne!(scales(64, make(1)), scales(64, make(2)));
        }
        assert_eq!(standard_normals(16, 9), standard_normals(16, 9));
    }

    #[test]
    fn scales_are_finite_standard_normal_quantiles() {
        for sampling in [
            ScaleSampling::Qmc { shift_seed: None },
            ScaleSampling::Qmc { shift_seed: Some(11) },
            ScaleSampling::Mc { seed: 11 },
        ] {
            let t = scales(4096, sampling);
            assert!(t.iter().all(|x| x.is_finite()));
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            let var = t.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / t.len() as f64;
            assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "{sampling:?}: mean {mean} var {var}");
        }
    }
}
