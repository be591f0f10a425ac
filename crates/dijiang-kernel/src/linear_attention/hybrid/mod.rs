//! The sliding-window hybrid (LoLCATs, Zhang et al. 2024, arXiv 2410.10254, section 3.2): exact
//! softmax attention over each query's last `W` keys plus DiJiang's decayed linear attention over
//! the keys before them, sharing one normaliser. For query `n`, window `J_w = {n-W+1, ..., n}`
//! and linear part `J_l = {j <= n-W}`:
//!
//! `o_n = (sum_{J_w} exp(s_nj - M_n) v_j + sum_{J_l} gamma^(n-j) (phi(q_n) . phi(k_j)) v_j)
//!      / (sum_{J_w} exp(s_nj - M_n)     + sum_{J_l} gamma^(n-j) (phi(q_n) . phi(k_j)))`,
//!
//! with `s_nj = q_n . k_j / sqrt(d)` on the raw (rotated) queries and keys and
//! `M_n = max_{j in J_w} s_nj`. The features are the caller's: of the same rotated vectors (the
//! reference order) or of the vectors before RoPE.
//!
//! Numerics (the choice, as LoLCATs makes it): the window scores are shifted by their own row
//! maximum, and the linear scores are *not* scaled by `exp(-M_n)`. So the window's largest weight
//! is exactly 1 and the denominator is at least 1 (no epsilon needed, no overflow for any logit
//! scale), and the linear part's share does not vanish or explode with the query's logit scale;
//! the price is that the linear part is weighed against the *max-shifted* window, which is a
//! modelling choice rather than an approximation of one softmax (LoLCATs learns a per-head factor
//! between the two parts; the caller folds such a weight into `phi(q)`). It needs bounded linear
//! scores: the reference feature map's rows lie on the simplex, so `phi(q) . phi(k) <= 1`.
//! The window part has no decay (LoLCATs has none); the linear part keeps DiJiang's.
//!
//! All three forms compute `M_n` over the same window, so they agree exactly, gradients included
//! (the gradient flows through the maximum, as through any other score).
//!
//! - [`hybrid_parallel`] / [`hybrid_rows`]: the quadratic reference, `O(t^2)`.
//! - [`hybrid_chunked`]: blocks of `c` queries, each with its band of `c + W - 1` keys, beside the
//!   chunked linear state for the keys before the window; linear in length. Continues from a
//!   [`WindowState`].
//! - [`hybrid_step`] / [`hybrid_recurrent`]: one token at a time with a `W`-slot ring buffer of
//!   keys, features and values beside the linear state `[S | z]`; the key leaving the window enters
//!   the linear state. Memory constant in the context length.

mod chunked;
mod parallel;
mod recurrent;

pub use chunked::hybrid_chunked;
pub use parallel::{hybrid_parallel, hybrid_rows};
pub use recurrent::{hybrid_recurrent, hybrid_step};

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

use super::{check_shapes, per_head};

/// The inputs of one hybrid attention call (positions `seen..seen + t` after a state).
#[derive(Debug, Clone)]
pub struct HybridInputs<B: Backend> {
    /// Queries as the softmax sees them (after RoPE): `[b, h_q, t, d]`.
    pub q: Tensor<B, 4>,
    /// Keys as the softmax sees them: `[b, h_kv, t, d]`.
    pub k: Tensor<B, 4>,
    /// Feature-mapped queries, any weight of the linear part folded in: `[b, h_q, t, m]`.
    pub phi_q: Tensor<B, 4>,
    /// Feature-mapped keys: `[b, h_kv, t, m]`.
    pub phi_k: Tensor<B, 4>,
    /// Values: `[b, h_kv, t, d_v]`.
    pub v: Tensor<B, 4>,
    /// `ln(gamma)` of the linear part, per query head: `[h_q]`.
    pub log_decay: Tensor<B, 1>,
}

impl<B: Backend> HybridInputs<B> {
    /// Query heads per key/value head, checking that every shape fits.
    ///
    /// # Panics
    /// If the shapes do not fit together.
    pub(crate) fn check(&self) -> usize {
        let groups = check_shapes(&self.phi_q, &self.phi_k, &self.v, &self.log_decay);
        let [bq, hq, tq, dq] = self.q.dims();
        let [bk, hk, tk, dk] = self.k.dims();
        let [bf, hf, tf, _] = self.phi_q.dims();
        let [_, hfk, _, _] = self.phi_k.dims();
        assert!(
            [bq, hq, tq] == [bf, hf, tf] && [bk, hk, tk] == [bf, hfk, tf] && dq == dk,
            "hybrid attention: q {:?}, k {:?} do not fit phi(q) {:?}, phi(k) {:?}",
            self.q.dims(),
            self.k.dims(),
            self.phi_q.dims(),
            self.phi_k.dims()
        );
        groups
    }

