//! Conversion: a DiJiang student from a softmax teacher. Every teacher weight is copied; only the
//! attention kernels' new parameters (`layers.*.attn.kernel.*`) are initialised, seeded by the
//! DiJiang config's seed; anything else missing or left over is an error. With
//! `decay = "calibrated"` the decays are then set from the teacher's attention on a calibration
//! text ([`convert_calibrated`], see [`crate::calibrate`]).

use std::path::Path;

use burn::prelude::*;

use crate::calibrate::{calibrated_log_decay, set_log_decay};
use crate::config::{AttentionKernelConfig, DecayKind, DiJiangConfig};
use crate::error::ModelError;
use crate::import::{Checkpoint, LoadedModel, load};

/// Whether a parameter belongs to an attention kernel (new when converting).
pub fn is_kernel_param(name: &str) -> bool {
    name.contains(".attn.kernel.")
}

/// Builds the DiJiang student of the softmax model at `teacher`.
///
/// # Errors
/// If the teacher cannot be read or is not a softmax model, or `dijiang.decay` is `calibrated`
/// (which needs a calibration text: [`convert_calibrated`]).
pub fn convert<B: Backend>(
    teacher: &Path,
    dijiang: DiJiangConfig,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    if dijiang.decay == DecayKind::Calibrated {
        return Err(ModelError::Config(
            "decay = calibrated needs calibration tokens: convert_calibrated (`dijiang convert --calibrate FILE`)"
                .into(),
        ));
    }
    build_student(teacher, dijiang, device)
}

/// Builds the DiJiang student of the softmax model at `teacher` with every head's decay calibrated
/// on the teacher's attention to `calibration` (token ids of real text, e.g. 512 of them; see
/// [`crate::calibrate`]). The config's decay is recorded as `calibrated`.
///
/// # Errors
/// As [`convert`], or if `calibration` is not longer than the window plus one.
pub fn convert_calibrated<B: Backend>(
    teacher: &Path,
    dijiang: DiJiangConfig,
    calibration: &[u32],
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    let window = dijiang.window;
    let log_decay = {
        let softmax = load::<B>(teacher, device)?.model;
        let ids: Vec<i64> = calibration.iter().map(|&i| i64::from(i)).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, calibration.len()]), device);
        calibrated_log_decay(&softmax, tokens, window)?
    };
    let mut student = build_student(teacher, DiJiangConfig { decay: DecayKind::Calibrated, ..dijiang }, device)?;
    set_log_decay(&mut student.model, &log_decay)?;
    Ok(student)
}

fn build_student<B: Backend>(
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
