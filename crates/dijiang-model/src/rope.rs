//! Rotary position embedding in the rotate-half convention (HF LLaMA and GPT-NeoX), rotating the
//! first `rotary_dims` dimensions of each head and passing the rest through (GPT-NeoX `rotary_pct`).
//!
//! Burn's own `RotaryEncoding` rotates interleaved pairs, the llama.cpp / llama2.c layout; the
//! checkpoints we load are in (or are converted to) the rotate-half layout, hence this module.

use burn::prelude::*;

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

/// Applies RoPE to the first `r` dims of each head.
///
/// # Shapes
/// - x: `[b, h, t, d]`, cos / sin: `[t, r]` -> `[b, h, t, d]`
pub fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let [_, r] = cos.dims();
    if r == 0 {
        return x;
    }
    let rot = x.clone().narrow(3, 0, r);
    let half = r / 2;
    // rotate_half(x) = cat(-x2, x1)
    let rotated = Tensor::cat(vec![rot.clone().narrow(3, half, half).neg(), rot.clone().narrow(3, 0, half)], 3);
    let cos = cos.clone().reshape([1, 1, t, r]);
    let sin = sin.clone().reshape([1, 1, t, r]);
    let out = rot * cos + rotated * sin;
    if r == d { out } else { Tensor::cat(vec![out, x.narrow(3, r, d - r)], 3) }.reshape([b, h, t, d])
}
