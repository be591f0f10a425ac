//! The decoder-only Transformer: embedding, blocks (pre-norm, sequential or GPT-NeoX parallel
//! residual), final norm and output head (tied to the embedding or not).

use burn::nn::{Embedding, Linear};
use burn::prelude::*;

use crate::attention::{Attention, LayerState};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::layers::{Mlp, Norm, embedding, flat_linear, linear};
use crate::rope::rope_tables;
use crate::weights::{Fresh, Skeleton, WeightSource};

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
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        state: &mut Option<LayerState<B>>,
    ) -> Tensor<B, 3> {
        self.forward_traced(x, cos, sin, state).0
    }

    /// The block's output and its attention output (what attention transfer matches).
    pub fn forward_traced(
        &self,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        state: &mut Option<LayerState<B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let attn = self.attn.forward_cached(self.attn_norm.forward(x.clone()), cos, sin, state);
        let out = if self.parallel_residual {
            let mlp = self.mlp.forward(self.mlp_norm.forward(x.clone()));
            x + attn.clone() + mlp
        } else {
            let x = x + attn.clone();
            x.clone() + self.mlp.forward(self.mlp_norm.forward(x))
        };
        (out, attn)
    }

    /// The attention output (after `o`) for the block input `x` at positions `0..t`.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn attention(&self, x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
        self.attn.forward(self.attn_norm.forward(x), cos, sin)
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
    pub lm_head: Option<Linear<B>>,
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

/// What distillation needs from a forward pass: every block's input and attention output, and
/// the logits if asked for.
#[derive(Debug)]
pub struct Trace<B: Backend> {
    /// `[b, t, hidden]` per layer: the input of block `i`.
    pub layer_inputs: Vec<Tensor<B, 3>>,
    /// `[b, t, hidden]` per layer: block `i`'s attention output (after `o`).
    pub attention_outputs: Vec<Tensor<B, 3>>,
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
            lm_head: (!config.tie_embeddings).then(|| linear(src, "lm_head", h, v, false)),
            config: config.clone(),
        }
    }

    /// A freshly initialised model (seeded; the same values on every backend).
    pub fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self::build(&mut Fresh { seed, device }, config))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
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

    /// Every block's input and attention output, and the logits if `with_logits`.
    pub fn trace(&self, tokens: Tensor<B, 2, Int>, with_logits: bool) -> Trace<B> {
        let [_, t] = tokens.dims();
        let (cos, sin) = self.rope(0, t, &tokens.device());
        let mut x = self.embed.forward(tokens);
        let (mut layer_inputs, mut attention_outputs) = (Vec::new(), Vec::new());
        for layer in &self.layers {
            layer_inputs.push(x.clone());
            let (out, attn) = layer.forward_traced(x, &cos, &sin, &mut None);
            attention_outputs.push(attn);
            x = out;
        }
        let logits = with_logits.then(|| self.head(self.final_norm.forward(x)));
        Trace { layer_inputs, attention_outputs, logits }
    }

    /// Block `layer`'s attention output for the block input `x` at positions `0..t` (the student
    /// side of attention transfer: the same input as the teacher's block saw).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, t, hidden]`
    pub fn layer_attention(&self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, t, _] = x.dims();
        let (cos, sin) = self.rope(0, t, &x.device());
        self.layers[layer].attention(x, &cos, &sin)
    }

    /// Block `layer`'s attention rows for the block input `x` (see [`Attention::rows`]).
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]` -> `[b, h_q, t, t]`
    pub fn layer_rows(&self, layer: usize, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [_, t, _] = x.dims();
        let (cos, sin) = self.rope(0, t, &x.device());
        let block = &self.layers[layer];
        block.attn.rows(block.attn_norm.forward(x), &cos, &sin)
    }

    fn rope(&self, start: usize, t: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        rope_tables(start, t, self.config.rotary_dims(), self.config.rope_theta, device)
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
        let (cos, sin) = self.rope(state.position, t, &tokens.device());
        let mut x = self.embed.forward(tokens);
        let mut hidden_states = Vec::new();
        for (layer, layer_state) in self.layers.iter().zip(state.layers.iter_mut()) {
            if keep_hidden {
                hidden_states.push(x.clone());
            }
            x = layer.forward(x, &cos, &sin, layer_state);
        }
        state.position += t;
        let x = self.final_norm.forward(x);
        // As HF reports them: the last hidden state is after the final norm.
        if keep_hidden {
            hidden_states.push(x.clone());
        }
        (x, hidden_states)
    }

    /// The output head on final-norm outputs: `[b, t, hidden]` -> `[b, t, vocab]`.
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => flat_linear(head, x),
            None => {
                let [b, t, h] = x.dims();
                let v = self.config.vocab_size;
                let table = self.embed.weight.val(); // [vocab, hidden]
                let x = x.reshape([b * t, h]);
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
