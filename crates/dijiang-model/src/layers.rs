//! Building blocks shared by both families: linear layers (with optional LoRA adapters), norms
//! (RMSNorm / LayerNorm) and MLPs (SwiGLU / GELU), each built from a [`WeightSource`] under our
//! parameter names.

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, RmsNorm};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};

use crate::config::{Architecture, LoraConfig, ModelConfig};
use crate::weights::{Init, WeightSource};

/// GPT-2 style init for fresh projections (only tests and brand-new models use it).
const INIT_STD: f64 = 0.02;

/// A linear layer `y = x W + b`, `W` stored `[d_in, d_out]` (Burn's layout), with an optional
/// low-rank adapter (LoRA, arXiv 2106.09685): `y = x W + b + s (x A) B`. Its parameters are named
/// as Burn's `Linear`'s (`NAME.weight`, `NAME.bias`), the adapter's `NAME.lora.a` / `NAME.lora.b`.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub lora: Option<Lora<B>>,
}

/// A LoRA adapter: `A` `[d_in, r]` (normal, std `1/sqrt(d_in)`), `B` `[r, d_out]` (zeros, so the
/// adapted projection starts as the original), scale `alpha / r`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> Projection<B> {
    /// # Shapes
    /// - x: `[n, d_in]` -> `[n, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // A frozen weight may be stored in half precision: cast at use (exact for the values of a
        // half-precision checkpoint). Burn's own linear op (what `nn::Linear` runs; fused on some
        // backends).
        let weight = cast_to(self.weight.val(), x.dtype());
        let y = burn::tensor::module::linear(x.clone(), weight, self.bias.as_ref().map(|b| b.val()));
        match &self.lora {
            Some(lora) => y + x.matmul(lora.a.val()).matmul(lora.b.val()).mul_scalar(lora.scale),
            None => y,
        }
    }

    /// The projection at `path` (`layers.3.attn.q`) with a fresh adapter if `lora` targets it
    /// and it has none (`A` from `src`, `B` zero: the same function until `B` trains).
    pub fn with_lora(self, path: &str, lora: &LoraConfig, src: &mut impl WeightSource<B>) -> Self {
        if self.lora.is_some() || !lora.targets_param(path) {
            return self;
        }
        let [d_in, d_out] = self.weight.dims();
        Self { lora: Some(Lora::build(src, path, d_in, d_out, lora)), ..self }
    }

    /// The projection without its adapter (not merged: the weight it was trained beside).
    pub fn without_lora(&self) -> Self {
        Self { weight: self.weight.clone(), bias: self.bias.clone(), lora: None }
    }

    /// The same function without an adapter: `W + s A B` (what exporting a LoRA-trained model
    /// saves; the saved format has no adapters).
    pub fn merged(self) -> Self {
        match self.lora {
            None => self,
            Some(lora) => {
                let delta = lora.a.val().matmul(lora.b.val()).mul_scalar(lora.scale);
                let weight = Param::from_tensor(cast_to(self.weight.val(), delta.dtype()) + delta);
                Self { weight, bias: self.bias, lora: None }
            }
        }
    }
}

/// `x` in `dtype` (itself when it is already): frozen weights stored in half precision meet
/// activations in the backend's float type.
pub fn cast_to<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: burn::tensor::DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// A linear layer `y = x W + b` named `name` (see [`Projection`]), with a LoRA adapter when
/// `lora` targets it.
pub fn linear<B: Backend>(
    src: &mut impl WeightSource<B>,
    name: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    lora: Option<&LoraConfig>,
) -> Projection<B> {
    let weight = src.tensor(&format!("{name}.weight"), [d_in, d_out], Init::Normal { std: INIT_STD });
    let bias = bias.then(|| Param::from_tensor(src.tensor(&format!("{name}.bias"), [d_out], Init::Zeros)));
    let lora = lora.filter(|l| l.targets_param(name)).map(|l| Lora::build(src, name, d_in, d_out, l));
    Projection { weight: Param::from_tensor(weight), bias, lora }
}

