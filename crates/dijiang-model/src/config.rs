//! Model configuration: one decoder-only Transformer covering the LLaMA family and GPT-NeoX /
//! Pythia, with the attention kernel (softmax or DiJiang) chosen by config.
//!
//! Presets are functions (`ModelConfig::llama2_7b()`, ...); [`ModelConfig::from_hf_config`] reads an
//! HF `config.json` (`model_type` llama or gpt_neox).

use dijiang_kernel::qmc::ScaleSampling;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The architecture family: decides norms, MLP, residual wiring, biases and weight names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// RMSNorm, full-head rotate-half RoPE, SwiGLU, sequential residual, grouped-query attention.
    Llama,
    /// LayerNorm with bias, partial rotary, GELU MLP, parallel (or sequential) residual, biases.
    GptNeox,
}

/// The attention kernel: what turns (q, k, v) into the attention output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionKernelConfig {
    /// Scaled dot-product softmax attention, causal.
    Softmax,
    /// DiJiang's kernelised linear attention (docs/method.md sections 3 and 5).
    Dijiang(DiJiangConfig),
}

/// The feature map phi of a DiJiang kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMapKind {
    /// The reference code: `softmax(x C T)` over the features (m = head size).
    #[default]
    Reference,
    /// The paper: `D * exp(T C x)` with learnable weights D (m = head size).
    WeightedExp,
    /// Performer's positive random features `exp(W x - |x|^2/2) / sqrt(m)` (a baseline).
    Performer,
}

/// What a DiJiang feature map reads: the queries and keys after RoPE or before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureInput {
    /// After RoPE, as the reference: the features of a rotated vector depend on its absolute
    /// position, so positions past the training length give the map rotations it never saw.
    #[default]
    Rotated,
    /// Before RoPE: the linear part is position-free apart from its decay and causal order (as
    /// GLA / Mamba-style linear attention); the hybrid's softmax window still reads the rotated
    /// pair.
    Unrotated,
}

impl FeatureInput {
    fn is_rotated(&self) -> bool {
        *self == FeatureInput::Rotated
    }
}

/// The per-head decay gamma of a DiJiang kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// The reference's `gamma_h = 1 - exp(linspace(ln(1/32), ln(1/512), H))[h]`.
    #[default]
    Reference,
    /// gamma = 1: plain causal linear attention.
    None,
    /// Per head from the teacher's attention: gamma such that the decay alone spreads each head's
    /// attention as far back, on average, as the teacher's head does on a calibration text
    /// (`calibrate`). Set at conversion by `convert::convert_calibrated` (`dijiang convert
    /// --decay calibrated --calibrate FILE`) and saved with the model; a model built without a
    /// teacher starts at the reference's values.
    Calibrated,
}

/// What multiplies the attention output before the output projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// The reference's swish gate `silu(x W_G)`, `W_G` Xavier-uniform with gain 2^-2.5: random
    /// at conversion, so the student's attention output starts unrelated to the teacher's.
    #[default]
    Reference,
    /// No gate (and no `W_G`): the output goes to the output projection as the teacher's does.
    None,
    /// `2 sigmoid(x W_G)` with `W_G = 0` at conversion: exactly the identity at step 0 and still
    /// trainable (its gradient at 0 is `x / 2`, not 0), for a gate learned from a pass-through
    /// start.
    Identity,
}

/// The initial weight of the hybrid's linear part beside its window (per head; trained after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearWeight {
    /// 1: the linear scores as they are beside the max-shifted window scores.
    #[default]
    One,
    /// Per head, the weight at which the student's share of attention beyond the window equals the
    /// teacher's on a calibration text (`calibrate`; set by `convert::convert_calibrated`).
    Calibrated,
}

/// The normalisation of the merged heads before the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputNorm {
    /// The reference's GroupNorm with `num_groups = head_dim` over the merged heads (groups of H
    /// consecutive channels), eps 1e-5, affine: its stand-in for a normaliser.
    #[default]
    GroupNorm,
    /// None: with `normalize` each head's output is already a weighted average of values, as the
    /// teacher's.
    None,
}

