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
use crate::attention::{LayerState, merge_heads};

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
    /// - q: `[b, h_q, t, d]`, k / v: `[b, h_kv, t, d]`, x (the block's input): `[b, t, hidden]`
    /// - output: `[b, t, h_q*d]`
    pub fn forward_cached(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        x: Tensor<B, 3>,
        state: Option<LayerState<B>>,
    ) -> (Tensor<B, 3>, LayerState<B>) {
        let (o, state) = if self.window > 0 { self.hybrid(q, k, v, state) } else { self.linear(q, k, v, state) };
        (self.output(merge_heads(o), x), state)
    }

    /// Pure DiJiang; the state is `S` `[b, h_q, m, d_v]`, or `[S | z]` `[b, h_q, m, d_v + 1]`
    /// normalised.
    fn linear(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        state: Option<LayerState<B>>,
    ) -> (Tensor<B, 4>, LayerState<B>) {
        let [b, hq, t, _] = q.dims();
        let [_, _, _, dv] = v.dims();
        let m = self.proj.dims()[1];
        let (q, k) = (self.features(q), self.features(k));
        let past = match state {
            Some(LayerState::Recurrent(s)) => Some(s),
            _ => None,
        };
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
        (o, LayerState::Recurrent(state))
    }

    /// The sliding-window hybrid; the state is the linear state beside the window's ring buffer.
    fn hybrid(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        state: Option<LayerState<B>>,
    ) -> (Tensor<B, 4>, LayerState<B>) {
        let t = q.dims()[2];
        let phi_q = self.linear_queries(q.clone());
        let x = HybridInputs { q, phi_k: self.features(k.clone()), k, phi_q, v, log_decay: self.log_decay() };
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
    /// - q: `[b, h_q, t, d]` -> `[b, h_q, t, m]`
    fn linear_queries(&self, q: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = self.log_linear_weight.as_ref().expect("a window has its linear weight").val().exp();
        let [h] = weight.dims();
        self.features(q) * weight.reshape([1, h, 1, 1])
    }

    /// The attention rows of a whole sequence in the quadratic form: the un-normalised weights
    /// `(phi(q) phi(k)^T) * G` of the reference (non-negative, not summing to 1: divide by the row
    /// sums to compare them with softmax rows), or the normalised / hybrid rows (summing to 1).
    ///
    /// # Shapes
    /// - q: `[b, h_q, t, d]`, k: `[b, h_kv, t, d]` -> `[b, h_q, t, t]`
    pub fn rows(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, hq, t, _] = q.dims();
        let groups = hq / k.dims()[1];
        if self.window > 0 {
            let phi_q = self.linear_queries(q.clone());
            return hybrid_rows(q, k.clone(), phi_q, self.features(k), self.log_decay(), self.window);
        }
        if self.normalize {
            return normalized_rows(self.features(q), self.features(k), self.log_decay(), NORMALIZER_EPS);
        }
        let phi_k = repeat_kv(self.features(k), groups);
        self.features(q).matmul(phi_k.swap_dims(2, 3)) * decay_matrix(self.log_decay(), t)
    }
}
