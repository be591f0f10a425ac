//! The recurrent form: `S_n = gamma S_{n-1} + phi(k_n) v_n^T`, `o_n = phi(q_n)^T S_n`.
//! One step per token with a state of fixed size `[b, h_q, m, d_v]`: constant-memory decoding.

use burn::tensor::{Tensor, backend::Backend};

use super::{check_shapes, per_head, repeat_kv};

/// One decoding step.
///
/// # Shapes
/// - q: `[b, h_q, 1, m]`, k: `[b, h_kv, 1, m]`, v: `[b, h_kv, 1, d_v]`
/// - log_decay: `[h_q]`
/// - state: `[b, h_q, m, d_v]` (zeros before the first token)
/// - returns (output `[b, h_q, 1, d_v]`, next state `[b, h_q, m, d_v]`)
pub fn recurrent_step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    state: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let groups = check_shapes(&q, &k, &v, &log_decay);
    assert_eq!(q.dims()[2], 1, "recurrent_step takes one position at a time");
    let (k, v) = (repeat_kv(k, groups), repeat_kv(v, groups));
    // [b, h, m, 1] x [b, h, 1, d_v] -> [b, h, m, d_v]
    let update = k.swap_dims(2, 3).matmul(v);
    let state = state * per_head(log_decay).exp() + update;
    // [b, h, 1, m] x [b, h, m, d_v] -> [b, h, 1, d_v]
    (q.matmul(state.clone()), state)
}

/// The recurrent form run over a whole sequence, one step per position.
///
/// # Shapes
/// As [`super::parallel`], plus `state`: `[b, h_q, m, d_v]`; returns (output, final state).
pub fn recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    mut state: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    check_shapes(&q, &k, &v, &log_decay);
    let [_, _, t, _] = q.dims();
    let mut outputs = Vec::with_capacity(t);
    for i in 0..t {
        let at = |x: &Tensor<B, 4>| x.clone().narrow(2, i, 1);
        let (o, next) = recurrent_step(at(&q), at(&k), at(&v), log_decay.clone(), state);
        outputs.push(o);
        state = next;
    }
    (Tensor::cat(outputs, 2), state)
}
