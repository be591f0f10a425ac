//! The hybrid one token at a time: a `W`-slot ring buffer (slot `p mod W` holds position `p`) of
//! raw keys for the softmax, their features and values, beside the linear state `[S | z]`. Each
//! step moves the key leaving the window (position `n - W`, in the slot the new key takes) into the
//! linear state, writes the new key, and attends to the ring exactly and to the state linearly.
//! The window part has no positional weighting, so the slots' order does not matter.

use burn::tensor::{Tensor, backend::Backend};

use super::{HybridInputs, WindowState, host_mask, window_lag, window_weights};
use crate::linear_attention::normalized::{split_normalizer, with_ones};
use crate::linear_attention::{recurrent_step, repeat_kv};

/// One decoding step.
///
/// # Shapes
/// As [`HybridInputs`] with `t = 1` -> (`[b, h_q, 1, d_v]`, next state).
///
/// # Panics
/// If the inputs hold more than one position or do not fit the state.
pub fn hybrid_step<B: Backend>(x: HybridInputs<B>, state: WindowState<B>) -> (Tensor<B, 4>, WindowState<B>) {
    let groups = x.check();
    let [_, _, t, d] = x.q.dims();
    assert_eq!(t, 1, "hybrid_step takes one position at a time");
    let (w, seen) = (state.window(), state.seen);
    let slot = seen % w;
    let at_slot = |ring: &Tensor<B, 4>| ring.clone().narrow(2, slot, 1);

    // Position seen - W leaves the window (zeros while there is none): S = gamma S + phi(k) [v | 1]^T.
    let (linear_out, linear) = recurrent_step(
        x.phi_q,
        at_slot(&state.features),
        with_ones(at_slot(&state.values)),
        x.log_decay.clone(),
        state.linear,
    );
    let (linear_num, linear_den) = split_normalizer(linear_out * window_lag(x.log_decay, w));

    let put = |ring: Tensor<B, 4>, new: Tensor<B, 4>| {
        let [b, h, _, e] = ring.dims();
        ring.slice_assign([0..b, 0..h, slot..slot + 1, 0..e], new)
    };
    let keys = put(state.keys, x.k);
    let features = put(state.features, x.phi_k);
    let values = put(state.values, x.v);

    // [b, h, 1, d] x [b, h, d, W] -> [b, h, 1, W]; slots not yet written are masked.
    let scores = x.q.matmul(repeat_kv(keys.clone(), groups).swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    let masked = host_mask::<B, 4>([1, 1, w], |_, _, l| l > seen, &scores.device());
    let weights = window_weights(scores, masked);
    let window_num = weights.clone().matmul(repeat_kv(values.clone(), groups));
    let window_den = weights.sum_dim(3);
    let out = (window_num + linear_num) / (window_den + linear_den);
    (out, WindowState { linear, keys, features, values, seen: seen + 1 })
}

/// The recurrent form over `t` positions, one [`hybrid_step`] each.
///
/// # Shapes
/// As [`super::hybrid_chunked`].
pub fn hybrid_recurrent<B: Backend>(x: HybridInputs<B>, mut state: WindowState<B>) -> (Tensor<B, 4>, WindowState<B>) {
    x.check();
    let [_, _, t, _] = x.q.dims();
    let mut outputs = Vec::with_capacity(t);
    for i in 0..t {
        let (o, next) = hybrid_step(x.narrow(i, 1), state);
        outputs.push(o);
        state = next;
    }
    (Tensor::cat(outputs, 2), state)
}