/// DiJiang kernel options. The defaults reproduce the reference computation, except that the scales
/// are drawn by quasi-Monte Carlo (the paper) rather than i.i.d. (the reference code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiJiangConfig {
    #[serde(default)]
    pub feature_map: FeatureMapKind,
    /// Number of features for `performer` (the DCT maps use m = head size).
    #[serde(default)]
    pub performer_features: Option<usize>,
    /// Number of features m of the `reference` map (default: the head size, as the reference):
    /// feature j is DCT frequency `j mod d` with its own scale `t_j`. More features give a
    /// trainable projection more capacity and the recurrent state `m x d_v` more room.
    #[serde(default)]
    pub features: Option<usize>,
    #[serde(default)]
    pub sampling: ScaleSampling,
    /// Whether the feature map reads the rotated (the reference) or un-rotated queries and keys.
    /// Left out of saved configs when rotated, so that they read as before the option existed.
    #[serde(default, skip_serializing_if = "FeatureInput::is_rotated")]
    pub feature_input: FeatureInput,
    /// Learnable per-feature weights D (init 1) on top of the map; always on for `weighted_exp`.
    #[serde(default)]
    pub feature_weights: bool,
    #[serde(default)]
    pub decay: DecayKind,
    /// Train the decay (in log space), as the reference trains its D1/D2 tensors.
    #[serde(default = "yes")]
    pub learnable_decay: bool,
    /// The longest memory a head's decay may keep, in tokens: `gamma <= 1 - 1/max_horizon` (a
    /// head's horizon is `1 / (1 - gamma)`), however training moves `ln(gamma)`. Without it the
    /// bound is `gamma <= 1`, and distillation drives many heads there (no decay: 87 of the 270
    /// heads of the 1,024-token hybrid), whose linear state then grows past the training length
    /// and the model degrades on longer contexts (docs/conversion-start.md). `None`: `gamma <= 1`
    /// (the reference).
    #[serde(default)]
    pub max_horizon: Option<usize>,
    /// Chunk length of the chunked form used for full-sequence forward passes.
    #[serde(default = "default_chunk_len")]
    pub chunk_len: usize,
    /// Seed for the new parameters (scales, gate) when converting a softmax model.
    #[serde(default)]
    pub seed: u64,
    /// What of the feature map itself training may change (all variants start as the same map).
    #[serde(default)]
    pub feature_training: FeatureTraining,
    /// Divide each output row by the sum of its decayed scores (the standard linear-attention
    /// normaliser), so rows are averages as softmax rows are. The reference has none.
    #[serde(default)]
    pub normalize: bool,
    /// Sliding-window hybrid (LoLCATs): exact softmax over each query's last `window` keys plus the
    /// linear attention over the earlier ones, one normaliser for both (needs `normalize`).
    /// 0: pure DiJiang.
    #[serde(default)]
    pub window: usize,
    /// The initial weight of the linear part beside the window (`window > 0`).
    #[serde(default)]
    pub linear_weight: LinearWeight,
    /// The output gate.
    #[serde(default)]
    pub gate: GateKind,
    /// The normalisation of the attention output.
    #[serde(default)]
    pub output_norm: OutputNorm,
    /// Pure DiJiang (`window = 0`): the keys the feature map reads and the values mixed per channel
    /// with the previous position's, `k_t + mu_k (k_{t-1} - k_t)` (RWKV's token shift; `mu` learnable,
    /// init 0, so the student starts as without it). A position-free linear head cannot attend to
    /// "the token before" the way a RoPE softmax head does; a shifted key carries it, so one layer
    /// can match a query to the key after an earlier occurrence of its token (as H3's shift and
    /// the short convolutions of GLA / Mamba do). Left out of saved configs when off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub token_shift: bool,
}

/// Trainable feature-map variants. Each starts exactly as the frozen map it extends, so a converted
/// student's outputs at initialisation do not depend on the variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureTraining {
    /// The projection is frozen (the reference).
    #[default]
    Frozen,
    /// Trainable per-feature scales T (a multiplier on each projection column, init 1) and
    /// feature weights D.
    Scales,
    /// The whole projection is trainable, initialised at DCT x T.
    Projection,
    /// A residual one-layer MLP on the input, `x + relu(x W1) W2` with `W2 = 0` at init, before the
    /// frozen projection.
    Mlp,
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_chunk_len() -> usize {
    64
}

