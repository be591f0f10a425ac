//! Causal scaled dot-product softmax attention (the teacher's kernel).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use dijiang_kernel::linear_attention::repeat_kv;

use super::merge_heads;

/// `softmax(q k^T / sqrt(d) + causal mask) v`, with grouped-query heads.
#[derive(Module, Debug, Clone)]
pub struct SoftmaxKernel {
    #[module(skip)]
    head_dim: usize,
}

impl SoftmaxKernel {
    pub fn new(head_dim: usize) -> Self {
        Self { head_dim }
    }

    /// # Shapes
    /// - q: `[b, h_q, t, d]`, k / v: `[b, h_kv, t, d]` -> `[b, t, h_q*d]`
    pub fn forward<B: Backend>(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 3> {
        let [_, hq, _, _] = q.dims();
        let [_, hkv, _, _] = k.dims();
        let v = repeat_kv(v, hq / hkv);
        merge_heads(self.rows(q, k).matmul(v))
    }

    /// The attention rows: each query's distribution over the keys it sees.
    ///
    /// # Shapes
    /// - q: `[b, h_q, t, d]`, k: `[b, h_kv, t_k, d]` (`t_k >= t`, the last `t` keys are the
    ///   queries' own positions) -> `[b, h_q, t, t_k]`
    pub fn rows<B: Backend>(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, hq, t, _] = q.dims();
        let [_, hkv, tk, _] = k.dims();
        let scores = q.matmul(repeat_kv(k, hq / hkv).swap_dims(2, 3)).div_scalar((self.head_dim as f64).sqrt());
        // Query i (at absolute position tk - t + i) sees keys 0..=tk - t + i.
        let mask = Tensor::<B, 2, Bool>::tril_mask([t, tk], (tk - t) as i64, &scores.device());
        softmax(scores.mask_fill(mask.reshape([1, 1, t, tk]), f32::NEG_INFINITY), 3)
    }
}
