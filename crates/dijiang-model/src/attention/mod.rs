//! The attention block: q/k/v/o projections and RoPE, owning a swappable kernel (softmax or
//! DiJiang) that turns the heads into the block's output. Teacher and student therefore share every
//! weight name outside `kernel.*`, and converting one into the other only adds the kernel's
//! parameters.

mod dijiang;
mod softmax;

pub use dijiang::{DiJiangKernel, NORMALIZER_EPS, Shift, ShiftState, reference_log_decay};
pub use softmax::SoftmaxKernel;

use burn::prelude::*;
use dijiang_kernel::linear_attention::WindowState;

use crate::config::{AttentionKernelConfig, LoraConfig, ModelConfig};
use crate::layers::{Projection, flat_linear, linear};
use crate::rope::{Rope, apply_rope};
use crate::weights::WeightSource;

/// What the attention block does with its heads.
// One per layer, built once: the size difference between variants costs nothing, and Burn's
// derive(Module) does not see through a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AttentionKernel<B: Backend> {
    Softmax(SoftmaxKernel),
    DiJiang(DiJiangKernel<B>),
}

/// What one attention layer carries from one decoding call to the next.
#[derive(Debug, Clone)]
pub enum LayerState<B: Backend> {
    /// Softmax: the keys and values of every position so far, `[b, h_kv, t, d]` each.
    Kv { k: Tensor<B, 4>, v: Tensor<B, 4> },
    /// DiJiang: the recurrent state `[b, h_q, m, d_v]` (`[S | z]`, `[b, h_q, m, d_v + 1]`,
    /// normalised), the same size at any context length.
    Recurrent(Tensor<B, 4>),
    /// DiJiang with the token shift: the recurrent state and the last position's raw key and
    /// value.
    Shifted { linear: Tensor<B, 4>, last: ShiftState<B> },
    /// The sliding-window hybrid: the linear state and a ring buffer of the last `W` keys,
    /// features and values, the same size at any context length.
    Window(WindowState<B>),
}

impl<B: Backend> LayerState<B> {
    /// The state's tensors' shapes.
    pub fn shapes(&self) -> Vec<[usize; 4]> {
        match self {
            LayerState::Kv { k, v } => vec![k.dims(), v.dims()],
            LayerState::Recurrent(s) => vec![s.dims()],
            LayerState::Shifted { linear, last } => [vec![linear.dims()], last.shapes()].concat(),
            LayerState::Window(s) => s.shapes(),
        }
    }

    /// Number of elements held.
    pub fn num_elements(&self) -> usize {
        self.shapes().iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// The state of the batch rows `rows` (repeats allowed), e.g. one context for several
    /// continuations.
    pub fn select_rows(&self, rows: Tensor<B, 1, Int>) -> Self {
        match self {
            LayerState::Kv { k, v } => {
                LayerState::Kv { k: k.clone().select(0, rows.clone()), v: v.clone().select(0, rows) }
            }
            LayerState::Recurrent(s) => LayerState::Recurrent(s.clone().select(0, rows)),
            LayerState::Shifted { linear, last } => {
                LayerState::Shifted { linear: linear.clone().select(0, rows.clone()), last: last.select_rows(rows) }
            }
            LayerState::Window(s) => LayerState::Window(WindowState {
                linear: s.linear.clone().select(0, rows.clone()),
                keys: s.keys.clone().select(0, rows.clone()),
                features: s.features.clone().select(0, rows.clone()),
                values: s.values.clone().select(0, rows),
                seen: s.seen,
            }),
        }
    }
}

/// One block's heads as the kernels read them.
#[derive(Debug, Clone)]
pub struct Heads<B: Backend> {
    /// `[b, h_q, t, d]`: the rotated queries.
    pub q: Tensor<B, 4>,
    /// `[b, h_kv, t, d]`: the rotated keys.
    pub k: Tensor<B, 4>,
    /// `[b, h_kv, t, d]`: the values.
    pub v: Tensor<B, 4>,
    /// `[b, h_q, t, d]`: the queries before RoPE (what a DiJiang feature map of
    /// [`crate::FeatureInput::Unrotated`] reads). Kept beside the rotated pair rather than
    /// computed on demand: they exist anyway before the rotation, and a teacher's trace must carry
    /// them for a student that reads them.
    pub q_unrotated: Tensor<B, 4>,
    /// `[b, h_kv, t, d]`: the keys before RoPE.
    pub k_unrotated: Tensor<B, 4>,
}

impl<B: Backend> Heads<B> {
    /// Every tensor through `f` (e.g. onto another backend).
    pub fn map<C: Backend>(self, f: impl Fn(Tensor<B, 4>) -> Tensor<C, 4>) -> Heads<C> {
        Heads {
            q: f(self.q),
            k: f(self.k),
            v: f(self.v),
            q_unrotated: f(self.q_unrotated),
            k_unrotated: f(self.k_unrotated),
        }
    }

    /// The first `n` positions.
    pub fn prefix(&self, n: usize) -> Self {
        self.clone().map(|x| x.narrow(2, 0, n))
    }
}

/// Multi-head (grouped-query) self-attention with rotary embeddings.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q: Projection<B>,
    pub k: Projection<B>,
    pub v: Projection<B>,
    pub o: Projection<B>,
    pub kernel: AttentionKernel<B>,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn build(src: &mut impl WeightSource<B>, name: &str, config: &ModelConfig) -> Self {
        let (h, d) = (config.hidden_size, config.head_dim);
        let (q_out, kv_out) = (config.num_heads * d, config.num_kv_heads * d);
        let (bias, lora) = (config.attention_bias, config.lora.as_ref());
        let kernel = match &config.attention {
            AttentionKernelConfig::Softmax => AttentionKernel::Softmax(SoftmaxKernel::new(d)),
            AttentionKernelConfig::Dijiang(dj) => {
                AttentionKernel::DiJiang(DiJiangKernel::build(src, &format!("{name}.kernel"), config, dj))
            }
        };
        Self {
            q: linear(src, &format!("{name}.q"), h, q_out, bias, lora),
            k: linear(src, &format!("{name}.k"), h, kv_out, bias, lora),
            v: linear(src, &format!("{name}.v"), h, kv_out, bias, lora),
            o: linear(src, &format!("{name}.o"), q_out, h, bias, lora),
            kernel,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
            head_dim: d,
        }
    }