impl Default for DiJiangConfig {
    fn default() -> Self {
        Self {
            feature_map: FeatureMapKind::default(),
            performer_features: None,
            features: None,
            sampling: ScaleSampling::default(),
            feature_input: FeatureInput::Rotated,
            feature_weights: false,
            decay: DecayKind::default(),
            learnable_decay: true,
            max_horizon: None,
            chunk_len: default_chunk_len(),
            seed: 0,
            feature_training: FeatureTraining::Frozen,
            normalize: false,
            window: 0,
            linear_weight: LinearWeight::One,
            gate: GateKind::Reference,
            output_norm: OutputNorm::GroupNorm,
            token_shift: false,
        }
    }
}

impl DiJiangConfig {
    /// The number of features m for a head of size `head_dim`.
    pub fn num_features(&self, head_dim: usize) -> usize {
        match self.feature_map {
            FeatureMapKind::Performer => self.performer_features.unwrap_or(head_dim),
            FeatureMapKind::Reference => self.features.unwrap_or(head_dim),
            FeatureMapKind::WeightedExp => head_dim,
        }
    }

    /// Whether the kernel has learnable feature weights D.
    pub fn has_feature_weights(&self) -> bool {
        self.feature_weights
            || self.feature_map == FeatureMapKind::WeightedExp
            || self.feature_training == FeatureTraining::Scales
    }

    /// Whether the kernel parameter `name` (a full name such as `layers.0.attn.kernel.proj`) may be
    /// trained at all: the feature projection only in the `projection` variant, the decay only when
    /// learnable. Every other parameter may. The one rule the model's build and the trainer's
    /// selection of trainable parameters both follow.
    pub fn is_trainable(&self, name: &str) -> bool {
        if name.ends_with(".kernel.proj") {
            return self.feature_training == FeatureTraining::Projection;
        }
        if name.ends_with(".kernel.log_decay") {
            return self.learnable_decay;
        }
        true
    }

    /// Parameters the feature-map variant adds, per layer, for heads of size `d`.
    pub fn variant_params(&self, d: usize) -> usize {
        let m = self.num_features(d);
        match self.feature_training {
            FeatureTraining::Frozen | FeatureTraining::Projection => 0,
            FeatureTraining::Scales => m,
            FeatureTraining::Mlp => mul(mul(2, d), d),
        }
    }

    /// Parameters of the output path per layer (gate `W_G [hidden, width]`, GroupNorm's affine
    /// `2 width`) and of the window (one linear-part weight per query head).
    pub fn output_params(&self, hidden: usize, width: usize, heads: usize) -> usize {
        let gate = match self.gate {
            GateKind::Reference | GateKind::Identity => mul(hidden, width),
            GateKind::None => 0,
        };
        let norm = match self.output_norm {
            OutputNorm::GroupNorm => mul(2, width),
            OutputNorm::None => 0,
        };
        sum(&[gate, norm, if self.window > 0 { heads } else { 0 }])
    }
}

/// Saturating product and sum: parameter counts of configs read from files.
fn mul(a: usize, b: usize) -> usize {
    a.saturating_mul(b)
}

fn sum(terms: &[usize]) -> usize {
    terms.iter().fold(0, |total, t| total.saturating_add(*t))
}

/// A decoder-only Transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    /// Fraction of each head's dimensions that RoPE rotates (GPT-NeoX `rotary_pct`; 1 for LLaMA).
    pub rotary_pct: f64,
    pub norm_eps: f64,
    /// The output head reuses the token embedding.
    pub tie_embeddings: bool,
    /// GPT-NeoX: `x + attn(ln1(x)) + mlp(ln2(x))`; otherwise sequential.
    pub parallel_residual: bool,
    /// Biases on the q/k/v/o projections.
    pub attention_bias: bool,
    pub max_seq_len: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub attention: AttentionKernelConfig,
    /// Low-rank adapters on some projections (training only: an exported model has them merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

/// Low-rank adapters (LoRA): each targeted projection `W` gains `(alpha / rank) A B`, `A`
/// `[d_in, rank]` random, `B` `[rank, d_out]` zero (so the model starts as it was). What a stage with
/// `trainable = "lora"` trains beside the new attention parameters; merged into the weights when
/// the model is exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// The adapted projections (default: the attention's q, k, v, o).
    #[serde(default = "default_lora_targets")]
    pub targets: Vec<LoraTarget>,
}

fn default_lora_targets() -> Vec<LoraTarget> {
    vec![LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O]
}