impl<B: Backend> Lora<B> {
    fn build(src: &mut impl WeightSource<B>, path: &str, d_in: usize, d_out: usize, lora: &LoraConfig) -> Self {
        let std = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(src.tensor(&format!("{path}.lora.a"), [d_in, lora.rank], Init::Normal { std })),
            b: Param::from_tensor(src.tensor(&format!("{path}.lora.b"), [lora.rank, d_out], Init::Zeros)),
            scale: lora.alpha / lora.rank as f64,
        }
    }
}

/// `layer.forward(x)` for `x: [b, t, in]` as one `[b*t, in] x [in, out]` product. Burn multiplies a
/// 3-d input by the weight one batch row at a time, and the CPU backend packs the whole weight
/// again for every row (measured: a fifth of the time of a batch of 80 short sequences).
///
/// # Shapes
/// - x: `[b, t, in]` -> `[b, t, out]`
pub fn flat_linear<B: Backend>(layer: &Projection<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = layer.forward(x.reshape([b * t, d]));
    let [_, out] = y.dims();
    y.reshape([b, t, out])
}

/// A token embedding `[vocab, hidden]`.
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
    pub gate: Projection<B>,
    pub up: Projection<B>,
    pub down: Projection<B>,
}

/// `down(gelu(up x))` with biases (GPT-NeoX; exact erf GELU).
#[derive(Module, Debug)]
pub struct GeluMlp<B: Backend> {
    pub up: Projection<B>,
    pub down: Projection<B>,
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
        let (h, i, lora) = (config.hidden_size, config.intermediate_size, config.lora.as_ref());
        match config.arch {
            Architecture::Llama => Mlp::SwiGlu(SwiGlu {
                gate: linear(src, &format!("{name}.gate"), h, i, false, lora),
                up: linear(src, &format!("{name}.up"), h, i, false, lora),
                down: linear(src, &format!("{name}.down"), i, h, false, lora),
            }),
            Architecture::GptNeox => Mlp::Gelu(GeluMlp {
                up: linear(src, &format!("{name}.up"), h, i, true, lora),
                down: linear(src, &format!("{name}.down"), i, h, true, lora),
            }),
        }
    }

    /// The block at `path` (`layers.3.mlp`) with adapters where `lora` targets its projections.
    pub fn with_lora(self, path: &str, lora: &LoraConfig, src: &mut impl WeightSource<B>) -> Self {
        let mut adapt = |p: Projection<B>, n: &str| p.with_lora(&format!("{path}.{n}"), lora, src);
        match self {
            Mlp::SwiGlu(m) => {
                let (gate, up, down) = (adapt(m.gate, "gate"), adapt(m.up, "up"), adapt(m.down, "down"));
                Mlp::SwiGlu(SwiGlu { gate, up, down })
            }
            Mlp::Gelu(m) => Mlp::Gelu(GeluMlp { up: adapt(m.up, "up"), down: adapt(m.down, "down") }),
        }
    }

    /// The block without its adapters (not merged).
    pub fn without_lora(&self) -> Self {
        match self {
            Mlp::SwiGlu(m) => Mlp::SwiGlu(SwiGlu {
                gate: m.gate.without_lora(),
                up: m.up.without_lora(),
                down: m.down.without_lora(),
            }),
            Mlp::Gelu(m) => Mlp::Gelu(GeluMlp { up: m.up.without_lora(), down: m.down.without_lora() }),
        }
    }

    /// The same block with every adapter merged into its weight ([`Projection::merged`]).
    pub fn merged(self) -> Self {
        match self {
            Mlp::SwiGlu(m) => Mlp::SwiGlu(SwiGlu { gate: m.gate.merged(), up: m.up.merged(), down: m.down.merged() }),
            Mlp::Gelu(m) => Mlp::Gelu(GeluMlp { up: m.up.merged(), down: m.down.merged() }),
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
