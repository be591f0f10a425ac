//! The hybrid's linear-part weight calibrated on the teacher (`linear_weight = "calibrated"`): per
//! head, the weight `beta` whose attention output (before the output projection), on the teacher's
//! layer input, is closest in mean squared error to the teacher head's output `p V`.
//!
//! With the student's rows at weight 1 split into the window part `R_w` and the part beyond it
//! `R_l`, the output at weight `beta` is `(R_w V + beta R_l V) / (sum R_w + beta sum R_l)` (the
//! rows' common normaliser cancels), so one pass of the student's layer prices every candidate.
//! The candidates are a grid of `ln beta` ([`LOG_WEIGHT_GRID`]) that contains `ln beta = 0`: on the
//! calibration text the calibrated start is never further from the teacher than weight 1.
//!
//! (Matching instead the teacher's share of attention beyond the window was measured worse than
//! weight 1: the teacher's mass beyond the window sits mostly on the first token, an attention
//! sink, which the untrained linear part spreads over every earlier key.)

use burn::prelude::*;

/// `ln beta` from `.0` to `.1` in `.2` steps (of 0.25).
pub const LOG_WEIGHT_GRID: (f64, f64, usize) = (-12.0, 4.0, 65);

/// The two parts of a hybrid head's output at weight 1.
#[derive(Debug, Clone)]
pub struct WindowParts<B: Backend> {
    /// `R_w V` and `R_l V`: `[b, h, t, d_v]`.
    pub window_out: Tensor<B, 4>,
    pub linear_out: Tensor<B, 4>,
    /// `sum R_w` and `sum R_l` per row: `[b, h, t, 1]`.
    pub window_sum: Tensor<B, 4>,
    pub linear_sum: Tensor<B, 4>,
}

impl<B: Backend> WindowParts<B> {
    /// Splits hybrid `rows` at weight 1 (window: `0 <= i - j < window`) and applies them to `v`.
    ///
    /// # Shapes
    /// - rows: `[b, h, t, t]`, v: `[b, h, t, d_v]` (key/value heads repeated to the query heads)
    pub fn new(rows: Tensor<B, 4>, v: Tensor<B, 4>, window: usize) -> Self {
        let [_, _, t, _] = rows.dims();
        let inside: Vec<f32> =
            (0..t * t).map(|n| (n / t, n % t)).map(|(i, j)| f32::from(j <= i && i - j < window)).collect();
        let inside = Tensor::<B, 4>::from_data(TensorData::new(inside, [1, 1, t, t]), &rows.device());
        let window_rows = rows.clone() * inside;
        let linear_rows = rows - window_rows.clone();
        Self {
            window_out: window_rows.clone().matmul(v.clone()),
            linear_out: linear_rows.clone().matmul(v),
            window_sum: window_rows.sum_dim(3),
            linear_sum: linear_rows.sum_dim(3),
        }
    }

    /// The output at weight `exp(log_weight)`: `[b, h, t, d_v]`.
    pub fn output(&self, log_weight: f64) -> Tensor<B, 4> {
        let beta = log_weight.exp();
        (self.window_out.clone() + self.linear_out.clone().mul_scalar(beta))
            / (self.window_sum.clone() + self.linear_sum.clone().mul_scalar(beta))
    }
}

/// Per head, the mean squared error of the output at weight `exp(log_weight)` against `target`
/// (`[b, h, t, d_v]`).
pub fn output_errors<B: Backend>(parts: &WindowParts<B>, target: Tensor<B, 4>, log_weight: f64) -> Vec<f64> {
    let [_, h, _, _] = target.dims();
    let err = (parts.output(log_weight) - target).square().swap_dims(0, 1).reshape([h as i32, -1]).mean_dim(1);
    err.into_data().convert::<f64>().to_vec::<f64>().expect("float errors")
}

/// Per head, the grid's `ln beta` with the smallest output error against `target` (the first on
/// ties).
pub fn best_log_weight<B: Backend>(parts: &WindowParts<B>, target: Tensor<B, 4>) -> Vec<f64> {
    let (lo, hi, n) = LOG_WEIGHT_GRID;
    let grid: Vec<f64> = (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect();
    let errors: Vec<Vec<f64>> = grid.iter().map(|&w| output_errors(parts, target.clone(), w)).collect();
    let heads = errors[0].len();
    (0..heads)
        .map(|h| {
            let best = (0..n).min_by(|&a, &b| errors[a][h].total_cmp(&errors[b][h])).expect("a grid");
            grid[best]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = crate::cpu::Cpu;

    #[test]
    fn the_best_weight_is_the_one_that_made_the_target() {
        // A target made by the parts themselves at ln beta = -1.5 (on the grid): recovered per head.
        let device = Default::default();
        let random = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, burn::tensor::Distribution::Default, &device);
        let parts = WindowParts {
            window_out: random([1, 2, 9, 3]),
            linear_out: random([1, 2, 9, 3]),
            window_sum: random([1, 2, 9, 1]).add_scalar(0.5),
            linear_sum: random([1, 2, 9, 1]).add_scalar(0.5),
        };
        let target = parts.output(-1.5);
        assert_eq!(best_log_weight(&parts, target.clone()), vec![-1.5, -1.5]);
        assert!(output_errors(&parts, target, -1.5).iter().all(|e| *e < 1e-12));
        assert!(LOG_WEIGHT_GRID.0 + 0.25 * 48.0 == 0.0, "ln beta = 0 is on the grid");
    }
}