/// A projection LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    /// The end of the projection's parameter path (`layers.3.attn.q`).
    fn suffix(self) -> &'static str {
        match self {
            LoraTarget::Q => ".attn.q",
            LoraTarget::K => ".attn.k",
            LoraTarget::V => ".attn.v",
            LoraTarget::O => ".attn.o",
            LoraTarget::Gate => ".mlp.gate",
            LoraTarget::Up => ".mlp.up",
            LoraTarget::Down => ".mlp.down",
        }
    }
}

impl LoraConfig {
    /// Whether the projection at `path` (e.g. `layers.3.attn.q`) gets an adapter.
    pub fn targets_param(&self, path: &str) -> bool {
        self.targets.iter().any(|t| path.ends_with(t.suffix()))
    }

    fn validate(&self) -> Result<(), String> {
        if self.rank == 0 || !(self.alpha.is_finite() && self.alpha > 0.0) || self.targets.is_empty() {
            return Err(format!(
                "lora needs rank >= 1, alpha > 0 and at least one target (got rank {}, alpha {}, {} targets)",
                self.rank,
                self.alpha,
                self.targets.len()
            ));
        }
        Ok(())
    }
}

/// Whether a parameter belongs to a LoRA adapter.
pub fn is_lora_param(name: &str) -> bool {
    name.contains(".lora.")
}