    /// Positions `start..start + len` of every input.
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        let at = |x: &Tensor<B, 4>| x.clone().narrow(2, start, len);
        Self {
            q: at(&self.q),
            k: at(&self.k),
            phi_q: at(&self.phi_q),
            phi_k: at(&self.phi_k),
            v: at(&self.v),
            log_decay: self.log_decay.clone(),
        }
    }
}

/// What the hybrid carries from one call to the next: the linear state over the keys that have
/// left the window, and a ring buffer of the last `W` positions (slot `p mod W` holds position `p`;
/// zeros where no position has been yet).
#[derive(Debug, Clone)]
pub struct WindowState<B: Backend> {
    /// `[S | z]` over keys `j <= seen - 1 - W`, decayed to the newest of them: `[b, h_q, m, d_v + 1]`.
    pub linear: Tensor<B, 4>,
    /// Raw keys `[b, h_kv, W, d]`, their features `[b, h_kv, W, m]` and values `[b, h_kv, W, d_v]`.
    pub keys: Tensor<B, 4>,
    pub features: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
    /// Positions seen so far.
    pub seen: usize,
}

impl<B: Backend> WindowState<B> {
    /// The state before the first position, for inputs shaped like `x` and a window of `window`
    /// keys.
    ///
    /// # Panics
    /// If `window == 0`.
    pub fn empty(x: &HybridInputs<B>, window: usize) -> Self {
        assert!(window > 0, "the window holds at least the query's own key");
        let [b, hq, _, _] = x.phi_q.dims();
        let [_, hkv, _, d] = x.k.dims();
        let [_, _, _, m] = x.phi_k.dims();
        let [_, _, _, dv] = x.v.dims();
        let device = x.q.device();
        Self {
            linear: Tensor::zeros([b, hq, m, dv + 1], &device),
            keys: Tensor::zeros([b, hkv, window, d], &device),
            features: Tensor::zeros([b, hkv, window, m], &device),
            values: Tensor::zeros([b, hkv, window, dv], &device),
            seen: 0,
        }
    }

    /// The window length `W`.
    pub fn window(&self) -> usize {
        self.keys.dims()[2]
    }

    /// The shapes of the state's tensors (the same at any context length).
    pub fn shapes(&self) -> Vec<[usize; 4]> {
        vec![self.linear.dims(), self.keys.dims(), self.features.dims(), self.values.dims()]
    }
}

/// `x` rotated along positions (dim 2) so that `out[j] = x[(j + shift) mod n]`.
pub(crate) fn rotate<B: Backend>(x: Tensor<B, 4>, shift: usize) -> Tensor<B, 4> {
    let n = x.dims()[2];
    let shift = shift % n;
    if shift == 0 {
        return x;
    }
    Tensor::cat(vec![x.clone().narrow(2, shift, n - shift), x.narrow(2, 0, shift)], 2)
}

/// `gamma^W` per query head, `[1, h, 1, 1]`: the linear part's state is `W` positions behind the
/// query.
pub(crate) fn window_lag<B: Backend>(log_decay: Tensor<B, 1>, window: usize) -> Tensor<B, 4> {
    per_head(log_decay.mul_scalar(window as f64)).exp()
}

/// The window's weights `exp(s - max s)` over the unmasked keys of each row (last dim), 0 where
/// `masked`. Every row must keep at least one key.
pub(crate) fn window_weights<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    masked: Tensor<B, D, Bool>,
) -> Tensor<B, D> {
    let scores = scores.mask_fill(masked, f32::NEG_INFINITY);
    let max = scores.clone().max_dim(D - 1);
    (scores - max).exp()
}

/// A boolean mask of `shape` (leading dims 1) from `masked(index)` over its last three dims.
pub(crate) fn host_mask<B: Backend, const D: usize>(
    shape: [usize; 3],
    masked: impl Fn(usize, usize, usize) -> bool,
    device: &B::Device,
) -> Tensor<B, D, Bool> {
    let [x, y, z] = shape;
    let values: Vec<bool> = (0..x)
        .flat_map(|i| (0..y).flat_map(move |j| (0..z).map(move |l| (i, j, l))))
        .map(|(i, j, l)| masked(i, j, l))
        .collect();
    let mut full = [1usize; D];
    full[D - 3..].copy_from_slice(&shape);
    Tensor::from_data(TensorData::new(values, full), device)
}
