//! The quadratic reference of the hybrid: every score of the `t x t` causal matrix, the window
//! band from the softmax and the rest from the decayed linear scores, normalised together. The
//! slow, obviously-correct twin the chunked and recurrent forms are tested against.

use burn::tensor::{Tensor, backend::Backend};

use super::{HybridInputs, host_mask, window_weights};
use crate::linear_attention::{decay_matrix, repeat_kv};

/// The hybrid's attention rows: for query `i`, key `j <= i` weighs `exp(s_ij - M_i)` if
/// `i - j < W`, else `gamma^(i-j) phi(q_i) . phi(k_j)`; each row divided by its sum.
///
/// # Shapes
/// - q: `[b, h_q, t, d]`, k: `[b, h_kv, t, d]`, phi_q: `[b, h_q, t, m]`, phi_k: `[b, h_kv, t, m]`,
///   log_decay: `[h_q]` -> `[b, h_q, t, t]`
///
/// # Panics
/// If `window == 0` or `h_q` is not a multiple of `h_kv`.
pub fn hybrid_rows<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    phi_q: Tensor<B, 4>,
    phi_k: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    window: usize,
) -> Tensor<B, 4> {
    assert!(window > 0, "the window holds at least the query's own key");
    let [_, hq, t, d] = q.dims();
    let [_, hkv, _, _] = k.dims();
    assert!(hkv > 0 && hq % hkv == 0, "{hq} query heads are not a multiple of {hkv} key/value heads");
    let groups = hq / hkv;
    let device = q.device();
    // [b, h, t, d] x [b, h, d, t] -> [b, h, t, t]
    let scores = q.matmul(repeat_kv(k, groups).swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    let outside_window = host_mask::<B, 4>([1, t, t], |_, i, j| j > i || i - j >= window, &device);
    let soft = window_weights(scores, outside_window);
    let outside_linear = host_mask::<B, 4>([1, t, t], |_, i, j| j > i || i - j < window, &device);
    let linear = (phi_q.matmul(repeat_kv(phi_k, groups).swap_dims(2, 3)) * decay_matrix(log_decay, t))
        .mask_fill(outside_linear, 0.0);
    let rows = soft + linear;
    rows.clone() / rows.sum_dim(3)
}

/// The hybrid in its quadratic form, from the start of a sequence.
///
/// # Shapes
/// As [`HybridInputs`] -> `[b, h_q, t, d_v]`.
pub fn hybrid_parallel<B: Backend>(x: HybridInputs<B>, window: usize) -> Tensor<B, 4> {
    let groups = x.check();
    let rows = hybrid_rows(x.q, x.k, x.phi_q, x.phi_k, x.log_decay, window);
    rows.matmul(repeat_kv(x.v, groups))
}
