//! Per-head decay initialised from the teacher (`decay = "calibrated"`): each head's `gamma` is
//! chosen so that the decay alone spreads attention as far back, on average, as the teacher's head
//! does on a calibration text.
//!
//! For a head, the teacher's softmax rows `p_ij` on the calibration tokens give the mean attention
//! distance `D = mean_i sum_j p_ij (i - j)`. The student's scores are `phi(q) . phi(k) * gamma^(i-j)`;
//! the untrained feature map is close to uniform (docs/method.md section 7: its rows are about as far
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

use burn::prelude::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use dijiang_kernel::linear_attention::decay_matrix;

    type B = crate::cpu::Cpu;

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
}
