//! Causal linear attention with per-head exponential decay (docs/method.md sections 3 and 4). Without a
//! normaliser (the reference), in three equivalent forms:
//!
//! - [`parallel`]: `o_n = sum_{m <= n} gamma^(n-m) (phi(q_n) . phi(k_m)) v_m`, the masked quadratic
//!   form the reference computes; the slow, obviously-correct twin the others are tested against.
//! - [`chunked`]: blocks of `c` positions, quadratic inside a block, a carried state across blocks;
//!   linear in sequence length. The form to train and prefill with.
//! - [`recurrent`]: `S_n = gamma S_{n-1} + phi(k_n) v_n^T`, `o_n = phi(q_n)^T S_n`; one step per
//!   generated token, memory independent of context length.
//!
//! Beside them, the same three forms of two variants:
//!
//! - [`normalized`]: each output divided by the sum of its decayed scores (the standard
//!   linear-attention normaliser), the running sum carried beside `S`.
//! - [`hybrid`]: LoLCATs' sliding-window hybrid, exact softmax over the last `W` keys and the
//!   decayed linear attention over the earlier ones, sharing one normaliser.
//!
//! Inputs are already feature-mapped (`phi(q)`, `phi(k)`). Decay is passed as `ln(gamma)` per query
//! head (`<= 0`; `0` is no decay), and every decay factor is computed as `exp(k ln gamma)` with
//! `k >= 0`: nothing like the reference's `gamma^(-n)` is ever formed, so any length works.
//!
//! Grouped-query attention: keys and values may have fewer heads than queries (`h_q = g h_kv`);
//! query head `i` reads key/value head `i / g`, as HF's `repeat_kv` does. The recurrent state is
//! per query head (the decay is), `[b, h_q, m, d_v]`.

mod chunked;
pub mod hybrid;
pub mod normalized;
mod parallel;
mod recurrent;

pub use chunked::chunked;
pub use hybrid::{
    HybridInputs, WindowState, hybrid_chunked, hybrid_parallel, hybrid_recurrent, hybrid_rows, hybrid_step,
};
pub use normalized::{
    normalized_chunked, normalized_parallel, normalized_recurrent, normalized_recurrent_step, normalized_rows,
};
pub use parallel::parallel;
pub use recurrent::{recurrent, recurrent_step};

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

/// Repeats key/value heads so that each query head has its own: `[b, h_kv, t, e]` ->
/// `[b, h_kv * groups, t, e]`, head `i` of the result being head `i / groups` of the input.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, h, t, e] = x.dims();
    // [b, h, t, e] -> [b, h, 1, t, e] -> [b, h, g, t, e] -> [b, h*g, t, e]
    x.unsqueeze_dim::<5>(2).expand([b, h, groups, t, e]).reshape([b, h * groups, t, e])
}

/// Number of query heads per key/value head, checking that the shapes fit together.
///
/// # Panics
/// If the batch sizes, lengths or feature sizes differ, or `h_q` is not a multiple of `h_kv`.
pub(crate) fn check_shapes<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    log_decay: &Tensor<B, 1>,
) -> usize {
    let [bq, hq, tq, mq] = q.dims();
    let [bk, hk, tk, mk] = k.dims();
    let [bv, hv, tv, _] = v.dims();
    let [hd] = log_decay.dims();
    assert!(
        bq == bk && bk == bv && tq == tk && tk == tv && mq == mk && hk == hv,
        "linear attention: q {:?}, k {:?}, v {:?} do not fit together",
        q.dims(),
        k.dims(),
        v.dims()
    );
    assert!(hk > 0 && hq % hk == 0, "{hq} query heads are not a multiple of {hk} key/value heads");
    assert_eq!(hd, hq, "one decay per query head");
    hq / hk
}

/// `ln(gamma)` of shape `[h]` broadcast to `[1, h, 1, 1]`.
pub(crate) fn per_head<B: Backend>(log_decay: Tensor<B, 1>) -> Tensor<B, 4> {
    let [h] = log_decay.dims();
    log_decay.reshape([1, h, 1, 1])
}

/// The causal decay matrix `G[h, i, j] = gamma_h^(i - j)` for `j <= i`, else 0: `[1, h, t, t]`.
pub fn decay_matrix<B: Backend>(log_decay: Tensor<B, 1>, t: usize) -> Tensor<B, 4> {
    let device = log_decay.device();
    let pos = Tensor::<B, 1, Int>::arange(0..t as i64, &device).float();
    // (i - j), clamped at 0 above the diagonal (masked out below) so no exponent is negative.
    let lag = (pos.clone().reshape([t, 1]) - pos.reshape([1, t])).clamp_min(0.0);
    let upper = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &device);
    let g = (lag.reshape([1, 1, t, t]) * per_head(log_decay)).exp();
    g.mask_fill(upper.reshape([1, 1, t, t]), 0.0)
}

/// `gamma_h^(t - 1 - i)` for `i` in `0..t` ([`decay_powers`] from 0 in reverse order, the same
/// bits), shaped `[1, h, t, 1]`. Built in that order rather than flipped: a flipped view has a
/// negative stride, which sent its product with the values down Flex's element-by-element path
/// (~2% of a SmolLM2 prefill, docs/profile.md).
pub(crate) fn reversed_decay_powers<B: Backend>(log_decay: Tensor<B, 1>, t: usize) -> Tensor<B, 4> {
    let device = log_decay.device();
    let exponent = Tensor::<B, 1, Int>::arange(0..t as i64, &device).float().neg().add_scalar((t - 1) as f64);
    (exponent.reshape([1, 1, t, 1]) * per_head(log_decay)).exp()
}

/// `gamma_h^(start + i)` for `i` in `0..t`, shaped `[1, h, t, 1]`.
pub(crate) fn decay_powers<B: Backend>(log_decay: Tensor<B, 1>, start: usize, t: usize) -> Tensor<B, 4> {
    let device = log_decay.device();
    let exponent = Tensor::<B, 1, Int>::arange(start as i64..(start + t) as i64, &device).float();
    (exponent.reshape([1, 1, t, 1]) * per_head(log_decay)).exp()
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::{decay_powers, reversed_decay_powers};
    use crate::cpu::Cpu;

    /// The reversed powers are the flipped ones, bit for bit.
    #[test]
    fn reversed_decay_powers_are_the_flipped_powers() {
        let device = Default::default();
        let log_decay = Tensor::<Cpu, 1>::from_data(TensorData::from([-0.01f32, -0.3, -2.5]), &device);
        for t in [1, 7, 128] {
            let want = decay_powers(log_decay.clone(), 0, t).flip([2]).into_data().to_vec::<f32>().unwrap();
            let got = reversed_decay_powers(log_decay.clone(), t).into_data().to_vec::<f32>().unwrap();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "t = {t}"
            );
        }
    }
}
