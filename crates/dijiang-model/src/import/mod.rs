//! Weight import: every supported checkpoint format behind one [`load`] that detects it.
//!
//! | format | detected by |
//! | --- | --- |
//! | ours (`dijiang convert` output, trainer exports) | a directory with `dijiang.json` |
//! | HF safetensors (single or sharded), LLaMA / GPT-NeoX / reference DiJiang | a directory (or file) with `config.json` beside it |
//! | GGUF v3, llama architecture (F32/F16/BF16/Q8_0/Q4_0/Q4_1) | a file starting with `GGUF` |
//! | llama2.c legacy checkpoint | a `.bin` file whose header and size agree |
//!
//! A format is a [`TensorStore`](crate::store::TensorStore): it answers for our parameter names in our layout and reports the
//! tensors nobody asked for, so unknown and missing tensors are both errors listing them.

pub mod gguf;
pub mod hf;
pub mod llama2c;
pub mod native;
pub mod safetensors;

use std::fs::File;
use std::path::Path;

use burn::prelude::*;
use memmap2::Mmap;

use crate::config::{AttentionKernelConfig, ModelConfig};
use crate::error::ModelError;
use crate::store::TensorStore;
use crate::transformer::Transformer;
use crate::weights::Loaded;

/// Maps a file read-only. The one unsafe operation of the crate: the mapping is sound as long as no
/// one truncates the file while we read it, the contract of every mmap-based loader.
#[allow(unsafe_code)]
pub fn map_file(path: &Path) -> Result<Mmap, ModelError> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: read-only mapping of a checkpoint file we do not modify.
    unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}

/// Whether the file at `path` starts with `magic` (reads only those bytes).
fn has_magic(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0; magic.len()];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == magic
}

/// The checkpoint formats [`load`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Native,
    HfSafetensors,
    Gguf,
    Llama2c,
}

/// A model read from a checkpoint.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    pub model: Transformer<B>,
    pub format: Format,
    /// Parameters the checkpoint did not have and that were initialised (a converted student's
    /// new attention parameters).
    pub initialised: Vec<String>,
}

/// An opened checkpoint, before the model is built: its format, config and tensors.
pub struct Checkpoint {
    pub format: Format,
    pub config: ModelConfig,
    /// How the tensors are stored (data types, shards), for reports.
    pub storage: String,
    store: Box<dyn TensorStore>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("format", &self.format).field("path", &self.store.path()).finish()
    }
}

impl Checkpoint {
    /// Detects the format of `path` and reads its config and tensor index (no tensor data yet).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::invalid(
                path,
                "no such file or directory (expected an HF model directory with config.json, a .gguf file or a llama2.c .bin)",
            ));
        }
        let checkpoint = Self::open_format(path)?;
        // A config that does not hold together is refused here, naming the file, rather than by
        // whatever command would compute with it first.
        checkpoint.config.validate().map_err(|e| match e {
            ModelError::Config(m) => ModelError::invalid(checkpoint.store.path(), m),
            other => other,
        })?;
        Ok(checkpoint)
    }

    fn open_format(path: &Path) -> Result<Self, ModelError> {
        if native::is_native(path) {
            let store = native::NativeCheckpoint::open(path)?;
            return Ok(Self {
                storage: store.storage(),
                format: Format::Native,
                config: store.manifest.config.clone(),
                store: Box::new(store),
            });
        }
        if let Some((weights, config)) = hf::locate(path) {
            let store = hf::HfCheckpoint::open(&weights, &config)?;
            return Ok(Self {
                storage: store.storage(),
                format: Format::HfSafetensors,
                config: store.config().clone(),
                store: Box::new(store),
            });
        }
        if path.is_file() && has_magic(path, b"GGUF") {
            let store = gguf::Gguf::open(path)?;
            return Ok(Self {
                storage: store.storage(),
                format: Format::Gguf,
                config: store.config().clone(),
                store: Box::new(store),
            });
        }
        if path.is_file() && path.extension().is_some_and(|e| e == "bin") {
            let store = llama2c::Llama2c::open(path)?;
            return Ok(Self {
                storage: "f32".into(),
                format: Format::Llama2c,
                config: store.config(),
                store: Box::new(store),
            });
        }
        Err(ModelError::invalid(
            path,
            "unrecognised model: expected an HF directory (config.json + model.safetensors or \
             model.safetensors.index.json), a GGUF file or a llama2.c checkpoint (.bin)",
        ))
    }

    /// Builds the model of `config` (the checkpoint's own, or one with another attention kernel)
    /// from the checkpoint. Parameters for which `is_new` is true may be absent and are then
    /// initialised from `seed`; any other absent parameter, any unused tensor, or a shape mismatch
    /// is an error.
    pub fn build<B: Backend>(
        mut self,
        config: &ModelConfig,
        is_new: &dyn Fn(&str) -> bool,
        seed: u64,
        device: &B::Device,
    ) -> Result<LoadedModel<B>, ModelError> {
        config.validate()?;
        check_fits(config, self.store.as_ref(), is_new)?;
        let mut source = Loaded::<B>::new(self.store.as_mut(), is_new, seed, device);
        let model = Transformer::build(&mut source, config);
        let initialised = source.finish()?;
        Ok(LoadedModel { model, format: self.format, initialised })
    }
}

/// How many times the checkpoint's values a config may describe before it is refused unbuilt.
/// Building allocates every tensor the config describes, present or not, and reports the missing
/// ones only at the end; a config off by a layer gets that report (it names the tensors), one off
/// by orders of magnitude (a `config.json` claiming a vocabulary of 2^40) must not allocate first.
const CONFIG_SLACK: usize = 2;

/// Refuses, before anything is allocated, a config describing far more parameters than the
/// checkpoint holds values. New parameters (only the attention kernels', when converting) are
/// initialised rather than read; they are held to the same bound, as a kernel never outweighs the
/// model it is added to.
fn check_fits(config: &ModelConfig, store: &dyn TensorStore, is_new: &dyn Fn(&str) -> bool) -> Result<(), ModelError> {
    let stored = store.stored_values();
    let total = config.num_params();
    let (read, initialised) = if is_new("layers.0.attn.kernel.proj") {
        let teacher = config.clone().with_attention(AttentionKernelConfig::Softmax).num_params();
        (teacher, total.saturating_sub(teacher))
    } else {
        (total, 0)
    };
    for (what, needed) in [("read from the checkpoint", read), ("initialised (attention kernels)", initialised)] {
        if needed > stored.saturating_mul(CONFIG_SLACK) {
            return Err(ModelError::invalid(
                store.path(),
                format!(
                    "the config describes {needed} parameters to be {what} ({} layers, hidden size {}, vocabulary {}), \
                     more than twice the {stored} values the checkpoint holds: the config does not match the weights",
                    config.num_layers, config.hidden_size, config.vocab_size
                ),
            ));
        }
    }
    Ok(())
}

/// Loads the model at `path` as it is (format detected).
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>, ModelError> {
    load_adjusted(path, device, Ok)
}

/// Loads the model at `path` with its stored config changed by `adjust` before anything is built
/// (e.g. [`ModelConfig::with_window`]); the weights must still fit the changed config.
pub fn load_adjusted<B: Backend>(
    path: &Path,
    device: &B::Device,
    adjust: impl FnOnce(ModelConfig) -> Result<ModelConfig, ModelError>,
) -> Result<LoadedModel<B>, ModelError> {
    let checkpoint = Checkpoint::open(path)?;
    let config = adjust(checkpoint.config.clone())?;
    checkpoint.build(&config, &|_| false, 0, device)
}
