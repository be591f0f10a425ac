//! Per-head decay initialised from the teacher (`decay = "calibrated"`): each head's `gamma` is
//! chosen so that the decay alone spreads attention as far back, on average, as the teacher's head
//! does on a calibration text.
//!
//! For a head, the teacher's softmax rows `p_ij` on the calibration tokens give the mean attention
//! distance `D = mean_i sum_j p_ij (i - j)`. The student's scores are `phi(q) . phi(k) * gamma^(i-j)`;
//! the untrained feature map is close to uniform (DIJIANG.md section 7: its rows are about as far
//! from the teacher's as uniform averaging), so the decay sets how far back the student looks. For
//! the decay-only rows `gamma^(i-j) / sum_j gamma^(i-j)` over the same rows (finite: row `i` has
//! `i + 1` keys) the mean distance increases with `gamma`, from 0 to that of uniform averaging, so
//! bisection finds the `gamma` with the teacher's `D`. This is `gamma ~ D / (1 + D)` (i.e. about
//! `1 - 1/D`) for distances short against the rows, corrected for the rows' finite length.
//!
//! With a sliding window of `W` keys the linear part only sees keys `j <= i - W`, so both sides
//! measure the distance beyond the window, `(i - j - W)`, under the teacher's attention restricted
//! (and renormalised) to those keys, over the rows `i >= W`.
//!
//! `gamma` is clamped to [`GAMMA_RANGE`]: heads attending to their own position or to the first
//! token (attention sinks, mean distance beyond uniform) get the ends of the range.
//!
//! The hybrid's linear-part weight (`linear_weight = "calibrated"`): per head, the weight `beta` at
//! which the student's mean share of attention beyond the window equals the teacher's, on the
//! teacher's layer inputs. A row's share at weight `beta` is `beta L / (E + beta L)` (window sum
//! `E`, linear sum `L`), so the rows at `beta = 1` give every row's `L / E` and bisection on
//! `ln beta` does the rest.
//!
//! Deterministic: the same teacher and tokens give the same values.

use burn::prelude::*;

use crate::attention::{AttentionKernel, DiJiangKernel};
use crate::error::ModelError;
use crate::transformer::Transformer;

/// The decays calibration may choose: from a memory of about one token to about 4096.
pub const GAMMA_RANGE: (f64, f64) = (0.5, 1.0 - 1.0 / 4096.0);

/// Per row (`i >= window`, every batch) and head: the mass of `rows` on the keys beyond the
/// window (`j <= i - window`) and its first moment `sum_j p_ij (i - j - window)`, as `[b, h, t]`
/// host vectors.
fn beyond_window<B: Backend>(rows: Tensor<B, 4>, window: usize) -> (Vec<f64>, Vec<f64>) {
    let [_, _, t, _] = rows.dims();
    assert!(t > window, "{t} positions leave no key beyond a window of {window}");
    let device = rows.device();
    // dist[i, j] = i - j - W where i - j >= W; beyond[i, j] = 1 there.
    let (mut dist, mut beyond) = (vec![0.0f32; t * t], vec![0.0f32; t * t]);
    for i in window..t {
        for j in 0..=i - window {
            dist[i * t + j] = (i - j - window) as f32;
            beyond[i * t + j] = 1.0;
        }
    }
    let table = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, t, t]), &device);
    // [b, h, t, t] -> [b, h, t, 1]
    let mass = (rows.clone() * table(beyond)).sum_dim(3);
    let moment = (rows * table(dist)).sum_dim(3);
    let host = |x: Tensor<B, 4>| x.into_data().convert::<f64>().to_vec::<f64>().expect("float rows");
    (host(mass), host(moment))
}

/// `f(row)` per head over the rows `i >= window` of every batch, for `[b, h, t]` host vectors.
fn per_head_rows<T>(dims: [usize; 3], window: usize, f: impl Fn(usize) -> T) -> Vec<Vec<T>> {
    let [b, h, t] = dims;
    (0..h)
        .map(|head| {
            let rows = (0..b).flat_map(|batch| (window..t).map(move |i| (batch * h + head) * t + i));
            rows.map(&f).collect()
        })
        .collect()
}