    /// The block with LoRA adapters on the projections `lora` targets (see
    /// [`Projection::with_lora`]); `name` is the block's path (`layers.3.attn`).
    pub fn with_lora(self, name: &str, lora: &LoraConfig, src: &mut impl WeightSource<B>) -> Self {
        let mut adapt = |p: Projection<B>, n: &str| p.with_lora(&format!("{name}.{n}"), lora, src);
        let (q, k, v, o) = (adapt(self.q, "q"), adapt(self.k, "k"), adapt(self.v, "v"), adapt(self.o, "o"));
        Self { q, k, v, o, ..self }
    }

    /// The softmax block this one was converted from: the same projections without adapters,
    /// the softmax kernel (see [`crate::Transformer::teacher_view`]).
    pub fn softmax_view(&self) -> Self {
        Self {
            q: self.q.without_lora(),
            k: self.k.without_lora(),
            v: self.v.without_lora(),
            o: self.o.without_lora(),
            kernel: AttentionKernel::Softmax(SoftmaxKernel::new(self.head_dim)),
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The block with every adapter merged into its weight.
    pub fn merged(self) -> Self {
        Self { q: self.q.merged(), k: self.k.merged(), v: self.v.merged(), o: self.o.merged(), ..self }
    }

    /// Queries and keys (rotated and not) and values, per head.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> q `[b, h_q, t, d]`, k / v `[b, h_kv, t, d]`
    pub fn heads(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Heads<B> {
        let [b, t, _] = x.dims();
        let d = self.head_dim;
        // [b, t, heads*d] -> [b, heads, t, d]
        let split = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let (q, k) = (flat_linear(&self.q, x.clone()), flat_linear(&self.k, x.clone()));
        Heads {
            q: split(apply_rope(q.clone(), self.num_heads, rope), self.num_heads),
            k: split(apply_rope(k.clone(), self.num_kv_heads, rope), self.num_kv_heads),
            v: split(flat_linear(&self.v, x), self.num_kv_heads),
            q_unrotated: split(q, self.num_heads),
            k_unrotated: split(k, self.num_kv_heads),
        }
    }

    /// The attention rows of a whole sequence (the quadratic form, for diagnostics and attention
    /// transfer): softmax distributions for the teacher; for DiJiang the kernel's weights
    /// (un-normalised for the reference, rows summing to 1 normalised or hybrid).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`, rope: `t` positions ([`Rope`]) -> `[b, h_q, t, t]`
    pub fn rows(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 4> {
        self.rows_from_heads(self.heads(x, rope))
    }

    /// [`Attention::rows`] from the heads ([`Attention::heads`]).
    ///
    /// # Shapes
    /// - heads of `t` positions -> `[b, h_q, t, t]`
    pub fn rows_from_heads(&self, heads: Heads<B>) -> Tensor<B, 4> {
        match &self.kernel {
            AttentionKernel::Softmax(kernel) => kernel.rows(heads.q, heads.k),
            AttentionKernel::DiJiang(kernel) => kernel.rows(heads),
        }
    }

    /// A whole sequence's output from its heads ([`Attention::heads`]) and the block's normed
    /// input `x`: what [`Attention::forward`] does after the projections. Attention transfer
    /// runs a student whose projections are its teacher's from the teacher's heads.
    ///
    /// # Shapes
    /// - heads of `t` positions, x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn forward_from_heads(&self, heads: Heads<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.mix(heads, x, &mut None)
    }

    /// A whole sequence from scratch.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`, rope: `t` positions ([`Rope`]) -> `[b, t, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        self.forward_cached(x, rope, &mut None)
    }

    /// The next `t` positions after those `state` summarises (none if `None`), updating it: a KV
    /// cache for softmax, the recurrent state for DiJiang. `rope` is for those positions.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`, rope: `t` positions ([`Rope`]) -> `[b, t, hidden]`
    pub fn forward_cached(&self, x: Tensor<B, 3>, rope: &Rope<B>, state: &mut Option<LayerState<B>>) -> Tensor<B, 3> {
        self.mix(self.heads(x.clone(), rope), x, state)
    }

    /// The kernel on the heads, continuing `state`, then the output projection.
    fn mix(&self, heads: Heads<B>, x: Tensor<B, 3>, state: &mut Option<LayerState<B>>) -> Tensor<B, 3> {
        let merged = match &self.kernel {
            AttentionKernel::Softmax(kernel) => {
                let Heads { q, k, v, .. } = heads;
                let (k, v) = match state.take() {
                    Some(LayerState::Kv { k: past_k, v: past_v }) => {
                        (Tensor::cat(vec![past_k, k], 2), Tensor::cat(vec![past_v, v], 2))
                    }
                    _ => (k, v),
                };
                *state = Some(LayerState::Kv { k: k.clone(), v: v.clone() });
                kernel.forward(q, k, v)
            }
            AttentionKernel::DiJiang(kernel) => {
                let (out, next) = kernel.forward_cached(heads, x, state.take());
                *state = Some(next);
                out
            }
        };
        flat_linear(&self.o, merged)
    }
}

/// `[b, h, t, d]` -> `[b, t, h*d]`.
pub(crate) fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}
