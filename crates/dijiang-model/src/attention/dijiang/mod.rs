//! The DiJiang attention kernel (docs/method.md section 3, with the options of section 5):
//!
//! `out = gate(x) * norm(merge_heads(LinearAttention(phi(q), phi(k), v; gamma)))`
//!
//! - `phi` is the configured feature map with a frozen projection (`proj`, saved with the model),
//!   optionally times learnable feature weights D;
//! - the decay is one `ln(gamma)` per query head (learnable or not), initialised to the reference's
//!   `gamma_h = 1 - exp(linspace(ln(1/32), ln(1/512), H))[h]` (or calibrated on the teacher);
//! - the reference: no normaliser, GroupNorm with `num_groups = head_dim` over the merged heads (its
//!   quirk: groups of H consecutive channels), the swish gate `silu(x W_G)`;
//! - options (`DiJiangConfig`): the normalised form (`normalize`), the sliding-window hybrid
//!   (`window`, [`forms`]), no or an identity-at-init gate and no GroupNorm ([`output`]), a bound
//!   on the decay's horizon (`max_horizon`), features of the queries and keys before RoPE
//!   (`feature_input`), the previous position's keys and values mixed in (`token_shift`,
//!   [`shift`]).

mod forms;
mod output;
mod shift;

pub use forms::NORMALIZER_EPS;
pub use shift::{Shift, ShiftState};

use burn::module::Param;
use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::activation::relu;
use dijiang_kernel::feature_map::{
    paper_projection, performer_projection, positive_random_features, reference_projection, softmax_features,
    weighted_exp_features,
};

use crate::attention::Heads;
use crate::config::{DecayKind, DiJiangConfig, FeatureInput, FeatureMapKind, FeatureTraining, GateKind, ModelConfig};
use crate::weights::{Init, WeightSource};

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

