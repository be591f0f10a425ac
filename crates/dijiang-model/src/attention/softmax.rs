//! Causal scaled dot-product softmax attention (the teacher's kernel).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use dijiang_kernel::linear_attention::repeat_kv;

use super::merge_heads;

/// Whether `B` computes the attention output with its own fused attention (`burn::tensor::module::
/// attention`) rather than the composed ops of [`SoftmaxKernel::rows`]: Flex only, whose fused form
/// (vendor/burn-flex change 12: every head on its own core, the causal mask's empty tiles skipped,
/// no `t x t` rows in memory) makes SmolLM2-135M's forward at 1,024 tokens ~20% faster
/// (docs/bench.md). Autodiff backends compose the same ops as `rows` in their fallback (no gain),
/// NdArray has no fused form, and the GPU backends' flash kernels are not measured here (no GPU
/// in CI; wgpu runs on a software Vulkan), so they keep the composed path.
fn fused<B: Backend>(device: &B::Device) -> bool {
    B::name(device) == "flex"
}

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
        if fused::<B>(&q.device()) {
            // The backend's causal attention aligns the queries with the last keys, as `rows`
            // does (query i at position t_k - t + i), and scales by 1/sqrt(d) of the heads.
            let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
            return merge_heads(attention(q, repeat_kv(k, hq / hkv), v, None, None, options));
        }
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

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};
    use dijiang_kernel::cpu::Cpu;

    use super::SoftmaxKernel;

    /// The attention output (fused on Flex, vendor/burn-flex change 12; composed elsewhere) is
    /// causal softmax attention computed by hand in f64, with grouped-query heads: a full forward
    /// past Flex's naive budget (its tiled path, the last tile ragged), a prefill after cached keys
    /// (queries aligned with the last keys, tiles skipped), one decoded token, and short forwards
    /// (Flex's untiled path).
    #[test]
    fn the_attention_output_is_causal_softmax_attention() {
        let device = Default::default();
        let d = 16;
        let kernel = SoftmaxKernel::new(d);
        for (t, tk) in [(600, 600), (400, 700), (1, 650), (37, 37), (5, 40)] {
            let (hq, hkv) = (6, 2);
            let normal = Distribution::Normal(0.0, 1.0);
            let q = Tensor::<Cpu, 4>::random([1, hq, t, d], normal, &device);
            let k = Tensor::<Cpu, 4>::random([1, hkv, tk, d], normal, &device);
            let v = Tensor::<Cpu, 4>::random([1, hkv, tk, d], normal, &device);
            let got = kernel.forward(q.clone(), k.clone(), v.clone()).into_data().to_vec::<f32>().unwrap();
            let [q, k, v] = [q, k, v].map(|x| x.into_data().to_vec::<f32>().unwrap());
            let scale = 1.0 / (d as f64).sqrt();
            for h in 0..hq {
                let g = h / (hq / hkv);
                for i in 0..t {
                    let seen = tk - t + i + 1;
                    let row = |j: usize| &k[(g * tk + j) * d..(g * tk + j + 1) * d];
                    let query = &q[(h * t + i) * d..(h * t + i + 1) * d];
                    let scores: Vec<f64> = (0..seen)
                        .map(|j| query.iter().zip(row(j)).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for c in 0..d {
                        let want: f64 =
                            (0..seen).map(|j| weights[j] * v[(g * tk + j) * d + c] as f64).sum::<f64>() / sum;
                        // `[b, t, h*d]`.
                        let out = got[(i * hq + h) * d + c] as f64;
                        assert!((out - want).abs() <= 1e-5, "t {t}, t_k {tk}, head {h}, query {i}: {out} vs {want}");
                    }
                }
            }
        }
    }
}
