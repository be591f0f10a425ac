//! The decoder-only Transformer: embedding, blocks (pre-norm, sequential or GPT-NeoX parallel
//! residual), final norm and output head (tied to the embedding or not).

use burn::nn::Embedding;
use burn::prelude::*;

use crate::attention::{Attention, Heads, LayerState};
use crate::config::{AttentionKernelConfig, LoraConfig, ModelConfig};
use crate::error::ModelError;
use crate::layers::{Mlp, Norm, Projection, cast_to, embedding, flat_linear, linear};
use crate::rope::Rope;
use crate::weights::{Drawn, Fresh, Skeleton, WeightSource};

/// One Transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attn_norm: Norm<B>,
    pub attn: Attention<B>,
    pub mlp_norm: Norm<B>,
    pub mlp: Mlp<B>,
    #[module(skip)]
    parallel_residual: bool,
}

impl<B: Backend> Block<B> {
    pub fn build(src: &mut impl WeightSource<B>, name: &str, config: &ModelConfig) -> Self {
        Self {
            attn_norm: Norm::build(src, &format!("{name}.attn_norm"), config),
            attn: Attention::build(src, &format!("{name}.attn"), config),
            mlp_norm: Norm::build(src, &format!("{name}.mlp_norm"), config),
            mlp: Mlp::build(src, &format!("{name}.mlp"), config),
            parallel_residual: config.parallel_residual,
        }
    }

    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    /// - state: this layer's decoding state (`None` at the start), updated
    pub fn forward(&self, x: Tensor<B, 3>, rope: &Rope<B>, state: &mut Option<LayerState<B>>) -> Tensor<B, 3> {
        let attn = self.attn.forward_cached(self.attn_norm.forward(x.clone()), rope, state);
        self.residual(x, attn)
    }

    /// A whole sequence from scratch, keeping what attention transfer reads (the teacher's side),
    /// with the attention rows of the first `n` positions if `rows` is `Some(n)` (exact:
    /// causal queries see only earlier keys): the block's output and its trace.
    pub fn forward_layer_trace(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        rows: Option<usize>,
    ) -> (Tensor<B, 3>, LayerTrace<B>) {
        let normed = self.attn_norm.forward(x.clone());
        let heads = self.attn.heads(normed.clone(), rope);
        let rows = rows.map(|n| self.attn.rows_from_heads(heads.prefix(n)));
        let attention = self.attn.forward_from_heads(heads.clone(), normed.clone());
        let out = self.residual(x.clone(), attention.clone());
        (out, LayerTrace { input: x, normed, heads, attention, rows })
    }

    /// The block's output from its input and its attention output (sequential or parallel
    /// residual).
    fn residual(&self, x: Tensor<B, 3>, attn: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.parallel_residual {
            let mlp = self.mlp.forward(self.mlp_norm.forward(x.clone()));
            x + attn + mlp
        } else {
            let x = x + attn;
            x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
        }
    }

    /// The block at `path` (`layers.3`) with adapters where `lora` targets its projections.
    pub fn with_lora(self, path: &str, lora: &LoraConfig, src: &mut impl WeightSource<B>) -> Self {
        let attn = self.attn.with_lora(&format!("{path}.attn"), lora, src);
        Self { attn, mlp: self.mlp.with_lora(&format!("{path}.mlp"), lora, src), ..self }
    }

    /// The block with every adapter merged into its weight.
    pub fn merged(self) -> Self {
        Self { attn: self.attn.merged(), mlp: self.mlp.merged(), ..self }
    }

    /// The softmax block this one was converted from (see [`Transformer::teacher_view`]).
    fn teacher_view(&self) -> Self {
        Self {
            attn_norm: self.attn_norm.clone(),
            attn: self.attn.softmax_view(),
            mlp_norm: self.mlp_norm.clone(),
            mlp: self.mlp.without_lora(),
            parallel_residual: self.parallel_residual,
        }
    }

    /// The attention output (after `o`) for the block input `x` at positions `0..t`.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn attention(&self, x: Tensor<B, 3>, rope: &Rope<B>) -> Tensor<B, 3> {
        self.attn.forward(self.attn_norm.forward(x), rope)
    }
}

/// Every parameter's name and shape in a model of `config`, as [`Transformer::build`] asks for them
/// (recorded, not allocated: cheap for any size). The one list that parameter counts by name (which
/// parameters a stage trains) are computed from.
pub fn parameter_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let device = Default::default();
    let mut skeleton = Skeleton::<burn::backend::NdArray> { device: &device, shapes: Vec::new() };
    Transformer::build(&mut skeleton, config);
    skeleton.shapes
}

