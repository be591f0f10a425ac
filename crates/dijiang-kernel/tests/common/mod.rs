//! What the equivalence tests of the attention forms share: how close two results must be.

use burn::tensor::TensorData;

/// Values and gradients of equivalent forms agree to this, relative to the tensor's scale.
pub const TOLERANCE: f64 = 1e-5;

pub fn flat(data: TensorData) -> Vec<f64> {
    data.convert::<f64>().to_vec::<f64>().expect("float data")
}

/// max |a - b| / max |b|: the error relative to the tensor's scale.
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |s, x| s.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |e, (x, y)| e.max((x - y).abs())) / scale
}

pub fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    let err = relative_error(got, want);
    assert!(err <= TOLERANCE, "{what}: relative error {err:.3e} > {TOLERANCE:e}");
}
