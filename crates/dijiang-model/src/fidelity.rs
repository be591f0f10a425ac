//! Attention fidelity: how closely a student's kernel attention reproduces the teacher's softmax
//! attention, layer by layer and head by head, for the same layer inputs (the teacher's hidden
//! states).
//!
//! - Total-variation distance between the teacher's causal softmax attention rows and the student's
//!   rows, the latter normalised by their sums (the DiJiang kernel has no normaliser), averaged
//!   over positions: `0.5 * sum_j |p_ij - q_ij|`.
//! - The relative error of the attention block's output, `|student - teacher| / |teacher|`.

use burn::prelude::*;

use crate::attention::AttentionKernel;
use crate::rope::Rope;
use crate::transformer::Transformer;

/// Rows divided by their sums (the smallest sum clamped away from 0).
///
/// # Shapes
/// - rows: `[b, h, t, t_k]` -> `[b, h, t, t_k]`
pub fn normalise_rows<B: Backend>(rows: Tensor<B, 4>) -> Tensor<B, 4> {
    rows.clone() / rows.sum_dim(3).clamp_min(1e-30)
}

/// One layer's measurements.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerFidelity {
    pub layer: usize,
    /// Mean TV distance per query head.
    pub tv_per_head: Vec<f64>,
    pub tv_mean: f64,
    /// The same distance for uniform causal averaging (rows `1 / (i + 1)`), a baseline.
    pub tv_uniform: f64,
    /// Relative error of the attention block's output.
    pub output_relative_error: f64,
}

fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data().convert::<f64>().to_vec::<f64>().expect("float")[0]
}

/// Measures `layers` of `student` against `teacher` on `tokens` (`[1, t]`). Both models must share
/// their architecture; the student's attention must be DiJiang.
///
/// # Panics
/// If the student's layer is not a DiJiang layer.
pub fn measure<B: Backend>(
    teacher: &Transformer<B>,
    student: &Transformer<B>,
    tokens: Tensor<B, 2, Int>,
    layers: &[usize],
) -> Vec<LayerFidelity> {
    let [_, t] = tokens.dims();
    let config = teacher.config();
    let device = tokens.device();
    let rope = Rope::new(config, 0, t, &device);
    let hidden = teacher.forward_with_hidden(tokens, true).hidden_states;
    let causal = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &device).reshape([1, 1, t, t]);
    layers
        .iter()
        .map(|&layer| {
            let (tl, sl) = (&teacher.layers[layer], &student.layers[layer]);
            let x = tl.attn_norm.forward(hidden[layer].clone());
            assert!(
                matches!(sl.attn.kernel, AttentionKernel::DiJiang(_)),
                "layer {layer} of the student is not a DiJiang layer"
            );
            // [1, h, t, t]: teacher softmax rows; student rows normalised by their sums.
            let p = tl.attn.rows(x.clone(), &rope);
            let [_, hq, _, _] = p.dims();
            let s = normalise_rows(sl.attn.rows(x.clone(), &rope));
            // Per head: the mean over rows of 0.5 * sum_j |p - s|.
            let tv = (p.clone() - s).abs().sum_dim(3).mul_scalar(0.5).mean_dim(2).reshape([hq]);
            let tv_per_head = tv.into_data().convert::<f64>().to_vec::<f64>().expect("float");
            let ones = Tensor::<B, 4>::ones([1, 1, t, t], &device).mask_fill(causal.clone(), 0.0);
            let uniform = ones.clone() / ones.sum_dim(3);
            let tv_uniform = scalar((p.clone() - uniform).abs().sum_dim(3).mul_scalar(0.5).mean().reshape([1]));
            let teacher_out = tl.attn.forward(x.clone(), &rope);
            let student_out = sl.attn.forward(x, &rope);
            let diff = scalar((student_out - teacher_out.clone()).powi_scalar(2).sum().reshape([1])).sqrt();
            let norm = scalar(teacher_out.powi_scalar(2).sum().reshape([1])).sqrt();
            LayerFidelity {
                layer,
                tv_mean: tv_per_head.iter().sum::<f64>() / tv_per_head.len() as f64,
                tv_per_head,
                tv_uniform,
                output_relative_error: diff / norm.max(1e-30),
            }
        })
        .collect()
}