/// A decoder-only language model.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    pub embed: Embedding<B>,
    pub layers: Vec<Block<B>>,
    pub final_norm: Norm<B>,
    /// `None` when the output head is tied to the embedding.
    pub lm_head: Option<Projection<B>>,
    #[module(skip)]
    config: ModelConfig,
}

/// What decoding carries between calls: the position reached and each layer's state.
#[derive(Debug, Clone)]
pub struct DecodeState<B: Backend> {
    pub position: usize,
    pub layers: Vec<Option<LayerState<B>>>,
}

impl<B: Backend> DecodeState<B> {
    pub fn new(num_layers: usize) -> Self {
        Self { position: 0, layers: vec![None; num_layers] }
    }

    /// Elements held by all layers (KV cache or recurrent states).
    pub fn num_elements(&self) -> usize {
        self.layers.iter().flatten().map(LayerState::num_elements).sum()
    }

    /// Every layer's state tensor shapes.
    pub fn shapes(&self) -> Vec<[usize; 4]> {
        self.layers.iter().flatten().flat_map(LayerState::shapes).collect()
    }

    /// The state of the batch rows `rows` (in that order, repeats allowed): one prefilled context
    /// continued by several sequences.
    ///
    /// # Shapes
    /// - rows: `[n]` indices into the batch -> a state of batch `n`
    pub fn select_rows(&self, rows: Tensor<B, 1, Int>) -> Self {
        let layers = self.layers.iter().map(|layer| layer.as_ref().map(|s| s.select_rows(rows.clone()))).collect();
        Self { position: self.position, layers }
    }
}

/// One block of a teacher's forward pass as attention transfer reads it: the block's input, its
/// attention's input and heads, its attention output, and if asked its attention rows.
#[derive(Debug, Clone)]
pub struct LayerTrace<B: Backend> {
    /// `[b, t, hidden]`: the block's input.
    pub input: Tensor<B, 3>,
    /// `[b, t, hidden]`: the attention's input (after `attn_norm`).
    pub normed: Tensor<B, 3>,
    /// The attention's heads (rotated and un-rotated queries and keys, values).
    pub heads: Heads<B>,
    /// `[b, t, hidden]`: the attention output (after `o`).
    pub attention: Tensor<B, 3>,
    /// `[b, h_q, n, n]`: the attention rows of the first `n` positions, when traced with them.
    pub rows: Option<Tensor<B, 4>>,
}

/// What distillation needs from a forward pass: every block's [`LayerTrace`], and the logits if
/// asked for.
#[derive(Debug)]
pub struct Trace<B: Backend> {
    pub layers: Vec<LayerTrace<B>>,
    /// `[b, t, vocab]`
    pub logits: Option<Tensor<B, 3>>,
}