impl ModelConfig {
    #[allow(clippy::too_many_arguments)]
    fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        rope_theta: f64,
        tie_embeddings: bool,
        max_seq_len: usize,
    ) -> Self {
        Self {
            arch: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads,
            rope_theta,
            rotary_pct: 1.0,
            norm_eps: 1e-5,
            tie_embeddings,
            parallel_residual: false,
            attention_bias: false,
            max_seq_len,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            attention: AttentionKernelConfig::Softmax,
            lora: None,
        }
    }

    fn pythia(hidden_size: usize, num_layers: usize, num_heads: usize) -> Self {
        Self {
            arch: Architecture::GptNeox,
            vocab_size: 50304,
            hidden_size,
            intermediate_size: 4 * hidden_size,
            num_layers,
            num_heads,
            num_kv_heads: num_heads,
            head_dim: hidden_size / num_heads,
            rope_theta: 10000.0,
            rotary_pct: 0.25,
            norm_eps: 1e-5,
            tie_embeddings: false,
            parallel_residual: true,
            attention_bias: true,
            max_seq_len: 2048,
            bos_token_id: Some(0),
            eos_token_id: Some(0),
            attention: AttentionKernelConfig::Softmax,
            lora: None,
        }
    }

    /// LLaMA-2-7B (6,738,415,616 parameters).
    pub fn llama2_7b() -> Self {
        Self::llama(32000, 4096, 11008, 32, 32, 32, 10000.0, false, 4096)
    }

    /// SmolLM2-135M (-Instruct): LLaMA architecture with grouped-query attention, tied embeddings.
    pub fn smollm2_135m() -> Self {
        Self {
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            ..Self::llama(49152, 576, 1536, 30, 9, 3, 100000.0, true, 8192)
        }
    }

    /// A tiny model of `arch` for tests and examples with random weights: 2 layers, hidden 32,
    /// 4 heads of 8 (LLaMA: 2 key/value heads, grouped-query), vocabulary 512.
    pub fn tiny(arch: Architecture) -> Self {
        let base = match arch {
            Architecture::Llama => Self::llama(512, 32, 48, 2, 4, 2, 10000.0, true, 512),
            Architecture::GptNeox => Self::pythia(32, 2, 4),
        };
        Self { vocab_size: 512, intermediate_size: 48, ..base }
    }

    /// Karpathy's stories260K (TinyStories), the llama2.c model in `../shared/models`.
    pub fn stories260k() -> Self {
        Self::llama(512, 64, 172, 5, 8, 4, 10000.0, true, 512)
    }

    pub fn pythia_70m() -> Self {
        Self::pythia(512, 6, 8)
    }

    pub fn pythia_160m() -> Self {
        Self::pythia(768, 12, 12)
    }

    pub fn pythia_410m() -> Self {
        Self::pythia(1024, 24, 16)
    }

    pub fn pythia_1b() -> Self {
        Self::pythia(2048, 16, 8)
    }

    pub fn pythia_2_8b() -> Self {
        Self { vocab_size: 50304, ..Self::pythia(2560, 32, 32) }
    }

    /// A preset by name (`llama2-7b`, `smollm2-135m`, `stories260k`, `pythia-70m`, ...).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "llama2-7b" => Self::llama2_7b(),
            "smollm2-135m" => Self::smollm2_135m(),
            "stories260k" => Self::stories260k(),
            "pythia-70m" => Self::pythia_70m(),
            "pythia-160m" => Self::pythia_160m(),
            "pythia-410m" => Self::pythia_410m(),
            "pythia-1b" => Self::pythia_1b(),
            "pythia-2.8b" => Self::pythia_2_8b(),
            _ => return None,
        })
    }

    /// The names [`Self::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &[
        "llama2-7b",
        "smollm2-135m",
        "stories260k",
        "pythia-70m",
        "pythia-160m",
        "pythia-410m",
        "pythia-1b",
        "pythia-2.8b",
    ];

    /// The same model with another attention kernel.
    pub fn with_attention(self, attention: AttentionKernelConfig) -> Self {
        Self { attention, ..self }
    }

    /// The same hybrid with its exact window set to `window` keys, for inference. The window is the
    /// teacher's own softmax over the last keys, so one wider than the model was trained with
    /// moves it towards its teacher at `O(window)` more work per token, its state still constant in
    /// the context length (docs/conversion-start.md measures it). Only a hybrid's window changes: a
    /// pure DiJiang or softmax model has no weight for a linear part beside a window.
    pub fn with_window(self, window: usize) -> Result<Self, ModelError> {
        match &self.attention {
            AttentionKernelConfig::Dijiang(dj) if dj.window > 0 && window > 0 => {
                let attention = AttentionKernelConfig::Dijiang(DiJiangConfig { window, ..dj.clone() });
                Ok(self.with_attention(attention))
            }
            AttentionKernelConfig::Dijiang(dj) if dj.window > 0 => Err(ModelError::Config(format!(
                "an attention window of 0 would drop the exact part of this hybrid (trained with a window of {}): \
                 give a window of at least 1 key",
                dj.window
            ))),
            AttentionKernelConfig::Dijiang(_) => Err(ModelError::Config(
                "only a sliding-window hybrid's attention window can be changed: this pure DiJiang model has none (it \
                 was trained without `student.window`, so its linear part has no weight beside a window)"
                    .into(),
            )),
            AttentionKernelConfig::Softmax => Err(ModelError::Config(
                "only a sliding-window hybrid's attention window can be changed: this model's softmax attention \
                 already reads every key"
                    .into(),
            )),
        }
    }

    /// The same DiJiang model with its decay bound set to `max_horizon` tokens (`gamma <= 1 -
    /// 1/max_horizon`), for inference. The bound is read where the kernel reads its decay, so it
    /// changes no weight: a model trained with one bound can run with another, and the one it was
    /// trained with is not always the best (docs/conversion-start.md measures both students).
    pub fn with_max_horizon(self, max_horizon: usize) -> Result<Self, ModelError> {
        match &self.attention {
            AttentionKernelConfig::Dijiang(dj) => {
                let attention =
                    AttentionKernelConfig::Dijiang(DiJiangConfig { max_horizon: Some(max_horizon), ..dj.clone() });
                let changed = self.with_attention(attention);
                changed.validate()?;
                Ok(changed)
            }
            AttentionKernelConfig::Softmax => Err(ModelError::Config(
                "only a DiJiang model's decay horizon can be changed: this model's softmax attention has no decay"
                    .into(),
            )),
        }
    }

    /// Dimensions RoPE rotates in each head (even).
    pub fn rotary_dims(&self) -> usize {
        // GPT-NeoX: int(head_size * rotary_pct).
        ((self.head_dim as f64 * self.rotary_pct) as usize) & !1
    }

    /// The number of parameters (trainable or not) of the model this config builds, computed
    /// without building it. Saturating: a config read from a file may describe more parameters
    /// than a `usize` counts, and the import refuses such a count rather than overflowing on it.
    pub fn num_params(&self) -> usize {
        let (v, h, i, d) = (self.vocab_size, self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (mul(self.num_heads, d), mul(self.num_kv_heads, d));
        let neox = self.arch == Architecture::GptNeox;
        let norm = if neox { mul(2, h) } else { h };
        let bias = |n: usize| if self.attention_bias { n } else { 0 };
        let attention = sum(&[mul(h, q), bias(q), mul(2, sum(&[mul(h, kv), bias(kv)])), mul(q, h), bias(h)]);
        let mlp = if neox { sum(&[mul(mul(2, h), i), i, h]) } else { mul(mul(3, h), i) };
        let kernel = match &self.attention {
            AttentionKernelConfig::Softmax => 0,
            AttentionKernelConfig::Dijiang(dj) => {
                let m = dj.num_features(d);
                // proj, feature weights, decay, gate, group norm, window weight, the variant's own,
                // the token shift's mixes of keys and values
                sum(&[
                    mul(d, m),
                    if dj.has_feature_weights() { m } else { 0 },
                    self.num_heads,
                    dj.output_params(h, q, self.num_heads),
                    dj.variant_params(d),
                    if dj.token_shift { mul(2, kv) } else { 0 },
                ])
            }
        };
        let head = if self.tie_embeddings { 0 } else { mul(h, v) };
        sum(&[mul(v, h), mul(self.num_layers, sum(&[mul(2, norm), attention, mlp, kernel])), norm, head])
    }

    /// Checks the dimensions fit together.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |m: String| Err(ModelError::Config(m));
        if self.num_kv_heads == 0 || self.num_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return fail(format!(
                "num_heads ({}) must be a positive multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 || self.head_dim == 0 {
            return fail("vocab_size, hidden_size, num_layers and head_dim must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.rotary_pct) {
            return fail(format!("rotary_pct must be in [0, 1], got {}", self.rotary_pct));
        }
        if let Some(lora) = &self.lora {
            lora.validate().map_err(ModelError::Config)?;
        }
        if let AttentionKernelConfig::Dijiang(dj) = &self.attention {
            if dj.chunk_len == 0 {
                return fail("attention.chunk_len must be positive".into());
            }
            if let Some(h) = dj.max_horizon
                && h < 2
            {
                return fail(format!(
                    "attention.max_horizon = {h}: the decay bound 1 - 1/max_horizon needs at least 2 tokens (or leave \
                     it out for gamma <= 1)"
                ));
            }
            if dj.features == Some(0) || (dj.features.is_some() && dj.feature_map != FeatureMapKind::Reference) {
                return fail(
                    "attention.features sets the reference map's feature count (>= 1); other maps: performer_features"
                        .into(),
                );
            }
            if dj.window > 0 && !dj.normalize {
                return fail(format!(
                    "attention.window = {} needs attention.normalize = true: the window and the linear part share one \
                     normaliser",
                    dj.window
                ));
            }
            if dj.feature_input == FeatureInput::Unrotated && self.rotary_dims() == 0 {
                return fail(format!(
                    "attention.feature_input = unrotated has no effect: this model rotates no dimensions (rotary_pct \
                     {}), so its queries and keys are the same before and after RoPE; leave feature_input at rotated",
                    self.rotary_pct
                ));
            }
            if dj.token_shift && dj.window > 0 {
                return fail(format!(
                    "attention.token_shift is for pure DiJiang (window = 0); attention.window = {} already gives \
                     every query the previous keys exactly: leave token_shift out",
                    dj.window
                ));
            }
            if dj.linear_weight == LinearWeight::Calibrated && dj.window == 0 {
                return fail("attention.linear_weight = calibrated needs a window (attention.window > 0)".into());
            }
        }
        Ok(())
    }

    /// Builds a config from an HF `config.json` (`model_type` "llama" or "gpt_neox").
    pub fn from_hf_config(json: &str) -> Result<Self, ModelError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let get_usize = |key: &str| -> Result<usize, ModelError> {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config(format!("config.json: missing or non-integer `{key}`")))
        };
        let opt_usize = |key: &str| v.get(key).and_then(serde_json::Value::as_u64).map(|x| x as usize);
        let opt_f64 = |key: &str| v.get(key).and_then(serde_json::Value::as_f64);
        let opt_bool = |key: &str| v.get(key).and_then(serde_json::Value::as_bool);
        let token = |key: &str| v.get(key).and_then(serde_json::Value::as_u64).map(|x| x as u32);
        let model_type = v.get("model_type").and_then(serde_json::Value::as_str).unwrap_or("");
        if !matches!(model_type, "llama" | "mistral" | "gpt_neox") {
            return Err(ModelError::Config(format!(
                "config.json: model_type `{model_type}` is not supported (llama or gpt_neox)"
            )));
        }
        let hidden_size = get_usize("hidden_size")?;
        let num_heads = get_usize("num_attention_heads")?;
        // 0 heads: no head size; `validate` below names the bad field.
        let head_size = hidden_size.checked_div(num_heads).unwrap_or(0);
        // Transformers 5 moved rope_theta into rope_parameters.
        let rope_theta = opt_f64("rope_theta")
            .or_else(|| opt_f64("rotary_emb_base"))
            .or_else(|| v.pointer("/rope_parameters/rope_theta").and_then(serde_json::Value::as_f64))
            .unwrap_or(10000.0);
        let config = match model_type {
            "llama" | "mistral" => Self {
                arch: Architecture::Llama,
                vocab_size: get_usize("vocab_size")?,
                hidden_size,
                intermediate_size: get_usize("intermediate_size")?,
                num_layers: get_usize("num_hidden_layers")?,
                num_heads,
                num_kv_heads: opt_usize("num_key_value_heads").unwrap_or(num_heads),
                head_dim: opt_usize("head_dim").unwrap_or(head_size),
                rope_theta,
                rotary_pct: 1.0,
                norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
                tie_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
                parallel_residual: false,
                attention_bias: opt_bool("attention_bias").unwrap_or(false),
                max_seq_len: opt_usize("max_position_embeddings").unwrap_or(2048),
                bos_token_id: token("bos_token_id"),
                eos_token_id: token("eos_token_id"),
                attention: AttentionKernelConfig::Softmax,
                lora: None,
            },
            "gpt_neox" => Self {
                arch: Architecture::GptNeox,
                vocab_size: get_usize("vocab_size")?,
                hidden_size,
                intermediate_size: get_usize("intermediate_size")?,
                num_layers: get_usize("num_hidden_layers")?,
                num_heads,
                num_kv_heads: num_heads,
                head_dim: head_size,
                rope_theta,
                rotary_pct: opt_f64("rotary_pct").unwrap_or(1.0),
                norm_eps: opt_f64("layer_norm_eps").unwrap_or(1e-5),
                tie_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
                parallel_residual: opt_bool("use_parallel_residual").unwrap_or(true),
                attention_bias: opt_bool("attention_bias").unwrap_or(true),
                max_seq_len: opt_usize("max_position_embeddings").unwrap_or(2048),
                bos_token_id: token("bos_token_id"),
                eos_token_id: token("eos_token_id"),
                attention: AttentionKernelConfig::Softmax,
                lora: None,
            },
            _ => unreachable!("model_type checked above"),
        };
        if model_type == "llama" && v.get("hidden_act").and_then(serde_json::Value::as_str).is_some_and(|a| a != "silu")
        {
            return Err(ModelError::Config("config.json: LLaMA models must use hidden_act = silu".into()));
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in ModelConfig::PRESETS {
            ModelConfig::preset(name).expect("known preset").validate().expect(name);
        }
    }

    #[test]
    fn llama2_7b_has_its_published_parameter_count() {
        assert_eq!(ModelConfig::llama2_7b().num_params(), 6_738_415_616);
    }

    #[test]
    fn rotary_dims_follow_gpt_neox() {
        assert_eq!(ModelConfig::pythia_70m().rotary_dims(), 16);
        assert_eq!(ModelConfig::llama2_7b().rotary_dims(), 128);
    }

    #[test]
    fn dijiang_options_parse_by_name_default_to_the_reference_and_reject_unknown_keys() {
        let dj: DiJiangConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(dj, DiJiangConfig::default());
        assert!(!dj.normalize && dj.window == 0 && dj.gate == GateKind::Reference);
        assert_eq!(dj.output_norm, OutputNorm::GroupNorm);
        let dj: DiJiangConfig = serde_json::from_str(
            r#"{"normalize": true, "window": 64, "gate": "identity", "output_norm": "none", "decay": "calibrated"}"#,
        )
        .unwrap();
        assert_eq!(
            (dj.normalize, dj.window, dj.gate, dj.output_norm, dj.decay),
            (true, 64, GateKind::Identity, OutputNorm::None, DecayKind::Calibrated)
        );
        let dj: DiJiangConfig = serde_json::from_str(r#"{"window": 8, "linear_weight": "calibrated"}"#).unwrap();
        assert_eq!(dj.linear_weight, LinearWeight::Calibrated);
        assert!(serde_json::from_str::<DiJiangConfig>(r#"{"gate": "swish"}"#).is_err());
        assert!(serde_json::from_str::<DiJiangConfig>(r#"{"windows": 64}"#).is_err());
    }

    #[test]
    fn a_decay_horizon_under_two_tokens_is_refused_by_name() {
        let with = |max_horizon| ModelConfig {
            attention: AttentionKernelConfig::Dijiang(DiJiangConfig { max_horizon, ..DiJiangConfig::default() }),
            ..ModelConfig::tiny(Architecture::Llama)
        };
        for bad in [0, 1] {
            let err = with(Some(bad)).validate().unwrap_err().to_string();
            assert!(err.contains("max_horizon") && err.contains("at least 2"), "{err}");
        }
        assert!(with(Some(2)).validate().is_ok() && with(None).validate().is_ok());
        let dj: DiJiangConfig = serde_json::from_str(r#"{"max_horizon": 512}"#).unwrap();
        assert_eq!(dj.max_horizon, Some(512));
    }

    #[test]
    fn unrotated_features_without_rotary_dimensions_are_refused() {
        let with = |rotary_pct| ModelConfig {
            rotary_pct,
            attention: AttentionKernelConfig::Dijiang(DiJiangConfig {
                feature_input: FeatureInput::Unrotated,
                ..DiJiangConfig::default()
            }),
            ..ModelConfig::tiny(Architecture::GptNeox)
        };
        let err = with(0.0).validate().unwrap_err().to_string();
        assert!(err.contains("feature_input = unrotated has no effect"), "{err}");
        assert!(with(0.25).validate().is_ok());
    }

    #[test]
    fn only_a_hybrids_window_changes() {
        let with = |window| ModelConfig {
            attention: AttentionKernelConfig::Dijiang(DiJiangConfig { window, normalize: true, ..Default::default() }),
            ..ModelConfig::tiny(Architecture::Llama)
        };
        let wider = with(4).with_window(16).unwrap();
        let AttentionKernelConfig::Dijiang(dj) = &wider.attention else { panic!("still DiJiang") };
        assert_eq!(dj.window, 16);
        assert_eq!(wider.num_params(), with(4).num_params(), "the window adds no parameter");
        let err = with(4).with_window(0).unwrap_err().to_string();
        assert!(err.contains("at least 1 key"), "{err}");
        for model in [with(0), ModelConfig::tiny(Architecture::Llama)] {
            let err = model.with_window(16).unwrap_err().to_string();
            assert!(err.contains("only a sliding-window hybrid"), "{err}");
        }
    }

    #[test]
    fn only_a_dijiang_models_decay_horizon_changes() {
        let pure = ModelConfig {
            attention: AttentionKernelConfig::Dijiang(DiJiangConfig { max_horizon: Some(512), ..Default::default() }),
            ..ModelConfig::tiny(Architecture::Llama)
        };
        let longer = pure.clone().with_max_horizon(1024).unwrap();
        let AttentionKernelConfig::Dijiang(dj) = &longer.attention else { panic!("still DiJiang") };
        assert_eq!(dj.max_horizon, Some(1024));
        assert_eq!(longer.num_params(), pure.num_params(), "the bound adds no parameter");
        let err = pure.with_max_horizon(1).unwrap_err().to_string();
        assert!(err.contains("at least 2 tokens"), "{err}");
        let err = ModelConfig::tiny(Architecture::Llama).with_max_horizon(512).unwrap_err().to_string();
        assert!(err.contains("softmax attention has no decay"), "{err}");
    }

    #[test]
    fn hf_config_errors_name_the_key() {
        let err = ModelConfig::from_hf_config(r#"{"model_type": "llama", "hidden_size": 8}"#).unwrap_err();
        assert!(err.to_string().contains("num_attention_heads"), "{err}");
        let err = ModelConfig::from_hf_config(r#"{"model_type": "bert"}"#).unwrap_err();
        assert!(err.to_string().contains("bert"), "{err}");
    }
}
