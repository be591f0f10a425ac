//! The normalised form of causal linear attention with decay (the standard linear-attention
//! normaliser, Katharopoulos et al. 2020, with DiJiang's per-head decay):
//!
//! `o_n = sum_{j <= n} gamma^(n-j) (q_n . k_j) v_j / (sum_{j <= n} gamma^(n-j) (q_n . k_j) + eps)`,
//!
//! so that each output is a weighted average of values, as softmax attention's is, and the rows
//! `A[n, j] / sum_j A[n, j]` are directly comparable to softmax rows.
//!
//! The normaliser's running sum `z_n = sum_{j <= n} gamma^(n-j) k_j` obeys the same recurrence as
//! `S_n` (`z_n = gamma z_{n-1} + k_n`), so the chunked and recurrent forms carry it as one extra
//! value column: with `v' = [v | 1]` the un-normalised forms compute `[numerator | denominator]`
//! and their state is `[S | z]`, `[b, h_q, m, d_v + 1]`. The quadratic form [`normalized_parallel`]
//! divides the masked score rows directly (the twin the others are tested against).

use burn::tensor::{Tensor, backend::Backend};

use super::{check_shapes, chunked, decay_matrix, recurrent, recurrent_step, repeat_kv};

/// The attention rows of the normalised form: `A / (A 1 + eps)` with `A = (Q K^T) * G`.
///
/// # Shapes
/// - q: `[b, h_q, t, m]`, k: `[b, h_kv, t, m]`, log_decay: `[h_q]` -> `[b, h_q, t, t]`
pub fn normalized_rows<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 4> {
    let [_, hq, t, _] = q.dims();
    let [_, hkv, _, _] = k.dims();
    assert!(hkv > 0 && hq % hkv == 0, "{hq} query heads are not a multiple of {hkv} key/value heads");
    // [b, h, t, m] x [b, h, m, t] -> [b, h, t, t]
    let scores = q.matmul(repeat_kv(k, hq / hkv).swap_dims(2, 3)) * decay_matrix(log_decay, t);
    scores.clone() / scores.sum_dim(3).add_scalar(eps)
}

/// Normalised causal linear attention in the quadratic form.
///
/// # Shapes
/// As [`super::parallel`]: q `[b, h_q, t, m]`, k `[b, h_kv, t, m]`, v `[b, h_kv, t, d_v]`,
/// log_decay `[h_q]` -> `[b, h_q, t, d_v]`.
pub fn normalized_parallel<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 4> {
    let groups = check_shapes(&q, &k, &v, &log_decay);
    normalized_rows(q, k, log_decay, eps).matmul(repeat_kv(v, groups))
}

/// Normalised causal linear attention in chunks, from `state` = `[S | z]` (zeros for a fresh
/// sequence), returning the state after the last position.
///
/// # Shapes
/// As [`normalized_parallel`], plus state: `[b, h_q, m, d_v + 1]`; returns (output, final state).
pub fn normalized_chunked<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    chunk_len: usize,
    state: Tensor<B, 4>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (out, state) = chunked(q, k, with_ones(v), log_decay, chunk_len, state);
    (divide(out, eps), state)
}

/// One decoding step of the normalised form.
///
/// # Shapes
/// q `[b, h_q, 1, m]`, k `[b, h_kv, 1, m]`, v `[b, h_kv, 1, d_v]`, log_decay `[h_q]`,
/// state `[b, h_q, m, d_v + 1]` -> (output `[b, h_q, 1, d_v]`, next state).
pub fn normalized_recurrent_step<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    state: Tensor<B, 4>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (out, state) = recurrent_step(q, k, with_ones(v), log_decay, state);
    (divide(out, eps), state)
}

/// The normalised recurrent form over a whole sequence, one step per position.
///
/// # Shapes
/// As [`normalized_chunked`].
pub fn normalized_recurrent<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    log_decay: Tensor<B, 1>,
    state: Tensor<B, 4>,
    eps: f64,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let (out, state) = recurrent(q, k, with_ones(v), log_decay, state);
    (divide(out, eps), state)
}

/// `[v | 1]`: the values with a column of ones, whose attention output is the normaliser.
///
/// # Shapes
/// - v: `[b, h, t, d_v]` -> `[b, h, t, d_v + 1]`
pub(crate) fn with_ones<B: Backend>(v: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, _] = v.dims();
    let ones = Tensor::ones([b, h, t, 1], &v.device());
    Tensor::cat(vec![v, ones], 3)
}

/// `numerator / (denominator + eps)` from `[numerator | denominator]`.
///
/// # Shapes
/// - out: `[b, h, t, d_v + 1]` -> `[b, h, t, d_v]`
fn divide<B: Backend>(out: Tensor<B, 4>, eps: f64) -> Tensor<B, 4> {
    let (num, den) = split_normalizer(out);
    num / den.add_scalar(eps)
}

/// `([numerator], [denominator])` from `[numerator | denominator]`.
///
/// # Shapes
/// - out: `[b, h, t, d_v + 1]` -> (`[b, h, t, d_v]`, `[b, h, t, 1]`)
pub(crate) fn split_normalizer<B: Backend>(out: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [_, _, _, width] = out.dims();
    (out.clone().narrow(3, 0, width - 1), out.narrow(3, width - 1, 1))
}
