//! Token shift (`DiJiangConfig::token_shift`): the keys the feature map reads and the values, each
//! channel mixed with the previous position's, `x_t + mu (x_{t-1} - x_t)` (RWKV's token shift, a
//! short convolution of length 2). With features of un-rotated keys a linear head has no notion
//! of "the previous token"; a shifted key carries it, so a query can find the position after an
//! earlier occurrence of its own token in one layer (H3's shift, the short convolutions of GLA and
//! Mamba). `mu` starts at 0: the converted student is the one without the shift.
//!
//! The shift happens before the attention forms, so the chunked and recurrent forms see the same
//! inputs; what decoding carries across calls is the last position's raw key and value.

use burn::module::Param;
use burn::prelude::*;

use crate::weights::{Init, WeightSource};

/// The learnable mixes, `[h_kv, d]` each.
#[derive(Module, Debug)]
pub struct Shift<B: Backend> {
    /// Each key channel's share of the previous position's key.
    pub keys: Param<Tensor<B, 2>>,
    /// Each value channel's share of the previous position's value.
    pub values: Param<Tensor<B, 2>>,
}

/// The last position's raw (un-shifted) key and value, `[b, h_kv, 1, d]` each: what the next call's
/// first position mixes in.
#[derive(Debug, Clone)]
pub struct ShiftState<B: Backend> {
    pub key: Tensor<B, 4>,
    pub value: Tensor<B, 4>,
}

impl<B: Backend> ShiftState<B> {
    /// The state's tensors' shapes.
    pub fn shapes(&self) -> Vec<[usize; 4]> {
        vec![self.key.dims(), self.value.dims()]
    }

    /// The state of the batch rows `rows` (repeats allowed).
    pub fn select_rows(&self, rows: Tensor<B, 1, Int>) -> Self {
        Self { key: self.key.clone().select(0, rows.clone()), value: self.value.clone().select(0, rows) }
    }
}

impl<B: Backend> Shift<B> {
    /// `{name}.shift.keys` and `{name}.shift.values` (`name`: the kernel's path), `[kv_heads,
    /// head_dim]`, zeros when new.
    pub fn build(src: &mut impl WeightSource<B>, name: &str, kv_heads: usize, head_dim: usize) -> Self {
        let shape = [kv_heads, head_dim];
        let mut mix = |part: &str| Param::from_tensor(src.tensor(&format!("{name}.shift.{part}"), shape, Init::Zeros));
        Self { keys: mix("keys"), values: mix("values") }
    }

    /// The shifted key and value of `t` positions after `last` (`None`: the sequence starts here,
    /// the position before it is zeros), and the state after them.
    ///
    /// # Shapes
    /// - key, value: `[b, h_kv, t, d]` -> the same, and a [`ShiftState`]
    pub fn apply(
        &self,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
        last: Option<ShiftState<B>>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, ShiftState<B>) {
        let (last_key, last_value) = last.map(|s| (s.key, s.value)).unzip();
        let next = ShiftState { key: last_position(&key), value: last_position(&value) };
        let key = mix(self.keys.val(), key, last_key);
        let value = mix(self.values.val(), value, last_value);
        (key, value, next)
    }
}

/// `[b, h, t, d]` -> its last position, `[b, h, 1, d]`.
fn last_position<B: Backend>(x: &Tensor<B, 4>) -> Tensor<B, 4> {
    let t = x.dims()[2];
    x.clone().narrow(2, t - 1, 1)
}

/// `x_t + mu (x_{t-1} - x_t)` with `x_{-1} = before` (zeros without it).
///
/// # Shapes
/// - mu: `[h, d]`, x: `[b, h, t, d]`, before: `[b, h, 1, d]` -> `[b, h, t, d]`
fn mix<B: Backend>(mu: Tensor<B, 2>, x: Tensor<B, 4>, before: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let before = before.unwrap_or_else(|| Tensor::zeros([b, h, 1, d], &x.device()));
    let previous = if t == 1 { before } else { Tensor::cat(vec![before, x.clone().narrow(2, 0, t - 1)], 2) };
    x.clone() + (previous - x) * mu.reshape([1, h, 1, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = crate::cpu::Cpu;

    #[test]
    fn each_position_mixes_in_the_one_before_across_calls() {
        let device = Default::default();
        let mu = Tensor::<B, 2>::from_data(TensorData::new(vec![0.0f32, 0.5, 1.0], [1, 3]), &device);
        let shift = Shift { keys: Param::from_tensor(mu.clone()), values: Param::from_tensor(mu) };
        // One head, 4 positions, 3 channels: x[t][c] = 10 t + c.
        let x: Vec<f32> = (0..4).flat_map(|t| (0..3).map(move |c| (10 * t + c) as f32)).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [1, 1, 4, 3]), &device);
        let (k, _, _) = shift.apply(x.clone(), x.clone(), None);
        let k: Vec<f32> = k.into_data().to_vec().unwrap();
        // Channel 0 keeps x_t, channel 2 is x_{t-1} (zeros before the start), channel 1 halfway.
        assert_eq!(k, vec![0.0, 0.5, 0.0, 10.0, 6.0, 2.0, 20.0, 16.0, 12.0, 30.0, 26.0, 22.0]);
        // The same positions in two calls, the state carrying the raw last position.
        let (k1, v1, state) = shift.apply(x.clone().narrow(2, 0, 3), x.clone().narrow(2, 0, 3), None);
        let (k2, v2, _) = shift.apply(x.clone().narrow(2, 3, 1), x.narrow(2, 3, 1), Some(state));
        let both = |a: Tensor<B, 4>, b: Tensor<B, 4>| Tensor::cat(vec![a, b], 2).into_data().to_vec::<f32>().unwrap();
        assert_eq!(both(k1, k2), k);
        assert_eq!(both(v1, v2), k);
    }
}
