//! The quadratic, masked form: `O = ((Q K^T) * G) V` with `G[i, j] = gamma^(i - j)` for `j <= i`.

use burn::tensor::{Tensor, backend::Backend};

use super::{check_shapes, decay_matrix, repeat_kv};

/// Causal linear attention in the reference's quadratic form.
///
/// # Shapes
/// - q: `[b, h_q, t, m]` (feature-mapped queries)
/// - k: `[b, h_kv, t, m]` (feature-mapped keys)
/// - v: `[b, h_kv, t, d_v]`
/// - log_decay: `[h_q]`, `ln(gamma)` per query head (`0` for no decay)
/// - output: `[b, h_q, t, d_v]`
pub fn parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
) -> Tensor<B, 4> {
    let groups = check_shapes(&q, &k, &v, &log_decay);
    let [_, _, t, _] = q.dims();
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    // [b, h, t, m] x [b, h, m, t] -> [b, h, t, t]
    let scores = q.matmul(k.swap_dims(2, 3)) * decay_matrix(log_decay, t);
    scores.matmul(v)
}
