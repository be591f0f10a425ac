//! Conversion: a DiJiang student from a softmax teacher. Every teacher weight is copied; only the
//! attention kernels' new parameters (`layers.*.attn.kernel.*`) are initialised, seeded by the
//! DiJiang config's seed; anything else missing or left over is an error. With
//! `decay = "calibrated"` (and for the hybrid `linear_weight = "calibrated"`) those values are then
//! set from the teacher's attention on a calibration text ([`convert_calibrated`], see
//! [`crate::calibrate`]).

use std::path::Path;

use burn::prelude::*;

use crate::calibrate::{set_log_decay, set_log_linear_weight, teacher_attention};
use crate::config::{AttentionKernelConfig, DecayKind, DiJiangConfig, LinearWeight};
use crate::error::ModelError;
use crate::import::{Checkpoint, LoadedModel, load};

/// Whether a parameter belongs to an attention kernel (new when converting).
pub fn is_kernel_param(name: &str) -> bool {
    name.contains(".attn.kernel.")
}

/// Builds the DiJiang student of the softmax model at `teacher`.
///
/// # Errors
/// If the teacher cannot be read or is not a softmax model, or the config asks for calibrated
/// values (which need a calibration text: [`convert_calibrated`]).
pub fn convert<B: Backend>(
    teacher: &Path,
    dijiang: DiJiangConfig,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    if is_calibrated(&dijiang) {
        return Err(ModelError::Config(
            "decay = calibrated and linear_weight = calibrated need calibration tokens: convert_calibrated \
             (`dijiang convert --calibrate FILE`)"
                .into(),
        ));
    }
    build_student(teacher, dijiang, device)
}

/// Whether the config asks for values calibrated on the teacher.
pub fn is_calibrated(dijiang: &DiJiangConfig) -> bool {
    dijiang.decay == DecayKind::Calibrated || dijiang.linear_weight == LinearWeight::Calibrated
}

/// Builds the DiJiang student of the softmax model at `teacher`, setting what the config marks
/// `calibrated` (each head's decay; the hybrid's linear-part weights, after the decays) from the
/// teacher's attention to `calibration` (token ids of real text, e.g. 512; see
/// [`crate::calibrate`]).
///
/// # Errors
/// As [`convert`] (except that calibrated values are what it is for), if nothing is to be
/// calibrated, or if `calibration` is not longer than the window plus one.
pub fn convert_calibrated<B: Backend>(
    teacher: &Path,
    dijiang: DiJiangConfig,
    calibration: &[u32],
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    if !is_calibrated(&dijiang) {
        return Err(ModelError::Config("nothing to calibrate: set decay or linear_weight to calibrated".into()));
    }
    let attention = {
        let softmax = load::<B>(teacher, device)?.model;
        let ids: Vec<i64> = calibration.iter().map(|&i| i64::from(i)).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, calibration.len()]), device);
        teacher_attention(&softmax, tokens, dijiang.window)?
    };
    let mut student = build_student(teacher, dijiang.clone(), device)?;
    if dijiang.decay == DecayKind::Calibrated {
        set_log_decay(&mut student.model, &attention.log_decay())?;
    }
    if dijiang.linear_weight == LinearWeight::Calibrated {
        let weights = attention.log_linear_weight(&student.model);
        set_log_linear_weight(&mut student.model, &weights)?;
    }
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
