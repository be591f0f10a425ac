//! The DiJiang attention kernel (DIJIANG.md section 3, with the options of section 5):
//!
//! `out = silu(x W_G) * GroupNorm(merge_heads(LinearAttention(phi(q), phi(k), v; gamma)))`
//!
//! - `phi` is the configured feature map with a frozen projection (`proj`, saved with the model),
//!   optionally times learnable feature weights D;
//! - the decay is one `ln(gamma)` per query head (learnable or not), initialised to the reference's
//!   `gamma_h = 1 - exp(linspace(ln(1/32), ln(1/512), H))[h]`;
//! - no normaliser; GroupNorm with `num_groups = head_dim` over the merged heads (the reference's
//!   quirk: groups of H consecutive channels); the swish gate `W_G` is applied as `x @ W_G`.

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, silu};
use dijiang_kernel::feature_map::{
    paper_projection, performer_projection, positive_random_features, reference_projection, softmax_features,
    weighted_exp_features,
};
use dijiang_kernel::linear_attention::{chunked, decay_matrix, recurrent_step, repeat_kv};

use super::merge_heads;
use crate::config::{DecayKind, DiJiangConfig, FeatureMapKind, FeatureTraining, ModelConfig};
use crate::weights::{Init, WeightSource};

/// The reference's gate init: Xavier uniform with gain 2^-2.5.
const GATE_GAIN: f64 = 0.176_776_695_296_636_9;
/// GroupNorm epsilon of the reference.
const GROUP_NORM_EPS: f64 = 1e-5;

/// The reference's per-head decays `ln(gamma_h)` for `h` heads.
pub fn reference_log_decay(heads: usize) -> Vec<f64> {
    let (lo, hi) = ((1.0f64 / 32.0).ln(), (1.0f64 / 512.0).ln());
    (0..heads)
        .map(|i| {
            let frac = if heads == 1 { 0.0 } else { i as f64 / (heads - 1) as f64 };
            (1.0 - (lo + (hi - lo) * frac).exp()).ln()
        })
        .collect()
}

#[derive(Module, Debug)]
pub struct DiJiangKernel<B: Backend> {
    /// Feature projection `[d, m]`, frozen.
    pub proj: Param<Tensor<B, 2>>,
    /// Learnable per-feature weights D `[m]`.
    pub feature_weights: Option<Param<Tensor<B, 1>>>,
    /// `ln(gamma)` per query head `[h_q]`.
    pub log_decay: Param<Tensor<B, 1>>,
    /// `feature_training = scales`: a multiplier per projection column `[m]` (init 1).
    pub scale: Option<Param<Tensor<B, 1>>>,
    /// `feature_training = mlp`: `W1 [d, d]` and `W2 [d, d]` (init 0) of `x + relu(x W1) W2`.
    pub mlp_in: Option<Param<Tensor<B, 2>>>,
    pub mlp_out: Option<Param<Tensor<B, 2>>>,
    /// Output gate `W_G` `[hidden, heads*d]`, used as `x @ W_G`.
    pub gate: Param<Tensor<B, 2>>,
    pub group_norm: GroupNorm<B>,
    #[module(skip)]
    feature_map: FeatureMapKind,
    #[module(skip)]
    chunk_len: usize,
}

impl<B: Backend> DiJiangKernel<B> {
    pub fn build(src: &mut impl WeightSource<B>, name: &str, config: &ModelConfig, dj: &DiJiangConfig) -> Self {
        let d = config.head_dim;
        let m = dj.num_features(d);
        let width = config.num_heads * d;
        let proj_init = match dj.feature_map {
            FeatureMapKind::Reference => reference_projection(d, m, dj.sampling),
            FeatureMapKind::WeightedExp => paper_projection(d, dj.sampling),
            FeatureMapKind::Performer => performer_projection(d, m, dj.seed),
        };
        let proj = src.tensor(&format!("{name}.proj"), [d, m], Init::Values(proj_init));
        let feature_weights = dj
            .has_feature_weights()
            .then(|| Param::from_tensor(src.tensor(&format!("{name}.feature_weights"), [m], Init::Ones)));
        let decay_init = match dj.decay {
            DecayKind::Reference => Init::Values(reference_log_decay(config.num_heads)),
            DecayKind::None => Init::Zeros,
        };
        let log_decay = src.tensor(&format!("{name}.log_decay"), [config.num_heads], decay_init);
        let gate =
            src.tensor(&format!("{name}.gate"), [config.hidden_size, width], Init::XavierUniform { gain: GATE_GAIN });
        let training = dj.feature_training;
        let scale = (training == FeatureTraining::Scales)
            .then(|| Param::from_tensor(src.tensor(&format!("{name}.scale"), [m], Init::Ones)));
        let (mlp_in, mlp_out) = if training == FeatureTraining::Mlp {
            let w1 = src.tensor(&format!("{name}.mlp_in"), [d, d], Init::XavierUniform { gain: 1.0 });
            let w2 = src.tensor(&format!("{name}.mlp_out"), [d, d], Init::Zeros);
            (Some(Param::from_tensor(w1)), Some(Param::from_tensor(w2)))
        } else {
            (None, None)
        };
        let mut group_norm = GroupNormConfig::new(d, width).with_epsilon(GROUP_NORM_EPS).init(src.device());
        group_norm.gamma =
            Some(Param::from_tensor(src.tensor(&format!("{name}.group_norm.gamma"), [width], Init::Ones)));
        group_norm.beta =
            Some(Param::from_tensor(src.tensor(&format!("{name}.group_norm.beta"), [width], Init::Zeros)));
        Self {
            proj: Param::from_tensor(proj).set_require_grad(training == FeatureTraining::Projection),
            feature_weights,
            log_decay: Param::from_tensor(log_decay).set_require_grad(dj.learnable_decay),
            scale,
            mlp_in,
            mlp_out,
            gate: Param::from_tensor(gate),
            group_norm,
            feature_map: dj.feature_map,
            chunk_len: dj.chunk_len,
        }
    }