/// Logits and the hidden states along the way (HF's `output_hidden_states`).
#[derive(Debug)]
pub struct ForwardOutput<B: Backend> {
    /// `[b, t, vocab]`
    pub logits: Tensor<B, 3>,
    /// The embedding output, each block's input after it, and last the final norm's output
    /// (HF's convention).
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl<B: Backend> Transformer<B> {
    /// Builds the model from a weight source (fresh init or a checkpoint).
    pub fn build(src: &mut impl WeightSource<B>, config: &ModelConfig) -> Self {
        let (v, h) = (config.vocab_size, config.hidden_size);
        Self {
            embed: embedding(src, "embed", v, h),
            layers: (0..config.num_layers).map(|i| Block::build(src, &format!("layers.{i}"), config)).collect(),
            final_norm: Norm::build(src, "final_norm", config),
            lm_head: (!config.tie_embeddings).then(|| linear(src, "lm_head", h, v, false, None)),
            config: config.clone(),
        }
    }

    /// A freshly initialised model (seeded; the same values on every backend).
    pub fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self::build(&mut Fresh { seed, device }, config))
    }

    /// A model whose parameters are drawn on the device, unseeded ([`Drawn`]): for memory and speed
    /// checks, where the values do not matter and a 7B host-side init would take minutes.
    pub fn init_drawn(config: &ModelConfig, device: &B::Device) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self::build(&mut Drawn { device }, config))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model with LoRA adapters on the projections `lora` targets, `A` seeded by `seed` and
    /// each parameter's name, `B` zero: the same function until the adapters train. Its config
    /// records `lora` (a checkpoint of it is rebuilt with the adapters).
    pub fn with_lora(self, lora: &LoraConfig, seed: u64) -> Self {
        let device = self.embed.weight.device();
        let mut src = Fresh { seed, device: &device };
        let layers =
            self.layers.into_iter().enumerate().map(|(i, b)| b.with_lora(&format!("layers.{i}"), lora, &mut src));
        Self { layers: layers.collect(), config: ModelConfig { lora: Some(lora.clone()), ..self.config }, ..self }
    }

    /// The softmax teacher this student was converted from, as a view of its weights: every
    /// attention kernel back to softmax, adapters left out (not merged), no tensor copied (module
    /// clones share their tensors). It is the teacher while the base weights are the teacher's,
    /// which stages that train only the new attention parameters or adapters leave them.
    pub fn teacher_view(&self) -> Self {
        let config = ModelConfig { attention: AttentionKernelConfig::Softmax, lora: None, ..self.config.clone() };
        Self {
            embed: self.embed.clone(),
            layers: self.layers.iter().map(Block::teacher_view).collect(),
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.as_ref().map(Projection::without_lora),
            config,
        }
    }

    /// The model with every adapter merged into its weight (`W + (alpha / r) A B`) and none left:
    /// the same function in the plain format generation, evaluation and export read.
    pub fn merged(self) -> Self {
        Self {
            layers: self.layers.into_iter().map(Block::merged).collect(),
            lm_head: self.lm_head.map(Projection::merged),
            config: ModelConfig { lora: None, ..self.config },
            ..self
        }
    }

    /// Logits for a batch of token sequences.
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, vocab]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with_hidden(tokens, false).logits
    }

    /// Logits and, if asked, every hidden state.
    pub fn forward_with_hidden(&self, tokens: Tensor<B, 2, Int>, keep_hidden: bool) -> ForwardOutput<B> {
        self.run(tokens, &mut DecodeState::new(self.layers.len()), keep_hidden)
    }

    /// Logits for the next tokens after those `state` has seen, updating it (prefill, then one
    /// token at a time).
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, vocab]`
    pub fn forward_cached(&self, tokens: Tensor<B, 2, Int>, state: &mut DecodeState<B>) -> Tensor<B, 3> {
        self.run(tokens, state, false).logits
    }

    /// The final norm's outputs for the next tokens after those `state` has seen, updating it,
    /// without the output head ([`Transformer::head`]): scoring needs the logits of a few positions
    /// only, and the head is a fifth of a small model's work per position.
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, hidden]`
    pub fn hidden_cached(&self, tokens: Tensor<B, 2, Int>, state: &mut DecodeState<B>) -> Tensor<B, 3> {
        self.body(tokens, state, false).0
    }

    /// Every block's trace (with the attention rows of the first `n` positions if `rows` is
    /// `Some(n)`) and the logits if `with_logits`.
    pub fn trace(&self, tokens: Tensor<B, 2, Int>, rows: Option<usize>, with_logits: bool) -> Trace<B> {
        let mut layers = Vec::with_capacity(self.layers.len());
        let logits = self.trace_layers(tokens, rows, with_logits, |trace| layers.push(trace));
        Trace { layers, logits }
    }

    /// The forward pass handing each block's trace to `sink` as soon as the block is done (so
    /// attention transfer can work on layer `i` while the teacher computes layer `i + 1`, and
    /// only a few layers' traces are alive at a time); the logits if `with_logits`.
    pub fn trace_layers(
        &self,
        tokens: Tensor<B, 2, Int>,
        rows: Option<usize>,
        with_logits: bool,
        mut sink: impl FnMut(LayerTrace<B>),
    ) -> Option<Tensor<B, 3>> {
        let [_, t] = tokens.dims();
        let rope = self.rope(0, t, &tokens.device());
        let mut x = self.embed_tokens(tokens);
        for layer in &self.layers {
            let (out, trace) = layer.forward_layer_trace(x, &rope, rows);
            sink(trace);
            x = out;
        }
        with_logits.then(|| self.head(self.final_norm.forward(x)))
    }

    /// The embedding output and every block's output, in order (`num_layers + 1` tensors: block
    /// `i`'s input is the `i`-th): the boundaries block recomputation keeps instead of the blocks'
    /// activations ([`Transformer::block`] recomputes one block from its input).
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> each `[b, t, hidden]`
    pub fn block_boundaries(&self, tokens: Tensor<B, 2, Int>) -> Vec<Tensor<B, 3>> {
        let [_, t] = tokens.dims();
        let rope = self.rope(0, t, &tokens.device());
        let mut boundaries = Vec::with_capacity(self.layers.len() + 1);
        boundaries.push(self.embed_tokens(tokens));
        for layer in &self.layers {
            let x = boundaries.last().expect("the embedding output").clone();
            boundaries.push(layer.forward(x, &rope, &mut None));
        }
        boundaries
    }

    /// Block `layer`'s output for its input `x` at positions `0..t` (a whole sequence from scratch).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn block(&self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let rope = self.rope(0, t, &x.device());
        self.layers[layer].forward(x, &rope, &mut None)
    }

    /// The logits from the last block's output: the final norm, then the output head.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, vocab]`
    pub fn logits_from_last(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.head(self.final_norm.forward(x))
    }

    /// Block `layer`'s attention output for the block input `x` at positions `0..t` (the student
    /// side of attention transfer: the same input as the teacher's block saw).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn layer_attention(&self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let rope = self.rope(0, t, &x.device());
        self.layers[layer].attention(x, &rope)
    }

    /// Block `layer`'s attention output on a teacher's trace of the same block: from the
    /// teacher's heads when `shared_heads` (the student's `attn_norm` and q / k / v are the
    /// teacher's, so its heads would be the same: computing them again is a third of the work),
    /// else from the block input.
    ///
    /// # Shapes
    /// - the trace's tensors as in [`LayerTrace`] -> `[b, t, hidden]`
    pub fn layer_attention_on(&self, layer: usize, trace: &LayerTrace<B>, shared_heads: bool) -> Tensor<B, 3> {
        if shared_heads {
            self.layers[layer].attn.forward_from_heads(trace.heads.clone(), trace.normed.clone())
        } else {
            self.layer_attention(layer, trace.input.clone())
        }
    }

    /// Block `layer`'s attention rows of the first `n` positions on a teacher's trace of the same
    /// block (see [`Transformer::layer_attention_on`] for `shared_heads`).
    ///
    /// # Shapes
    /// - the trace's tensors as in [`LayerTrace`] -> `[b, h_q, n, n]`
    pub fn layer_rows_on(&self, layer: usize, trace: &LayerTrace<B>, shared_heads: bool, n: usize) -> Tensor<B, 4> {
        if shared_heads {
            self.layers[layer].attn.rows_from_heads(trace.heads.prefix(n))
        } else {
            self.layer_rows(layer, trace.input.clone().narrow(1, 0, n))
        }
    }

    /// Block `layer`'s attention rows for the block input `x` (see [`Attention::rows`]).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, h_q, t, t]`
    pub fn layer_rows(&self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [_, t, _] = x.dims();
        let rope = self.rope(0, t, &x.device());
        let block = &self.layers[layer];
        block.attn.rows(block.attn_norm.forward(x), &rope)
    }

    fn rope(&self, start: usize, t: usize, device: &B::Device) -> Rope<B> {
        Rope::new(&self.config, start, t, device)
    }

    fn run(&self, tokens: Tensor<B, 2, Int>, state: &mut DecodeState<B>, keep_hidden: bool) -> ForwardOutput<B> {
        let (x, hidden_states) = self.body(tokens, state, keep_hidden);
        ForwardOutput { logits: self.head(x), hidden_states }
    }

    /// Everything but the output head: the final norm's outputs and, if asked, every hidden state.
    fn body(
        &self,
        tokens: Tensor<B, 2, Int>,
        state: &mut DecodeState<B>,
        keep_hidden: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let [_, t] = tokens.dims();
        let rope = self.rope(state.position, t, &tokens.device());
        let mut x = self.embed_tokens(tokens);
        let mut hidden_states = Vec::new();
        for (layer, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            if keep_hidden {
                hidden_states.push(x.clone());
            }
            x = layer.forward(x, &rope, layer_state);
        }
        state.position += t;
        let x = self.final_norm.forward(x);
        // As HF reports them: the last hidden state is after the final norm.
        if keep_hidden {
            hidden_states.push(x.clone());
        }
        (x, hidden_states)
    }

    /// The token embeddings in the backend's float type (the table may be stored in half
    /// precision).
    ///
    /// # Shapes
    /// - tokens: `[b, t]` -> `[b, t, hidden]`
    pub fn embed_tokens(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        cast_to(self.embed.forward(tokens), <B::FloatElem as burn::tensor::Element>::dtype())
    }

    /// The output head on final-norm outputs: `[b, t, hidden]` -> `[b, t, vocab]`.
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => flat_linear(head, x),
            None => {
                let [b, t, h] = x.dims();
                let v = self.config.vocab_size;
                let x = x.reshape([b * t, h]);
                let table = cast_to(self.embed.weight.val(), x.dtype()); // [vocab, hidden]
                // x @ table^T. Backends that materialise a transposed operand would copy the whole
                // [vocab, hidden] table on every call, which dominates decoding; for few rows,
                // (table @ x^T)^T copies only the small result instead.
                let logits =
                    if b * t <= h { table.matmul(x.transpose()).transpose() } else { x.matmul(table.transpose()) };
                logits.reshape([b, t, v])
            }
        }
    }
}
