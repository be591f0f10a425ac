//! Rotary position embedding in the rotate-half convention (HF LLaMA and GPT-NeoX), rotating the
//! first `rotary_dims` dimensions of each head and passing the rest through (GPT-NeoX `rotary_pct`).
//!
//! Burn's own `RotaryEncoding` rotates interleaved pairs, the llama.cpp / llama2.c layout; the
//! checkpoints we load are in (or are converted to) the rotate-half layout, hence this module.

use burn::prelude::*;

use crate::config::ModelConfig;

/// cos and sin tables for positions `start..start + t`, each `[t, rotary_dims]`, laid out as
/// `cat(freqs, freqs)`.
///
/// Angles are computed as HF does, in f32 (`inv_freq` in f32, `position * inv_freq` in f32), so
/// logits match the reference to f32 round-off at long positions too.
pub fn rope_tables<B: Backend>(
    start: usize,
    t: usize,
    rotary_dims: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = rotary_dims / 2;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / rotary_dims as f64)) as f32).collect();
    let mut cos = Vec::with_capacity(t * rotary_dims);
    let mut sin = Vec::with_capacity(t * rotary_dims);
    for pos in start..start + t {
        let angles: Vec<f32> = inv_freq.iter().map(|f| pos as f32 * f).collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| (*a as f64).cos() as f32));
            sin.extend(angles.iter().map(|a| (*a as f64).sin() as f32));
        }
    }
    let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [t, rotary_dims]), device);
    (table(cos), table(sin))
}