/// The bound on `ln(gamma)` for a longest horizon of `max_horizon` tokens (0: gamma <= 1).
pub fn max_log_decay(max_horizon: Option<usize>) -> f64 {
    max_horizon.map_or(0.0, |h| (1.0 - 1.0 / h as f64).ln())
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
    /// Output gate `W_G` `[hidden, heads*d]`, used as `x @ W_G` (`gate = reference | identity`).
    pub gate: Option<Param<Tensor<B, 2>>>,
    /// `output_norm = group_norm`.
    pub group_norm: Option<GroupNorm<B>>,
    /// `window > 0`: `ln` of the linear part's weight beside the window, per query head `[h_q]`
    /// (init 0: weight 1). LoLCATs' learned balance between the two parts.
    pub log_linear_weight: Option<Param<Tensor<B, 1>>>,
    /// `token_shift`: each key channel's and value channel's share of the previous position
    /// (`[h_kv, d]` each, init 0), see [`shift`].
    pub shift: Option<Shift<B>>,
    #[module(skip)]
    feature_map: FeatureMapKind,
    #[module(skip)]
    feature_input: FeatureInput,
    #[module(skip)]
    chunk_len: usize,
    #[module(skip)]
    gate_kind: GateKind,
    #[module(skip)]
    normalize: bool,
    #[module(skip)]
    window: usize,
    #[module(skip)]
    learnable_decay: bool,
    /// `ln(1 - 1/max_horizon)`, or 0 (`DiJiangConfig::max_horizon`).
    #[module(skip)]
    max_log_decay: f64,
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
        let proj_name = format!("{name}.proj");
        let proj = src.tensor(&proj_name, [d, m], Init::Values(proj_init));
        let feature_weights = dj
            .has_feature_weights()
            .then(|| Param::from_tensor(src.tensor(&format!("{name}.feature_weights"), [m], Init::Ones)));
        let decay_init = match dj.decay {
            // Calibrated values are set after the build, from the teacher (`calibrate`).
            DecayKind::Reference | DecayKind::Calibrated => Init::Values(reference_log_decay(config.num_heads)),
            DecayKind::None => Init::Zeros,
        };
        let decay_name = format!("{name}.log_decay");
        let log_decay = src.tensor(&decay_name, [config.num_heads], decay_init);
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
        let log_linear_weight = (dj.window > 0).then(|| {
            Param::from_tensor(src.tensor(&format!("{name}.log_linear_weight"), [config.num_heads], Init::Zeros))
        });
        let shift = dj.token_shift.then(|| Shift::build(src, name, config.num_kv_heads, d));
        Self {
            proj: Param::from_tensor(proj).set_require_grad(dj.is_trainable(&proj_name)),
            feature_weights,
            log_decay: Param::from_tensor(log_decay).set_require_grad(dj.is_trainable(&decay_name)),
            scale,
            mlp_in,
            mlp_out,
            gate: output::build_gate(src, name, config.hidden_size, width, dj.gate),
            group_norm: output::build_group_norm(src, name, d, width, dj.output_norm),
            log_linear_weight,
            shift,
            feature_map: dj.feature_map,
            feature_input: dj.feature_input,
            chunk_len: dj.chunk_len,
            gate_kind: dj.gate,
            normalize: dj.normalize,
            window: dj.window,
            learnable_decay: dj.is_trainable(&decay_name),
            max_log_decay: max_log_decay(dj.max_horizon),
        }
    }

    /// Replaces the decays by `log_decay` (`ln(gamma)` per query head, `[h_q]`), keeping whether
    /// they are trainable (conversion with decays calibrated on the teacher).
    ///
    /// # Panics
    /// If `log_decay` has not one value per query head.
    pub fn set_log_decay(&mut self, log_decay: Tensor<B, 1>) {
        assert_eq!(log_decay.dims(), self.log_decay.dims(), "one decay per query head");
        self.log_decay = Param::from_tensor(log_decay).set_require_grad(self.learnable_decay);
    }

    /// Replaces the hybrid's linear-part weights by `exp(log_weight)` (`[h_q]`), e.g. calibrated
    /// on the teacher.
    ///
    /// # Panics
    /// If the kernel has no window or `log_weight` has not one value per query head.
    pub fn set_log_linear_weight(&mut self, log_weight: Tensor<B, 1>) {
        let current = self.log_linear_weight.as_ref().expect("a hybrid kernel (window > 0)");
        assert_eq!(log_weight.dims(), current.dims(), "one weight per query head");
        self.log_linear_weight = Some(Param::from_tensor(log_weight));
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

    /// phi(q) and phi(k) of `heads`: of the rotated or un-rotated pair ([`FeatureInput`]).
    ///
    /// # Shapes
    /// - heads: q `[b, h_q, t, d]`, k `[b, h_kv, t, d]` -> `[b, h_q, t, m]`, `[b, h_kv, t, m]`
    pub fn head_features(&self, heads: &Heads<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (q, k) = match self.feature_input {
            FeatureInput::Rotated => (&heads.q, &heads.k),
            FeatureInput::Unrotated => (&heads.q_unrotated, &heads.k_unrotated),
        };
        (self.features(q.clone()), self.features(k.clone()))
    }

    /// `ln(gamma)` per query head, clamped to `<= ln(1 - 1/max_horizon)` (`<= 0` without a
    /// horizon: gamma <= 1) whatever training did.
    pub fn log_decay(&self) -> Tensor<B, 1> {
        self.log_decay.val().clamp_max(self.max_log_decay)
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

    #[test]
    fn decay_stays_within_its_horizon_whatever_its_parameter() {
        use crate::weights::Fresh;
        type B = crate::cpu::Cpu;
        let device = Default::default();
        let config = ModelConfig::tiny(crate::config::Architecture::Llama);
        let heads = config.num_heads;
        // Stored values as training leaves them: below, at and above each bound.
        let stored: Vec<f32> = (0..heads).map(|i| -0.05 + 0.02 * i as f32).collect();
        for max_horizon in [None, Some(2), Some(64)] {
            let dj = DiJiangConfig { max_horizon, ..DiJiangConfig::default() };
            let mut kernel = DiJiangKernel::<B>::build(&mut Fresh { seed: 0, device: &device }, "k", &config, &dj);
            kernel.set_log_decay(Tensor::from_data(TensorData::new(stored.clone(), [heads]), &device));
            let got: Vec<f32> = kernel.log_decay().into_data().to_vec().expect("f32");
            let bound = max_log_decay(max_horizon);
            for (s, g) in stored.iter().zip(got) {
                assert_eq!(g, s.min(bound as f32), "max_horizon {max_horizon:?}");
            }
        }
        assert_eq!(max_log_decay(None), 0.0);
        assert!((max_log_decay(Some(512)).exp() - (1.0 - 1.0 / 512.0)).abs() < 1e-15);
    }
}
