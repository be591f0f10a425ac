//! Building blocks shared by both families: linear layers, norms (RMSNorm / LayerNorm) and MLPs
//! (SwiGLU / GELU), each built from a [`WeightSource`] under our parameter names.

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};

use crate::config::{Architecture, ModelConfig};
use crate::weights::{Init, WeightSource};

/// GPT-2 style init for fresh projections (only tests and brand-new models use it).
const INIT_STD: f64 = 0.02;

/// A linear layer `y = x W + b`, `W` stored `[d_in, d_out]` (Burn's layout).
pub fn linear<B: Backend>(
    src: &mut impl WeightSource<B>,
    name: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
) -> Linear<B> {
    let weight = src.tensor(&format!("{name}.weight"), [d_in, d_out], Init::Normal { std: INIT_STD });
    let bias = bias.then(|| Param::from_tensor(src.tensor(&format!("{name}.bias"), [d_out], Init::Zeros)));
    Linear { weight: Param::from_tensor(weight), bias }
}

/// A token embedding `[vocab, hidden]`.
/// `layer.forward(x)` for `x: [b, t, in]` as one `[b*t, in] x [in, out]` product. Burn multiplies a
/// 3-d input by the weight one batch row at a time, and the CPU backend packs the whole weight
/// again for every row (measured: a fifth of the time of a batch of 80 short sequences).
///
/// # Shapes
/// - x: `[b, t, in]` -> `[b, t, out]`
pub fn flat_linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = layer.forward(x.reshape([b * t, d]));
    let [_, out] = y.dims();
    y.reshape([b, t, out])
}

pub fn embedding<B: Backend>(src: &mut impl WeightSource<B>, name: &str, vocab: usize, hidden: usize) -> Embedding<B> {
    Embedding {
        weight: Param::from_tensor(src.tensor(
            &format!("{name}.weight"),
            [vocab, hidden],
            Init::Normal { std: INIT_STD },
        )),
    }
}

/// RMSNorm (LLaMA) or LayerNorm with bias (GPT-NeoX).
#[derive(Module, Debug)]
pub enum Norm<B: Backend> {
    Rms(RmsNorm<B>),
    Layer(LayerNorm<B>),
}

impl<B: Backend> Norm<B> {
    pub fn build(src: &mut impl WeightSource<B>, name: &str, config: &ModelConfig) -> Self {
        let d = config.hidden_size;
        let gamma = Param::from_tensor(src.tensor(&format!("{name}.gamma"), [d], Init::Ones));
        match config.arch {
            Architecture::Llama => Norm::Rms(RmsNorm { gamma, epsilon: config.norm_eps }),
            Architecture::GptNeox => {
                let beta = Param::from_tensor(src.tensor(&format!("{name}.beta"), [d], Init::Zeros));
                let mut norm = LayerNormConfig::new(d).with_epsilon(config.norm_eps).init(src.device());
                norm.gamma = gamma;
                norm.beta = Some(beta);
                Norm::Layer(norm)
            }
        }
    }

    /// # Shapes
    /// - x: `[..., hidden]` -> `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Norm::Rms(norm) => norm.forward(x),
            Norm::Layer(norm) => norm.forward(x),
        }
    }
}

/// SwiGLU: `down(silu(gate x) * up x)` (LLaMA).
#[derive(Module, Debug)]
pub struct SwiGlu<B: Backend> {
    pub gate: Linear<B>,
    pub up: Linear<B>,
    pub down: Linear<B>,
}

/// `down(gelu(up x))` with biases (GPT-NeoX; exact erf GELU).
#[derive(Module, Debug)]
pub struct GeluMlp<B: Backend> {
    pub up: Linear<B>,
    pub down: Linear<B>,
}

/// The feed-forward block of either family.
#[allow(clippy::large_enum_variant)] // one per layer; derive(Module) does not see through a Box
#[derive(Module, Debug)]
pub enum Mlp<B: Backend> {
    SwiGlu(SwiGlu<B>),
    Gelu(GeluMlp<B>),
}

impl<B: Backend> Mlp<B> {
    pub fn build(src: &mut impl WeightSource<B>, name: &str, config: &ModelConfig) -> Self {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        match config.arch {
            Architecture::Llama => Mlp::SwiGlu(SwiGlu {
                gate: linear(src, &format!("{name}.gate"), h, i, false),
                up: linear(src, &format!("{name}.up"), h, i, false),
                down: linear(src, &format!("{name}.down"), i, h, false),
            }),
            Architecture::GptNeox => Mlp::Gelu(GeluMlp {
                up: linear(src, &format!("{name}.up"), h, i, true),
                down: linear(src, &format!("{name}.down"), i, h, true),
            }),
        }
    }

    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, h] = x.dims();
        // [b, t, hidden] -> [b*t, hidden]: one matrix product per weight (see `flat_linear`).
        let x = x.reshape([b * t, h]);
        let y = match self {
            Mlp::SwiGlu(m) => m.down.forward(silu(m.gate.forward(x.clone())) * m.up.forward(x)),
            Mlp::Gelu(m) => m.down.forward(gelu(m.up.forward(x))),
        };
        y.reshape([b, t, h])
    }
}
