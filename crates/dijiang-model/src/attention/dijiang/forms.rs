//! The DiJiang kernel's attention forms: pure linear attention (un-normalised as the reference, or
//! normalised) and the sliding-window hybrid, each chunked over a sequence (training, prefill) and
//! recurrent for one decoding step, plus the rows of their quadratic forms (diagnostics, attention
//! transfer).

use burn::prelude::*;
use dijiang_kernel::linear_attention::{
    HybridInputs, WindowState, chunked, decay_matrix, hybrid_chunked, hybrid_rows, hybrid_step, normalized_chunked,
    normalized_recurrent_step, normalized_rows, recurrent_step, repeat_kv,
};

use super::DiJiangKernel;
use super::shift::ShiftState;
use crate::attention::{Heads, LayerState, merge_heads};
use crate::config::FeatureInput;

/// Epsilon of the normalised form's denominator: negligible against the smallest row sums of the
/// reference map (whose features lie on the simplex, so scores are near `1/m`), large enough that
/// the division stays tame where a row's scores all but vanish.
pub const NORMALIZER_EPS: f64 = 1e-6;

impl<B: Backend> DiJiangKernel<B> {
    /// The next `t` positions after `state` (`None`: the start of the sequence): chunked for a
    /// sequence, one recurrent step for a single token with a state. Returns the output and the
    /// state after the last position (`Recurrent` for pure DiJiang, `Window` for the hybrid).
    ///
    /// # Shapes
    /// - heads of `t` positions ([`Heads`]), x (the block's input): `[b, t, hidden]`
    /// - output: `[b, t, h_q*d]`
    pub fn forward_cached(
        &self,
        heads: Heads<B>,
        x: Tensor<B, 3>,
        state: Option<LayerState<B>>,
    ) -> (Tensor<B, 3>, LayerState<B>) {
        let (o, state) = if self.window > 0 { self.hybrid(heads, state) } else { self.linear(heads, state) };
        (self.output(merge_heads(o), x), state)
    }

    /// Pure DiJiang; the state is `S` `[b, h_q, m, d_v]`, or `[S | z]` `[b, h_q, m, d_v + 1]`
    /// normalised (with the token shift, beside the last raw key and value).
    fn linear(&self, heads: Heads<B>, state: Option<LayerState<B>>) -> (Tensor<B, 4>, LayerState<B>) {
        let [b, hq, t, _] = heads.q.dims();
        let [_, _, _, dv] = heads.v.dims();
        let m = self.proj.dims()[1];
        let (past, last) = match state {
            Some(LayerState::Recurrent(s)) => (Some(s), None),
            Some(LayerState::Shifted { linear, last }) => (Some(linear), Some(last)),
            _ => (None, None),
        };
        let (heads, shifted) = self.shifted(heads, last);
        let (q, k) = self.head_features(&heads);
        let v = heads.v;
        let (log_decay, eps) = (self.log_decay(), NORMALIZER_EPS);
        let (o, state) = match past {
            Some(s) if t == 1 && self.normalize => normalized_recurrent_step(q, k, v, log_decay, s, eps),
            Some(s) if t == 1 => recurrent_step(q, k, v, log_decay, s),
            past => {
                let width = if self.normalize { dv + 1 } else { dv };
                let s = past.unwrap_or_else(|| Tensor::zeros([b, hq, m, width], &v.device()));
                if self.normalize {
                    normalized_chunked(q, k, v, log_decay, self.chunk_len, s, eps)
                } else {
                    chunked(q, k, v, log_decay, self.chunk_len, s)
                }
            }
        };
        let state = match shifted {
            Some(last) => LayerState::Shifted { linear: state, last },
            None => LayerState::Recurrent(state),
        };
        (o, state)
    }

    /// `heads` with the key the feature map reads and the value token-shifted after `last`
    /// (`token_shift`; unchanged without it), and the shift's state after them.
    fn shifted(&self, heads: Heads<B>, last: Option<ShiftState<B>>) -> (Heads<B>, Option<ShiftState<B>>) {
        let Some(shift) = &self.shift else { return (heads, None) };
        let mut heads = heads;
        let key = match self.feature_input {
            FeatureInput::Rotated => &mut heads.k,
            FeatureInput::Unrotated => &mut heads.k_unrotated,
        };
        let (k, v, next) = shift.apply(key.clone(), heads.v.clone(), last);
        *key = k;
        heads.v = v;
        (heads, Some(next))
    }

    /// The sliding-window hybrid; the state is the linear state beside the window's ring buffer.
    /// The window reads the rotated queries and keys whatever the feature map reads.
    fn hybrid(&self, heads: Heads<B>, state: Option<LayerState<B>>) -> (Tensor<B, 4>, LayerState<B>) {
        let t = heads.q.dims()[2];
        let (phi_q, phi_k) = self.head_features(&heads);
        let phi_q = self.weighted_linear(phi_q);
        let Heads { q, k, v, .. } = heads;
        let x = HybridInputs { q, phi_k, k, phi_q, v, log_decay: self.log_decay() };
        let state = match state {
            Some(LayerState::Window(s)) => s,
            _ => WindowState::empty(&x, self.window),
        };
        let (o, state) = if t == 1 { hybrid_step(x, state) } else { hybrid_chunked(x, self.chunk_len, state) };
        (o, LayerState::Window(state))
    }

    /// The hybrid's `phi(q)` with the linear part's per-head weight folded in.
    ///
    /// # Shapes
    /// - phi_q: `[b, h_q, t, m]` -> `[b, h_q, t, m]`
    fn weighted_linear(&self, phi_q: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = self.log_linear_weight.as_ref().expect("a window has its linear weight").val().exp();
        let [h] = weight.dims();
        phi_q * weight.reshape([1, h, 1, 1])
    }

    /// The attention rows of a whole sequence in the quadratic form: the un-normalised weights
    /// `(phi(q) phi(k)^T) * G` of the reference (non-negative, not summing to 1: divide by the row
    /// sums to compare them with softmax rows), or the normalised / hybrid rows (summing to 1).
    ///
    /// # Shapes
    /// - heads of `t` positions ([`Heads`]) -> `[b, h_q, t, t]`
    pub fn rows(&self, heads: Heads<B>) -> Tensor<B, 4> {
        let (heads, _) = self.shifted(heads, None);
        let [_, hq, t, _] = heads.q.dims();
        let groups = hq / heads.k.dims()[1];
        let (phi_q, phi_k) = self.head_features(&heads);
        if self.window > 0 {
            let phi_q = self.weighted_linear(phi_q);
            return hybrid_rows(heads.q, heads.k, phi_q, phi_k, self.log_decay(), self.window);
        }
        if self.normalize {
            return normalized_rows(phi_q, phi_k, self.log_decay(), NORMALIZER_EPS);
        }
        phi_q.matmul(repeat_kv(phi_k, groups).swap_dims(2, 3)) * decay_matrix(self.log_decay(), t)
    }
}