/// Per head, the mean attention distance beyond `window` of `rows`, averaged over the batch and the
/// rows `i >= window`.
///
/// # Shapes
/// - rows: `[b, h, t, t]`, causal, each row summing to 1 -> `h` distances
pub fn mean_distances<B: Backend>(rows: Tensor<B, 4>, window: usize) -> Vec<f64> {
    let [b, h, t, _] = rows.dims();
    let (mass, moment) = beyond_window(rows, window);
    let conditional = per_head_rows([b, h, t], window, |r| moment[r] / mass[r].max(1e-30));
    conditional.iter().map(|rows| rows.iter().sum::<f64>() / rows.len() as f64).collect()
}

/// Per head, every row's share of attention on the keys beyond the window (rows `i >= window`).
///
/// # Shapes
/// - rows: `[b, h, t, t]`, each row summing to 1 -> `h` lists of `b (t - window)` shares
pub fn beyond_window_shares<B: Backend>(rows: Tensor<B, 4>, window: usize) -> Vec<Vec<f64>> {
    let [b, h, t, _] = rows.dims();
    let (mass, _) = beyond_window(rows, window);
    per_head_rows([b, h, t], window, |r| mass[r])
}

/// `ln beta` in `[-LOG_WEIGHT_LIMIT, LOG_WEIGHT_LIMIT]` such that rows whose shares beyond the
/// window are `shares_at_one` at weight 1 have mean share `target` at weight `beta`.
pub fn log_weight_for_share(target: f64, shares_at_one: &[f64]) -> f64 {
    // A row's L / E from its share at weight 1; its share at beta is beta rho / (1 + beta rho).
    let rho: Vec<f64> = shares_at_one.iter().map(|s| s / (1.0 - s).max(1e-12)).collect();
    let share = |log_beta: f64| {
        let beta = log_beta.exp();
        rho.iter().map(|r| beta * r / (1.0 + beta * r)).sum::<f64>() / rho.len().max(1) as f64
    };
    let (mut lo, mut hi) = (-LOG_WEIGHT_LIMIT, LOG_WEIGHT_LIMIT);
    if target <= share(lo) {
        return lo;
    }
    if target >= share(hi) {
        return hi;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if share(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The range of calibrated `ln beta`: a weight between `e^-12` and `e^12`.
pub const LOG_WEIGHT_LIMIT: f64 = 12.0;

/// The mean distance beyond `window` of the decay-only rows `gamma^(i-j)` (normalised) over rows
/// `window..t`: row `i` has keys at distances `0..=i - window` beyond the window.
pub fn decay_only_distance(gamma: f64, t: usize, window: usize) -> f64 {
    let (mut weights, mut moments, mut power, mut total) = (0.0, 0.0, 1.0, 0.0);
    for k in 0..t - window {
        // Row i = window + k adds the key at distance k.
        weights += power;
        moments += k as f64 * power;
        power *= gamma;
        total += moments / weights;
    }
    total / (t - window) as f64
}

/// The `gamma` in [`GAMMA_RANGE`] whose decay-only rows have mean distance `distance` (see
/// [`decay_only_distance`]), by bisection; the range's ends where no `gamma` inside it does.
pub fn gamma_for_distance(distance: f64, t: usize, window: usize) -> f64 {
    let (mut lo, mut hi) = GAMMA_RANGE;
    if distance <= decay_only_distance(lo, t, window) {
        return lo;
    }
    if distance >= decay_only_distance(hi, t, window) {
        return hi;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if decay_only_distance(mid, t, window) < distance {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// What calibration reads off a softmax teacher on the calibration tokens.
#[derive(Debug)]
pub struct TeacherAttention<B: Backend> {
    /// Each block's input, `[b, t, hidden]` (the student's layers are measured on these).
    pub layer_inputs: Vec<Tensor<B, 3>>,
    /// Per layer and head: the mean attention distance beyond the window.
    pub distances: Vec<Vec<f64>>,
    /// Per layer and head: the mean share of attention beyond the window.
    pub shares: Vec<Vec<f64>>,
    pub tokens: usize,
    pub window: usize,
}

/// Reads the softmax `teacher`'s attention to `tokens` (`[b, t]`, real text), for a student with a
/// window of `window` keys (0: none).
///
/// # Errors
/// If the teacher is not a softmax model or `t <= window + 1`.
pub fn teacher_attention<B: Backend>(
    teacher: &Transformer<B>,
    tokens: Tensor<B, 2, Int>,
    window: usize,
) -> Result<TeacherAttention<B>, ModelError> {
    let [_, t] = tokens.dims();
    if t <= window + 1 {
        return Err(ModelError::Config(format!(
            "calibration needs more than window + 1 = {} tokens, got {t}",
            window + 1
        )));
    }
    if teacher.layers.iter().any(|l| !matches!(l.attn.kernel, AttentionKernel::Softmax(_))) {
        return Err(ModelError::Config("calibration needs a softmax teacher".into()));
    }
    let mut hidden = teacher.forward_with_hidden(tokens, true).hidden_states;
    hidden.truncate(teacher.layers.len()); // the blocks' inputs (the last state is the final norm's)
    let (mut distances, mut shares) = (Vec::new(), Vec::new());
    for (layer, x) in hidden.iter().enumerate() {
        let rows = teacher.layer_rows(layer, x.clone());
        distances.push(mean_distances(rows.clone(), window));
        let per_row = beyond_window_shares(rows, window);
        shares.push(per_row.iter().map(|r| r.iter().sum::<f64>() / r.len() as f64).collect());
    }
    Ok(TeacherAttention { layer_inputs: hidden, distances, shares, tokens: t, window })
}

impl<B: Backend> TeacherAttention<B> {
    /// Per layer, `ln(gamma)` per head: the decay-only rows as far back as the teacher's.
    pub fn log_decay(&self) -> Vec<Vec<f64>> {
        let gamma = |d: &f64| gamma_for_distance(*d, self.tokens, self.window).ln();
        self.distances.iter().map(|layer| layer.iter().map(gamma).collect()).collect()
    }

    /// Per layer, `ln beta` per head of the hybrid `student` (converted, weight 1): its share of
    /// attention beyond the window on the teacher's layer inputs equals the teacher's.
    ///
    /// # Panics
    /// If the student's layers are not hybrid DiJiang layers of the teacher's shape.
    pub fn log_linear_weight(&self, student: &Transformer<B>) -> Vec<Vec<f64>> {
        let per_layer = self.layer_inputs.iter().zip(&self.shares).enumerate().map(|(layer, (x, teacher))| {
            let at_one = beyond_window_shares(student.layer_rows(layer, x.clone()), self.window);
            teacher.iter().zip(&at_one).map(|(target, rows)| log_weight_for_share(*target, rows)).collect()
        });
        per_layer.collect()
    }
}

/// Sets every DiJiang layer's decays to `log_decay` (per layer, per query head).
///
/// # Errors
/// If a layer is not a DiJiang layer or the counts do not match the model's.
pub fn set_log_decay<B: Backend>(student: &mut Transformer<B>, log_decay: &[Vec<f64>]) -> Result<(), ModelError> {
    for_each_kernel(student, log_decay, |kernel, values| {
        kernel.set_log_decay(values);
        Ok(())
    })
}

/// Sets every hybrid layer's linear-part weights to `exp(log_weight)` (per layer, per query head).
///
/// # Errors
/// If a layer is not a hybrid DiJiang layer or the counts do not match the model's.
pub fn set_log_linear_weight<B: Backend>(
    student: &mut Transformer<B>,
    log_weight: &[Vec<f64>],
) -> Result<(), ModelError> {
    for_each_kernel(student, log_weight, |kernel, values| {
        if kernel.log_linear_weight.is_none() {
            return Err("has no window".into());
        }
        kernel.set_log_linear_weight(values);
        Ok(())
    })
}

/// Calls `set` with every DiJiang layer's kernel and its values (one per query head).
fn for_each_kernel<B: Backend>(
    student: &mut Transformer<B>,
    values: &[Vec<f64>],
    set: impl Fn(&mut DiJiangKernel<B>, Tensor<B, 1>) -> Result<(), String>,
) -> Result<(), ModelError> {
    if values.len() != student.layers.len() {
        return Err(ModelError::Config(format!(
            "{} layers of values for a model of {} layers",
            values.len(),
            student.layers.len()
        )));
    }
    let heads = student.config().num_heads;
    for (i, (layer, values)) in student.layers.iter_mut().zip(values).enumerate() {
        let AttentionKernel::DiJiang(kernel) = &mut layer.attn.kernel else {
            return Err(ModelError::Config(format!("layer {i} is not a DiJiang layer")));
        };
        if values.len() != heads {
            return Err(ModelError::Config(format!("layer {i}: {} values for {heads} heads", values.len())));
        }
        let device = kernel.proj.val().device();
        let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        set(kernel, Tensor::from_data(TensorData::new(values, [heads]), &device))
            .map_err(|e| ModelError::Config(format!("layer {i}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dijiang_kernel::linear_attention::decay_matrix;

    type B = burn::backend::NdArray<f32>;

    #[test]
    fn decay_only_distance_rises_from_zero_to_uniform_averaging() {
        let t = 64;
        assert!(decay_only_distance(1e-9, t, 0).abs() < 1e-6);
        // gamma = 1: row i averages distances 0..=i, i.e. i / 2; the mean over rows is (t - 1) / 4.
        assert!((decay_only_distance(1.0, t, 0) - (t - 1) as f64 / 4.0).abs() < 1e-9);
        let d: Vec<f64> = [0.5, 0.9, 0.99].iter().map(|&g| decay_only_distance(g, t, 0)).collect();
        assert!(d.windows(2).all(|w| w[0] < w[1]), "{d:?}");
    }

    #[test]
    fn calibration_recovers_the_decay_of_decay_only_rows() {
        // Rows that are exactly gamma^(i-j), normalised: the calibrated gamma is that gamma, with a
        // window or without; and out-of-range distances give the range's ends.
        let t = 40;
        let gammas = [0.6f64, 0.9, 0.97];
        let log_decay: Vec<f32> = gammas.iter().map(|g| g.ln() as f32).collect();
        let log_decay = Tensor::<B, 1>::from_data(TensorData::new(log_decay, [3]), &Default::default());
        let g = decay_matrix(log_decay, t); // [1, 3, t, t]
        for window in [0, 5] {
            // Restricted to keys beyond the window, decay-only rows are decay-only again.
            let distances = mean_distances(g.clone() / g.clone().sum_dim(3), window);
            for (want, d) in gammas.iter().zip(distances) {
                let got = gamma_for_distance(d, t, window);
                assert!((got - want).abs() < 1e-5, "window {window}: {got} != {want}");
            }
        }
        assert_eq!(gamma_for_distance(0.0, t, 0), GAMMA_RANGE.0);
        assert_eq!(gamma_for_distance(t as f64, t, 0), GAMMA_RANGE.1);
    }

    #[test]
    fn the_linear_weight_reaches_the_teachers_share() {
        // Rows with L / E = rho at weight 1: at weight beta their shares are beta rho / (1 + beta rho).
        let rho = [0.1f64, 0.5, 2.0, 8.0];
        let at_one: Vec<f64> = rho.iter().map(|r| r / (1.0 + r)).collect();
        let beta = 0.3f64;
        let target = rho.iter().map(|r| beta * r / (1.0 + beta * r)).sum::<f64>() / rho.len() as f64;
        assert!((log_weight_for_share(target, &at_one) - beta.ln()).abs() < 1e-9);
        assert_eq!(log_weight_for_share(0.0, &at_one), -LOG_WEIGHT_LIMIT);
        assert_eq!(log_weight_for_share(1.0, &at_one), LOG_WEIGHT_LIMIT);
    }
}
