//! The orthonormal DCT-II matrix, DiJiang's frequency-domain transform (paper section 3,
//! docs/method.md section 2).
//!
//! `C[k][j] = s_k cos(pi (2j + 1) k / (2d))` with `s_0 = sqrt(1/d)` and `s_k = sqrt(2/d)` for k > 0:
//! rows are frequencies, `C x` is the DCT-II of a column vector `x`, and `C` is orthogonal
//! (`C C^T = I`), so `x^T C` (the reference's `q @ C`) is the inverse transform (DCT-III).
//!
//! The matrix is written out in closed form rather than obtained from an FFT crate: it is a d x d
//! constant built once per model (d = head size, 64..128), and the closed form is what the
//! reference uses. The tests check it against `rustdct`'s fast DCT-II.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// The orthonormal DCT-II matrix of size `d`, row-major (`[k * d + j]` is frequency k, sample j).
///
/// # Panics
/// If `d == 0`.
pub fn dct2_matrix(d: usize) -> Vec<f64> {
    assert!(d > 0, "DCT size must be positive");
    let n = d as f64;
    let mut c = Vec::with_capacity(d * d);
    for k in 0..d {
        let scale = if k == 0 { (1.0 / n).sqrt() } else { (2.0 / n).sqrt() };
        for j in 0..d {
            let angle = std::f64::consts::PI * (2 * j + 1) as f64 * k as f64 / (2.0 * n);
            c.push(scale * angle.cos());
        }
    }
    c
}

/// The orthonormal DCT-II matrix as a `[d, d]` tensor (rows are frequencies).
pub fn dct2_tensor<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2> {
    matrix_tensor(dct2_matrix(d), [d, d], device)
}

/// A row-major f64 matrix as a float tensor of the backend's float type.
pub(crate) fn matrix_tensor<B: Backend>(values: Vec<f64>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use rustdct::DctPlanner;

    #[test]
    fn matches_rustdct_dct2_scaled_to_orthonormal() {
        let mut rng = StdRng::seed_from_u64(7);
        for d in [1usize, 2, 8, 60, 64, 128] {
            let c = dct2_matrix(d);
            let dct = DctPlanner::<f64>::new().plan_dct2(d);
            for _ in 0..4 {
                let x: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let mut fast = x.clone();
                dct.process_dct2(&mut fast);
                // rustdct's DCT-II is unnormalised: X_k = sum_j x_j cos(pi (2j+1) k / 2d).
                for (k, fast_k) in fast.iter().enumerate() {
                    let scale = if k == 0 { (1.0 / d as f64).sqrt() } else { (2.0 / d as f64).sqrt() };
                    let ours: f64 = (0..d).map(|j| c[k * d + j] * x[j]).sum();
                    assert!((ours - scale * fast_k).abs() < 1e-12, "d={d} k={k}: {ours} vs {}", scale * fast_k);
                }
            }
        }
    }

    #[test]
    fn is_orthogonal() {
        for d in [1usize, 7, 8, 60, 64, 128] {
            let c = dct2_matrix(d);
            for a in 0..d {
                for b in 0..d {
                    let dot: f64 = (0..d).map(|j| c[a * d + j] * c[b * d + j]).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12, "d={d} (C C^T)[{a}][{b}] = {dot}");
                }
            }
        }
    }

    #[test]
    fn tensor_form_is_orthogonal_in_f32() {
        type B = crate::cpu::Cpu;
        let d = 64;
        let c = dct2_tensor::<B>(d, &Default::default());
        let eye = c.clone().matmul(c.transpose());
        let values = eye.into_data().to_vec::<f32>().expect("f32 data");
        for a in 0..d {
            for b in 0..d {
                let want = if a == b { 1.0 } else { 0.0 };
                let got = values[a * d + b];
                assert!((got - want).abs() < 1e-6, "(C C^T)[{a}][{b}] = {got}");
            }
        }
    }
}
