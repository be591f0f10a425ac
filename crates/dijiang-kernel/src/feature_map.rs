//! Feature maps phi: R^d -> R^m for kernelised attention (docs/method.md sections 2, 3 and 5).
//!
//! Each map is "project, then a positive nonlinearity": `phi(x) = f(x P)` for a row vector `x` and a
//! projection `P` of shape `[d, m]`. The projections are built here as plain matrices (seeded, no
//! global RNG) so that the model can store them as saved, frozen parameters.
//!
//! | map | projection `P` | nonlinearity |
//! | --- | --- | --- |
//! | reference (the PyTorch code) | `C T` (`proj_matrix`) | softmax over the m features |
//! | paper's weighted DCT feature (WDCF) | `(T C)^T = C^T T` | `D * exp(.)`, `D` learnable, init 1 |
//! | Performer positive random features | `W^T`, `W ~ N(0, I)` | `exp(. - |x|^2 / 2) / sqrt(m)` |
//!
//! `C` is the orthonormal DCT-II matrix ([`crate::dct`]), `T = diag(t)` the scales of [`crate::qmc`].

use burn::tensor::{Tensor, activation::softmax, backend::Backend};

use crate::dct::{dct2_matrix, matrix_tensor};
use crate::qmc::{ScaleSampling, scales, standard_normals};

/// The reference's `proj_matrix = C @ T`, `[d, m]` row-major. With `m = d` (the reference) it is
/// `C T`, `P[k][j] = C[k][j] t_j`: `x P` applies the inverse DCT (DCT-III) to `x` and scales output
/// feature j by `t_j`. With `m > d`, frequency `j mod d` appears once per block `b = j / d` of `d`
/// features, each time with its own scale: block b pairs frequency f with scale `t[b d + (f + b)
/// mod d]`. The rotation matters for quasi-Monte Carlo scales: van der Corput points `n` and
/// `n + d` (d a power of two) differ by only `1 / 2d`, so without it a frequency's extra scales
/// would nearly repeat its first one.
pub fn reference_projection(d: usize, m: usize, sampling: ScaleSampling) -> Vec<f64> {
    let c = dct2_matrix(d);
    let t = scales(m, sampling);
    let scale_of = |j: usize| {
        let (b, f) = (j / d, j % d);
        let i = b * d + (f + b) % d;
        if i < m { t[i] } else { t[j] }
    };
    (0..d * m).map(|i| (i / m, i % m)).map(|(k, j)| c[k * d + j % d] * scale_of(j)).collect()
}

/// The paper's `(T C)^T`, `[d, d]` row-major: `P[j][k] = t_k C[k][j]`, so `(x P)_k = t_k (C x)_k`.
pub fn paper_projection(d: usize, sampling: ScaleSampling) -> Vec<f64> {
    let c = dct2_matrix(d);
    let t = scales(d, sampling);
    let mut p = vec![0.0; d * d];
    for k in 0..d {
        for j in 0..d {
            p[j * d + k] = t[k] * c[k * d + j];
        }
    }
    p
}

/// Performer's random projection `W^T`, `[d, m]` row-major, entries i.i.d. standard normal.
pub fn performer_projection(d: usize, m: usize, seed: u64) -> Vec<f64> {
    standard_normals(d * m, seed)
}

/// A row-major `[rows, cols]` projection as a tensor.
pub fn projection_tensor<B: Backend>(values: Vec<f64>, rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    matrix_tensor(values, [rows, cols], device)
}

/// `x P` for `x` of shape `[b, h, t, d]` and `P` of shape `[d, m]`: `[b, h, t, m]`.
pub fn project<B: Backend>(x: Tensor<B, 4>, proj: Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let [_, m] = proj.dims();
    // [b, h, t, d] -> [b*h*t, d] -> [b*h*t, m] -> [b, h, t, m]
    x.reshape([b * h * t, d]).matmul(proj).reshape([b, h, t, m])
}

/// The reference map: `softmax(x P)` over the feature dimension.
///
/// # Shapes
/// - x: `[b, h, t, d]`, proj: `[d, m]` -> `[b, h, t, m]`
pub fn softmax_features<B: Backend>(x: Tensor<B, 4>, proj: Tensor<B, 2>) -> Tensor<B, 4> {
    softmax(project(x, proj), 3)
}

/// The paper's weighted map: `D * exp(x P)`.
///
/// # Shapes
/// - x: `[b, h, t, d]`, proj: `[d, m]`, weights `D`: `[m]` -> `[b, h, t, m]`
pub fn weighted_exp_features<B: Backend>(x: Tensor<B, 4>, proj: Tensor<B, 2>, weights: Tensor<B, 1>) -> Tensor<B, 4> {
    let [m] = weights.dims();
    project(x, proj).exp() * weights.reshape([1, 1, 1, m])
}