/// The rotary tables of one forward pass: cos and sin for positions `start..start + t`
/// ([`rope_tables`]) and, for each head count the attention rotates (queries, keys), the
/// flattened per-head tables [`apply_rope`] multiplies by. Built once per pass: building them in
/// every layer for both projections took ~20 small tensor ops each, 60 times per decoded
/// SmolLM2 token (docs/profile.md).
#[derive(Clone, Debug)]
pub struct Rope<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `(heads, cos', sin')`, each table `[1, t * heads * head_dim]`.
    per_heads: Vec<(usize, Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> Rope<B> {
    /// The tables of `config`'s query and key heads at positions `start..start + t`.
    pub fn new(config: &ModelConfig, start: usize, t: usize, device: &B::Device) -> Self {
        let (cos, sin) = rope_tables(start, t, config.rotary_dims(), config.rope_theta, device);
        Self::with_heads(cos, sin, config.head_dim, &[config.num_heads, config.num_kv_heads])
    }

    /// From [`rope_tables`]' `cos` and `sin`, with the per-head tables of each of `heads` built
    /// now (others are built when [`apply_rope`] meets them).
    pub fn with_heads(cos: Tensor<B, 2>, sin: Tensor<B, 2>, head_dim: usize, heads: &[usize]) -> Self {
        let mut per_heads: Vec<(usize, Tensor<B, 2>, Tensor<B, 2>)> = Vec::new();
        if cos.dims()[1] > 0 {
            for &h in heads {
                if !per_heads.iter().any(|(n, _, _)| *n == h) {
                    let (c, s) = head_tables(&cos, &sin, h, head_dim);
                    per_heads.push((h, c, s));
                }
            }
        }
        Self { cos, sin, per_heads }
    }
}

/// Applies RoPE to the first `r` dims of each of the `heads` heads, in the projections' own
/// token-major layout (before the heads are split off).
///
/// Computed as `x * cos + swap_halves(x) * sin'`, where `sin'` carries rotate-half's sign
/// (`-sin` on the first half) and the pass-through dims get `cos = 1`, `sin' = 0`: the same
/// products as HF's `x * cos + rotate_half(x) * sin` (negation is exact), on contiguous tensors
/// against a `[1, t * heads * d]` table broadcast over the batch, which CPU backends run as one
/// vectorised pass. Rotating the permuted `[b, h, t, d]` heads instead walked them element by
/// element on Flex (~13% of a SmolLM2 evaluation, docs/profile.md).
///
/// # Shapes
/// - x: `[b, t, heads * d]`, rope: `t` positions -> `[b, t, heads * d]`
pub fn apply_rope<B: Backend>(x: Tensor<B, 3>, heads: usize, rope: &Rope<B>) -> Tensor<B, 3> {
    let [b, t, width] = x.dims();
    let [_, r] = rope.cos.dims();
    if r == 0 {
        return x;
    }
    let (d, half) = (width / heads, r / 2);
    let x4 = x.clone().reshape([b, t, heads, d]);
    // swap_halves(x) = cat(x2, x1, pass-through): the pass-through part meets sin' = 0.
    let mut swapped = vec![x4.clone().narrow(3, half, half), x4.clone().narrow(3, 0, half)];
    if d > r {
        swapped.push(x4.narrow(3, r, d - r));
    }
    let swapped = Tensor::cat(swapped, 3).reshape([b, t * width]);
    let (cos, sin) = match rope.per_heads.iter().find(|(n, _, _)| *n == heads) {
        Some((_, cos, sin)) => (cos.clone(), sin.clone()),
        None => head_tables(&rope.cos, &rope.sin, heads, d),
    };
    (x.reshape([b, t * width]) * cos + swapped * sin).reshape([b, t, width])
}

/// `cos` and `sin'` of [`apply_rope`] for every head of every position, flattened.
///
/// # Shapes
/// - cos / sin: `[t, r]` -> two `[1, t * heads * d]`
fn head_tables<B: Backend>(
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
    heads: usize,
    d: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [t, r] = cos.dims();
    let half = r / 2;
    let mut cos_parts = vec![cos.clone()];
    let mut sin_parts = vec![sin.clone().narrow(1, 0, half).neg(), sin.clone().narrow(1, half, half)];
    if d > r {
        cos_parts.push(Tensor::ones([t, d - r], &cos.device()));
        sin_parts.push(Tensor::zeros([t, d - r], &cos.device()));
    }
    let tile = |parts: Vec<Tensor<B, 2>>| {
        Tensor::cat(parts, 1).reshape([t, 1, d]).expand([t, heads, d]).reshape([1, t * heads * d])
    };
    (tile(cos_parts), tile(sin_parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = crate::cpu::Cpu;

    /// HF's `x * cos + rotate_half(x) * sin` on the first `r` dims of each head, element by
    /// element in f64, the rest passed through.
    fn naive(x: &[f32], [b, t, heads, d]: [usize; 4], r: usize, theta: f64) -> Vec<f32> {
        let half = r / 2;
        let mut out = x.to_vec();
        for (row, chunk) in out.chunks_mut(d).enumerate() {
            let pos = (row / heads) % t;
            let src = &x[row * d..row * d + d];
            for (i, slot) in chunk.iter_mut().enumerate().take(r) {
                let f = (1.0 / theta.powf((2 * (i % half)) as f64 / r as f64)) as f32;
                let angle = (pos as f32 * f) as f64;
                let rotated = if i < half { -src[i + half] } else { src[i - half] };
                *slot = (src[i] as f64 * angle.cos() + rotated as f64 * angle.sin()) as f32;
            }
        }
        assert_eq!(out.len(), b * t * heads * d);
        out
    }

    #[test]
    fn rotates_each_head_like_hf_with_and_without_pass_through() {
        let device = Default::default();
        for (r, start) in [(8, 0), (4, 5), (0, 0)] {
            let shape = [2, 3, 2, 8];
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
            let (cos, sin) = rope_tables::<B>(start, shape[1], r, 10_000.0, &device);
            let input = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [2, 3, 16]), &device);
            // Per-head tables built ahead (as a forward pass does) and on the fly: the same.
            let ahead = Rope::with_heads(cos.clone(), sin.clone(), 8, &[2, 1]);
            let got = apply_rope(input.clone(), 2, &ahead).into_data().to_vec::<f32>().unwrap();
            let on_the_fly = apply_rope(input, 2, &Rope::with_heads(cos, sin, 8, &[])).into_data();
            assert_eq!(on_the_fly.to_vec::<f32>().unwrap(), got);
            // Positions start..start + t: shift the naive positions by building it at each offset.
            let mut padded = vec![0.0; start * shape[2] * shape[3]];
            let mut want = Vec::new();
            for batch in x.chunks(n / 2) {
                padded.truncate(start * shape[2] * shape[3]);
                padded.extend_from_slice(batch);
                let all = naive(&padded, [1, start + 3, 2, 8], r, 10_000.0);
                want.extend_from_slice(&all[start * 16..]);
            }
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "r {r}, start {start}: {g} vs {w}");
            }
        }
    }
}
