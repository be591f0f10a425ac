//! The DiJiang kernel's output path, `gate(x) * norm(o)` on the merged heads `o`:
//!
//! - gate: the reference's `silu(x W_G)` (`W_G` random: the output starts unrelated to the
//!   teacher's), none, or `2 sigmoid(x W_G)` with `W_G = 0` (exactly 1 at conversion, trainable);
//! - norm: the reference's GroupNorm (`num_groups = head_dim`, its quirk), or none.

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, silu};

use super::DiJiangKernel;
use crate::config::{GateKind, OutputNorm};
use crate::weights::{Init, WeightSource};

/// The reference's gate init: Xavier uniform with gain 2^-2.5.
const GATE_GAIN: f64 = 0.176_776_695_296_636_9;
/// GroupNorm epsilon of the reference.
const GROUP_NORM_EPS: f64 = 1e-5;

/// `W_G` `[hidden, width]` for the gates that have one.
pub(super) fn build_gate<B: Backend>(
    src: &mut impl WeightSource<B>,
    name: &str,
    hidden: usize,
    width: usize,
    kind: GateKind,
) -> Option<Param<Tensor<B, 2>>> {
    let init = match kind {
        GateKind::Reference => Init::XavierUniform { gain: GATE_GAIN },
        // sigmoid(0) = 1/2 exactly, so 2 sigmoid(x 0) = 1: the identity at conversion.
        GateKind::Identity => Init::Zeros,
        GateKind::None => return None,
    };
    Some(Param::from_tensor(src.tensor(&format!("{name}.gate"), [hidden, width], init)))
}

/// The reference's GroupNorm over `width` channels in `d` groups, if configured.
pub(super) fn build_group_norm<B: Backend>(
    src: &mut impl WeightSource<B>,
    name: &str,
    d: usize,
    width: usize,
    kind: OutputNorm,
) -> Option<GroupNorm<B>> {
    match kind {
        OutputNorm::None => None,
        OutputNorm::GroupNorm => {
            let mut norm = GroupNormConfig::new(d, width).with_epsilon(GROUP_NORM_EPS).init(src.device());
            norm.gamma = Some(Param::from_tensor(src.tensor(&format!("{name}.group_norm.gamma"), [width], Init::Ones)));
            norm.beta = Some(Param::from_tensor(src.tensor(&format!("{name}.group_norm.beta"), [width], Init::Zeros)));
            Some(norm)
        }
    }
}

impl<B: Backend> DiJiangKernel<B> {
    /// `gate(x) * norm(o)`.
    ///
    /// # Shapes
    /// - o: `[b, t, h_q*d]`, x: `[b, t, hidden]` -> `[b, t, h_q*d]`
    pub(super) fn output(&self, o: Tensor<B, 3>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, width] = o.dims();
        let [_, _, hidden] = x.dims();
        let normed = match &self.group_norm {
            // GroupNorm per token: [b, t, C] -> [b*t, C]
            Some(norm) => norm.forward(o.reshape([b * t, width])).reshape([b, t, width]),
            None => o,
        };
        let logits = || {
            let w = self.gate.as_ref().expect("this gate kind has W_G");
            x.reshape([b * t, hidden]).matmul(w.val()).reshape([b, t, width])
        };
        match self.gate_kind {
            GateKind::Reference => silu(logits()) * normed,
            GateKind::Identity => sigmoid(logits()).mul_scalar(2.0) * normed,
            GateKind::None => normed,
        }
    }
}
