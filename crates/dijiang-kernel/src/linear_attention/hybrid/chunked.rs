//! The hybrid in a form linear in sequence length: the linear part through the chunked form of
//! [`crate::linear_attention::chunked`] on keys shifted `W` positions back (query `n` reads keys
//! up to `n - W`), and the window as a banded block per chunk of `c` queries (its `c + W - 1` keys),
//! both continuing from a [`WindowState`]: the ring's positions are put in front of the new ones.

use burn::tensor::{Tensor, backend::Backend};

use super::{HybridInputs, WindowState, host_mask, rotate, window_lag, window_weights};
use crate::linear_attention::normalized::{split_normalizer, with_ones};
use crate::linear_attention::{chunked, repeat_kv};

/// The next `t` positions after `state` (see [`WindowState::empty`] for a fresh sequence), in
/// chunks of `chunk_len`; returns the output and the state after the last position.
///
/// # Shapes
/// As [`HybridInputs`] -> (`[b, h_q, t, d_v]`, state).
///
/// # Panics
/// If `chunk_len == 0` or the shapes do not fit together or the state.
pub fn hybrid_chunked<B: Backend>(
    x: HybridInputs<B>,
    chunk_len: usize,
    state: WindowState<B>,
) -> (Tensor<B, 4>, WindowState<B>) {
    assert!(chunk_len > 0, "chunk length must be positive");
    let groups = x.check();
    let (w, seen) = (state.window(), state.seen);
    let [_, _, t, _] = x.q.dims();
    // The ring oldest first, then the new positions: index e is position seen - W + e (zeros
    // before position 0). [b, h_kv, W + t, e]
    let extend = |ring: Tensor<B, 4>, new: Tensor<B, 4>| Tensor::cat(vec![rotate(ring, seen % w), new], 2);
    let keys = extend(state.keys, x.k);
    let features = extend(state.features, x.phi_k);
    let values = extend(state.values, x.v);

    // Linear part: query i (index W + i) reads indices 0..=i, decayed from index i (gamma^W more).
    let (linear_out, linear) = chunked(
        x.phi_q,
        features.clone().narrow(2, 0, t),
        with_ones(values.clone().narrow(2, 0, t)),
        x.log_decay.clone(),
        chunk_len,
        state.linear,
    );
    let (linear_num, linear_den) = split_normalizer(linear_out * window_lag(x.log_decay, w));

    let first_valid = w - seen.min(w);
    let (window_num, window_den) =
        window_part(x.q, repeat_kv(keys.clone(), groups), repeat_kv(values.clone(), groups), w, first_valid, chunk_len);
    let out = (window_num + linear_num) / (window_den + linear_den);

    // The last W indices back into ring order: position p in slot p mod W.
    let tail = |e: Tensor<B, 4>| rotate(e.narrow(2, t, w), (w - (seen + t) % w) % w);
    let state =
        WindowState { linear, keys: tail(keys), features: tail(features), values: tail(values), seen: seen + t };
    (out, state)
}

/// The window's numerator `sum exp(s - M) v` and denominator `sum exp(s - M)` for every query, in
/// blocks of `c` queries, each against the `(p + 1) c >= c + W - 1` keys its band can reach.
///
/// # Shapes
/// - q: `[b, h, t, d]`; keys / values: `[b, h, W + t, e]`, index `W + i` being query `i`'s own
///   position, indices below `first_valid` absent
/// - returns (`[b, h, t, d_v]`, `[b, h, t, 1]`)
fn window_part<B: Backend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    w: usize,
    first_valid: usize,
    c: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, t, d] = q.dims();
    let [_, _, _, dv] = values.dims();
    let device = q.device();
    let c = c.min(t);
    let (n, p) = (t.div_ceil(c), (w - 1).div_ceil(c));
    let span = (p + 1) * c;
    // [b, h, t, d] -> [b, h, n*c, d] (zero queries past the end, dropped below) -> [b, h, n, c, d]
    let q = pad_positions(q, n * c).reshape([b, h, n, c, d]);
    // Block i: indices i*c + 1 ..= i*c + span, i.e. chunks i..=i+p of the indices from 1.
    let blocks = |x: Tensor<B, 4>| {
        let e = x.dims()[3];
        // [b, h, W + t - 1, e] -> [b, h, (n + p) c, e] -> [b, h, n + p, c, e]
        let x = pad_positions(x.narrow(2, 1, w + t - 1), (n + p) * c).reshape([b, h, n + p, c, e]);
        // p + 1 times [b, h, n, c, e] -> [b, h, n, span, e]
        Tensor::cat((0..=p).map(|s| x.clone().narrow(2, s, n)).collect(), 3)
    };
    let (k, v) = (blocks(keys), blocks(values));
    // [b, h, n, c, d] x [b, h, n, d, span] -> [b, h, n, c, span]
    let scores = q.matmul(k.swap_dims(3, 4)).div_scalar((d as f64).sqrt());
    // Query r of block i (index i*c + r + W) sees key column l (index i*c + 1 + l) for
    // r <= l < r + W, where that index exists.
    let outside = |i: usize, r: usize, l: usize| l < r || l >= r + w || i * c + 1 + l < first_valid;
    let masked = host_mask::<B, 5>([n, c, span], outside, &device);
    let weights = window_weights(scores, masked);
    // [b, h, n, c, span] x [b, h, n, span, d_v] -> [b, h, n, c, d_v] -> [b, h, n*c, d_v] -> first t
    let num = weights.clone().matmul(v).reshape([b, h, n * c, dv]).narrow(2, 0, t);
    let den = weights.sum_dim(4).reshape([b, h, n * c, 1]).narrow(2, 0, t);
    (num, den)
}

/// `x` with zero positions appended up to `len`: `[b, h, t, e]` -> `[b, h, len, e]`.
fn pad_positions<B: Backend>(x: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
    let [b, h, t, e] = x.dims();
    if len <= t {
        return x;
    }
    let zeros = Tensor::zeros([b, h, len - t, e], &x.device());
    Tensor::cat(vec![x, zeros], 2)
}