    /// phi(x) for queries or keys.
    ///
    /// # Shapes
    /// - x: `[b, h, t, d]` -> `[b, h, t, m]`
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut proj = self.proj.val();
        if let Some(scale) = &self.scale {
            let [m] = scale.dims();
            proj = proj * scale.val().reshape([1, m]);
        }
        let x = match (&self.mlp_in, &self.mlp_out) {
            (Some(w1), Some(w2)) => {
                let [b, h, t, d] = x.dims();
                let flat = x.clone().reshape([b * h * t, d]);
                let delta = relu(flat.matmul(w1.val())).matmul(w2.val()).reshape([b, h, t, d]);
                x + delta
            }
            _ => x,
        };
        let phi = match self.feature_map {
            FeatureMapKind::Reference => softmax_features(x, proj),
            FeatureMapKind::WeightedExp => {
                let weights = self.feature_weights.as_ref().expect("weighted_exp has feature weights").val();
                return weighted_exp_features(x, proj, weights);
            }
            FeatureMapKind::Performer => positive_random_features(x, proj),
        };
        match &self.feature_weights {
            Some(w) => {
                let [m] = w.dims();
                phi * w.val().reshape([1, 1, 1, m])
            }
            None => phi,
        }
    }

    /// `ln(gamma)` per query head, clamped to `<= 0` (gamma <= 1) whatever training did.
    pub fn log_decay(&self) -> Tensor<B, 1> {
        self.log_decay.val().clamp_max(0.0)
    }

    /// The next `t` positions after `state` (`None`: the start of the sequence): chunked for a
    /// sequence, one recurrent step for a single token with a state. Returns the output and the
    /// state after the last position.
    ///
    /// # Shapes
    /// - q: `[b, h_q, t, d]`, k / v: `[b, h_kv, t, d]`, x (the block's input): `[b, t, hidden]`
    /// - state: `[b, h_q, m, d_v]`
    /// - output: `[b, t, h_q*d]`
    pub fn forward_cached(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        x: Tensor<B, 3>,
        state: Option<Tensor<B, 4>>,
    ) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let [b, hq, t, _] = q.dims();
        let [_, _, _, dv] = v.dims();
        let m = self.proj.dims()[1];
        let (q, k) = (self.features(q), self.features(k));
        let (o, state) = match state {
            Some(state) if t == 1 => recurrent_step(q, k, v, self.log_decay(), state),
            state => {
                let state = state.unwrap_or_else(|| Tensor::zeros([b, hq, m, dv], &x.device()));
                chunked(q, k, v, self.log_decay(), self.chunk_len, state)
            }
        };
        (self.output(merge_heads(o), x), state)
    }

    /// The attention rows of a whole sequence in the quadratic form, `(phi(q) phi(k)^T) * G` with
    /// `G` the causal decay matrix: non-negative weights that, without a normaliser, need not sum
    /// to 1 (divide by the row sums to compare them with softmax rows).
    ///
    /// # Shapes
    /// - q: `[b, h_q, t, d]`, k: `[b, h_kv, t, d]` -> `[b, h_q, t, t]`
    pub fn rows(&self, q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, hq, t, _] = q.dims();
        let groups = hq / k.dims()[1];
        let phi_k = repeat_kv(self.features(k), groups);
        self.features(q).matmul(phi_k.swap_dims(2, 3)) * decay_matrix(self.log_decay(), t)
    }

    /// `silu(x W_G) * GroupNorm(o)`.
    ///
    /// # Shapes
    /// - o: `[b, t, h_q*d]`, x: `[b, t, hidden]` -> `[b, t, h_q*d]`
    fn output(&self, o: Tensor<B, 3>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, width] = o.dims();
        let [_, _, hidden] = x.dims();
        // GroupNorm per token: [b, t, C] -> [b*t, C]
        let normed = self.group_norm.forward(o.reshape([b * t, width])).reshape([b, t, width]);
        let gate = silu(x.reshape([b * t, hidden]).matmul(self.gate.val())).reshape([b, t, width]);
        gate * normed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_decay_spans_32_to_512_tokens() {
        let g: Vec<f64> = reference_log_decay(4).into_iter().map(f64::exp).collect();
        assert!((g[0] - (1.0 - 1.0 / 32.0)).abs() < 1e-12);
        assert!((g[3] - (1.0 - 1.0 / 512.0)).abs() < 1e-12);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }
}
