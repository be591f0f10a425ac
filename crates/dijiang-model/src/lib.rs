//! Decoder-only Transformers (the LLaMA family and GPT-NeoX / Pythia) whose attention owns a
//! swappable kernel, softmax or DiJiang, and the import of real checkpoints into them.
//!
//! - [`config`]: [`ModelConfig`] with presets and HF `config.json` parsing.
//! - [`transformer`], [`attention`], [`layers`], [`rope`]: the modules.
//! - [`weights`]: how modules get their parameters (fresh init or a checkpoint); [`store`]: what a
//!   checkpoint format provides (host tensors under our names).
//! - [`convert`], [`calibrate`]: a DiJiang student from a softmax teacher, with decays optionally
//!   calibrated on the teacher's attention.
//! - [`import`]: HF safetensors (single and sharded), GGUF, llama2.c, reference DiJiang checkpoints,
//!   and our own format.
//! - [`tokenizer`]: HF `tokenizer.json`, GGUF-embedded BPE and llama2.c tokenizers.
//! - [`generate`]: KV-cache / recurrent-state decoding and sampling.

pub mod attention;
pub mod calibrate;
pub mod config;
pub mod convert;
pub mod error;
pub mod eval;
pub mod fidelity;
pub mod generate;
pub mod import;
pub mod layers;
pub mod reduce;
pub mod rope;
pub mod store;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use config::{
    AttentionKernelConfig, DiJiangConfig, FeatureInput, FeatureTraining, GateKind, LinearWeight, LoraConfig,
    LoraTarget, ModelConfig, OutputNorm,
};
pub use dijiang_kernel::cpu;
pub use error::ModelError;
pub use transformer::{DecodeState, ForwardOutput, LayerTrace, Trace, Transformer};
