//! The chunked form (docs/method.md section 4): for chunk `t` with local positions `i, j` in `0..c`,
//!
//! `O_t = ((Q_t K_t^T) * G) V_t + gamma^(i+1) Q_t S_{t-1}`,
//! `S_t = gamma^c S_{t-1} + sum_j gamma^(c-1-j) k_j v_j^T`,
//!
//! costing `O(t c m + t m d_v)`: linear in sequence length. All chunks' local products are batched;
//! only the state scan over chunks is sequential (one multiply-add of `[m, d_v]` per chunk).

use burn::tensor::{Tensor, backend::Backend};

use super::{check_shapes, decay_matrix, decay_powers, per_head, repeat_kv, reversed_decay_powers};

/// Causal linear attention in chunks of `chunk_len` positions, starting from `state` (zeros for a
/// fresh sequence) and returning the state after the last position, ready for
/// [`super::recurrent_step`].
///
/// A sequence whose length is not a multiple of `chunk_len` ends with one shorter chunk.
///
/// # Shapes
/// As [`super::parallel`], plus `state`: `[b, h_q, m, d_v]`; returns (output, final state).
///
/// # Panics
/// If `chunk_len == 0` or the shapes do not fit together.
pub fn chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    chunk_len: usize,
    state: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    assert!(chunk_len > 0, "chunk length must be positive");
    let groups = check_shapes(&q, &k, &v, &log_decay);
    let [_, _, t, _] = q.dims();
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));

    let full = t / chunk_len * chunk_len;
    let mut outputs = Vec::with_capacity(2);
    let mut state = state;
    // The whole chunks, then the remainder as one shorter chunk.
    for (start, len, chunk) in [(0, full, chunk_len), (full, t - full, t - full)] {
        if len == 0 {
            continue;
        }
        let part = |x: &Tensor<B, 4>| x.clone().narrow(2, start, len);
        let (o, next) = equal_chunks(part(&q), part(&k), part(&v), log_decay.clone(), chunk, state);
        outputs.push(o);
        state = next;
    }
    (Tensor::cat(outputs, 2), state)
}

/// The chunked recurrence over a sequence whose length is a multiple of `c`, with as many key/value
/// heads as query heads.
fn equal_chunks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    c: usize,
    state: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, t, m] = q.dims();
    let [_, _, _, dv] = v.dims();
    let n = t / c;
    // [b, h, n*c, e] -> [b, h, n, c, e]
    let q = q.reshape([b, h, n, c, m]);
    let k = k.reshape([b, h, n, c, m]);
    let v = v.reshape([b, h, n, c, dv]);

    // Inside each chunk: ((Q_t K_t^T) * G) V_t, batched over chunks. [b, h, n, c, c]
    let g = decay_matrix(log_decay.clone(), c).unsqueeze_dim::<5>(2);
    let intra = (q.clone().matmul(k.clone().swap_dims(3, 4)) * g).matmul(v.clone());

    // Each chunk's own contribution to the state: sum_j gamma^(c-1-j) k_j v_j^T. [b, h, n, m, dv]
    let weights = reversed_decay_powers(log_decay.clone(), c).unsqueeze_dim::<5>(2);
    let local = k.swap_dims(3, 4).matmul(v * weights);

    // Scan: incoming[t] = S_{t-1}, S_t = gamma^c S_{t-1} + local[t].
    let chunk_decay = per_head(log_decay.clone().mul_scalar(c as f64)).exp();
    let mut incoming = Vec::with_capacity(n);
    let mut state = state;
    for local_i in local.chunk(n, 2) {
        incoming.push(state.clone());
        let local_i = local_i.reshape([b, h, m, dv]);
        state = state * chunk_decay.clone() + local_i;
    }
    let incoming = Tensor::stack::<5>(incoming, 2); // [b, h, n, m, dv]

    // Across chunks: gamma^(i+1) Q_t S_{t-1}. [b, h, n, c, dv]
    let q_decay = decay_powers(log_decay, 1, c).unsqueeze_dim::<5>(2);
    let inter = (q * q_decay).matmul(incoming);

    ((intra + inter).reshape([b, h, t, dv]), state)
}
