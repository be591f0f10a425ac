//! Conversion: a DiJiang student from a softmax teacher. Every teacher weight is copied; only the
//! attention kernels' new parameters (`layers.*.attn.kernel.*`) are initialised, seeded by the
//! DiJiang config's seed; anything else missing or left over is an error.

use std::path::Path;

use burn::prelude::*;

use crate::config::{AttentionKernelConfig, DiJiangConfig};
use crate::error::ModelError;
use crate::import::{Checkpoint, LoadedModel};

/// Whether a parameter belongs to an attention kernel (new when converting).
pub fn is_kernel_param(name: &str) -> bool {
    name.contains(".attn.kernel.")
}

/// Builds the DiJiang student of the softmax model at `teacher`.
pub fn convert<B: Backend>(
    teacher: &Path,
    dijiang: DiJiangConfig,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    let checkpoint = Checkpoint::open(teacher)?;
    if checkpoint.config.attention != AttentionKernelConfig::Softmax {
        return Err(ModelError::invalid(teacher, "is already a DiJiang model; conversion needs a softmax teacher"));
    }
    let seed = dijiang.seed;
    let config = checkpoint.config.clone().with_attention(AttentionKernelConfig::Dijiang(dijiang));
    checkpoint.build(&config, &is_kernel_param, seed, device)
}