/// Performer's positive random features: `exp(x W^T - |x|^2 / 2) / sqrt(m)`, an unbiased estimate
/// of the softmax kernel: `E[phi(x) . phi(y)] = exp(x . y)`.
///
/// # Shapes
/// - x: `[b, h, t, d]`, proj `W^T`: `[d, m]` -> `[b, h, t, m]`
pub fn positive_random_features<B: Backend>(x: Tensor<B, 4>, proj: Tensor<B, 2>) -> Tensor<B, 4> {
    let [_, m] = proj.dims();
    let half_sq_norm = x.clone().powi_scalar(2).sum_dim(3).div_scalar(2.0);
    (project(x, proj) - half_sq_norm).exp().div_scalar((m as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type B = crate::cpu::Cpu;

    fn to_vec(x: Tensor<B, 4>) -> Vec<f64> {
        x.into_data().convert::<f64>().to_vec::<f64>().expect("float data")
    }

    fn tensor(values: Vec<f64>, shape: [usize; 4]) -> Tensor<B, 4> {
        let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn reference_projection_is_dct_times_scales() {
        let d = 8;
        let sampling = ScaleSampling::Mc { seed: 5 };
        let (c, t, p) = (dct2_matrix(d), scales(d, sampling), reference_projection(d, d, sampling));
        // x P with x = e_k picks row k of P: row k of C, feature j scaled by t_j.
        for k in 0..d {
            for j in 0..d {
                assert_eq!(p[k * d + j], c[k * d + j] * t[j]);
            }
        }
    }

    #[test]
    fn wider_reference_projection_repeats_frequencies_with_spread_scales() {
        let (d, m) = (8, 16);
        let sampling = ScaleSampling::default();
        let (c, t, p) = (dct2_matrix(d), scales(m, sampling), reference_projection(d, m, sampling));
        assert_eq!(p.len(), d * m);
        let mut used = vec![false; m];
        for j in 0..m {
            // Column j is DCT frequency j mod d times one scale, each scale used once.
            let k = (0..d).find(|&k| c[k * d + j % d].abs() > 0.1).unwrap();
            let scale = p[k * m + j] / c[k * d + j % d];
            let i = t.iter().position(|s| (s - scale).abs() < 1e-12).expect("one of the m scales");
            assert!(!used[i], "scale {i} used twice");
            used[i] = true;
            for k in 0..d {
                assert!((p[k * m + j] - c[k * d + j % d] * scale).abs() < 1e-12);
            }
        }
        // A frequency's two scales are far apart in probability (not van der Corput neighbours).
        let u = |s: f64| statrs::distribution::ContinuousCDF::cdf(&statrs::distribution::Normal::standard(), s);
        for f in 0..d {
            let k = (0..d).find(|&k| c[k * d + f].abs() > 0.1).unwrap();
            let (a, b) = (p[k * m + f] / c[k * d + f], p[k * m + d + f] / c[k * d + f]);
            assert!((u(a) - u(b)).abs() > 1.0 / (2 * m) as f64 + 1e-9, "frequency {f}: {a} vs {b}");
        }
    }

    #[test]
    fn paper_projection_computes_t_times_dct_of_x() {
        let d = 12;
        let sampling = ScaleSampling::Qmc { shift_seed: Some(1) };
        let (c, t, p) = (dct2_matrix(d), scales(d, sampling), paper_projection(d, sampling));
        let x: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
        for k in 0..d {
            let via_p: f64 = (0..d).map(|j| x[j] * p[j * d + k]).sum();
            let direct: f64 = t[k] * (0..d).map(|j| c[k * d + j] * x[j]).sum::<f64>();
            assert!((via_p - direct).abs() < 1e-12);
        }
    }

    #[test]
    fn softmax_features_are_a_distribution_over_features() {
        let device = Default::default();
        let d = 16;
        let x = Tensor::<B, 4>::random([2, 3, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let proj = projection_tensor(reference_projection(d, d, ScaleSampling::default()), d, d, &device);
        let phi = softmax_features(x, proj);
        let sums = to_vec(phi.clone().sum_dim(3));
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        assert!(to_vec(phi).iter().all(|v| *v > 0.0));
    }

    #[test]
    fn weighted_exp_features_scale_each_feature_by_its_weight() {
        let device = Default::default();
        let d = 8;
        let x = Tensor::<B, 4>::random([1, 2, 3, d], Distribution::Normal(0.0, 0.5), &device);
        let proj = projection_tensor(paper_projection(d, ScaleSampling::default()), d, d, &device);
        let ones = Tensor::<B, 1>::ones([d], &device);
        let w: Vec<f64> = (0..d).map(|i| 0.5 + i as f64).collect();
        let weights = tensor(w.clone(), [1, 1, 1, d]).reshape([d]);
        let plain = to_vec(weighted_exp_features(x.clone(), proj.clone(), ones));
        let weighted = to_vec(weighted_exp_features(x.clone(), proj.clone(), weights));
        let direct = to_vec(project(x, proj).exp());
        for i in 0..plain.len() {
            assert!((plain[i] - direct[i]).abs() < 1e-6 * direct[i]);
            assert!((weighted[i] - w[i % d] * direct[i]).abs() < 1e-6 * weighted[i]);
        }
    }

    #[test]
    fn performer_features_estimate_the_softmax_kernel() {
        // With many features, phi(x) . phi(y) approaches exp(x . y) (Performer's estimator).
        let device = Default::default();
        let (d, m) = (4, 1 << 16);
        let x: Vec<f64> = vec![0.3, -0.2, 0.1, 0.25];
        let y: Vec<f64> = vec![-0.1, 0.4, 0.2, 0.05];
        let exact = x.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>().exp();
        let proj = projection_tensor(performer_projection(d, m, 17), d, m, &device);
        let (tx, ty) = (tensor(x, [1, 1, 1, d]), tensor(y, [1, 1, 1, d]));
        let px = to_vec(positive_random_features(tx, proj.clone()));
        let py = to_vec(positive_random_features(ty, proj));
        let estimate: f64 = px.iter().zip(&py).map(|(a, b)| a * b).sum();
        assert!((estimate - exact).abs() / exact < 0.02, "estimate {estimate} vs exact {exact}");
    }
}
