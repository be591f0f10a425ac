//! Values of a converted student set from its softmax teacher's attention on a calibration text
//! (`convert::convert_calibrated`), so that the untrained student starts closer to the teacher:
//!
//! - [`decay`]: each head's decay from the teacher head's mean attention distance
//!   (`decay = "calibrated"`);
//! - [`window`]: each head's weight of the hybrid's linear part beside its window, the one whose
//!   attention output is closest to the teacher's (`linear_weight = "calibrated"`).
//!
//! Deterministic: the same teacher and tokens give the same values.

mod decay;
mod window;

pub use decay::{GAMMA_RANGE, decay_only_distance, gamma_for_distance, mean_distances};
pub use window::{LOG_WEIGHT_GRID, WindowParts, best_log_weight, output_errors};

use burn::prelude::*;

use dijiang_kernel::linear_attention::repeat_kv;

use crate::attention::{AttentionKernel, DiJiangKernel};
use crate::error::ModelError;
use crate::rope::Rope;
use crate::transformer::{Block, Transformer};

/// What calibration reads off a softmax teacher on the calibration tokens.
#[derive(Debug)]
pub struct TeacherAttention<B: Backend> {
    /// Each block's input, `[b, t, hidden]` (the student's layers are measured on these).
    pub layer_inputs: Vec<Tensor<B, 3>>,
    /// Each layer's attention output per head, before the output projection, `[b, h_q, t, d]`.
    pub outputs: Vec<Tensor<B, 4>>,
    /// Per layer and head: the mean attention distance beyond the window.
    pub distances: Vec<Vec<f64>>,
    pub tokens: usize,
    pub window: usize,
}

/// Reads the softmax `teacher`'s attention to `tokens` (`[b, t]`, real text), for a student with a
/// window of `window` keys (0: none).
///
/// # Errors
/// If the teacher is not a softmax model or `t <= window + 1`.
pub fn teacher_attention<B: Backend>(
    teacher: &Transformer<B>,
    tokens: Tensor<B, 2, Int>,
    window: usize,
) -> Result<TeacherAttention<B>, ModelError> {
    let [_, t] = tokens.dims();
    if t <= window + 1 {
        return Err(ModelError::Config(format!(
            "calibration needs more than window + 1 = {} tokens, got {t}",
            window + 1
        )));
    }
    if teacher.layers.iter().any(|l| !matches!(l.attn.kernel, AttentionKernel::Softmax(_))) {
        return Err(ModelError::Config("calibration needs a softmax teacher".into()));
    }
    let mut hidden = teacher.forward_with_hidden(tokens, true).hidden_states;
    hidden.truncate(teacher.layers.len()); // the blocks' inputs (the last state is the final norm's)
    let (mut outputs, mut distances) = (Vec::new(), Vec::new());
    for (block, x) in teacher.layers.iter().zip(&hidden) {
        let (rows, v) = rows_and_values(teacher, block, x.clone());
        distances.push(mean_distances(rows.clone(), window));
        outputs.push(rows.matmul(v));
    }
    Ok(TeacherAttention { layer_inputs: hidden, outputs, distances, tokens: t, window })
}

/// Block `block` of `model`: its attention rows `[b, h_q, t, t]` for its input `x` (`[b, t, hidden]`,
/// positions from 0) and its values repeated to the query heads `[b, h_q, t, d]`.
pub fn rows_and_values<B: Backend>(
    model: &Transformer<B>,
    block: &Block<B>,
    x: Tensor<B, 3>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [_, t, _] = x.dims();
    let config = model.config();
    let rope = Rope::new(config, 0, t, &x.device());
    let x = block.attn_norm.forward(x);
    let v = block.attn.heads(x.clone(), &rope).v;
    let groups = config.num_heads / config.num_kv_heads;
    (block.attn.rows(x, &rope), repeat_kv(v, groups))
}

impl<B: Backend> TeacherAttention<B> {
    /// Per layer, `ln(gamma)` per head: the decay-only rows as far back as the teacher's.
    pub fn log_decay(&self) -> Vec<Vec<f64>> {
        let gamma = |d: &f64| gamma_for_distance(*d, self.tokens, self.window).ln();
        self.distances.iter().map(|layer| layer.iter().map(gamma).collect()).collect()
    }

    /// Per layer, `ln beta` per head of the hybrid `student` (converted, at weight 1): the weight
    /// whose attention output on the teacher's layer inputs is closest to the teacher's.
    ///
    /// # Panics
    /// If the student's layers are not hybrid DiJiang layers of the teacher's shape.
    pub fn log_linear_weight(&self, student: &Transformer<B>) -> Vec<Vec<f64>> {
        let layers = student.layers.iter().zip(&self.layer_inputs).zip(&self.outputs);
        let per_layer = layers.map(|((block, x), target)| {
            let (rows, v) = rows_and_values(student, block, x.clone());
            best_log_weight(&WindowParts::new(rows, v, self.window), target.clone())
        });
        per_layer.collect()
    }
}

/// Sets every DiJiang layer's decays to `log_decay` (per layer, per query head).
///
/// # Errors
/// If a layer is not a DiJiang layer or the counts do not match the model's.
pub fn set_log_decay<B: Backend>(student: &mut Transformer<B>, log_decay: &[Vec<f64>]) -> Result<(), ModelError> {
    for_each_kernel(student, log_decay, |kernel, values| {
        kernel.set_log_decay(values);
        Ok(())
    })
}

/// Sets every hybrid layer's linear-part weights to `exp(log_weight)` (per layer, per query head).
///
/// # Errors
/// If a layer is not a hybrid DiJiang layer or the counts do not match the model's.
pub fn set_log_linear_weight<B: Backend>(
    student: &mut Transformer<B>,
    log_weight: &[Vec<f64>],
) -> Result<(), ModelError> {
    for_each_kernel(student, log_weight, |kernel, values| {
        if kernel.log_linear_weight.is_none() {
            return Err("has no window".into());
        }
        kernel.set_log_linear_weight(values);
        Ok(())
    })
}

/// Calls `set` with every DiJiang layer's kernel and its values (one per query head).
fn for_each_kernel<B: Backend>(
    student: &mut Transformer<B>,
    values: &[Vec<f64>],
    set: impl Fn(&mut DiJiangKernel<B>, Tensor<B, 1>) -> Result<(), String>,
) -> Result<(), ModelError> {
    if values.len() != student.layers.len() {
        return Err(ModelError::Config(format!(
            "{} layers of values for a model of {} layers",
            values.len(),
            student.layers.len()
        )));
    }
    let heads = student.config().num_heads;
    for (i, (layer, values)) in student.layers.iter_mut().zip(values).enumerate() {
        let AttentionKernel::DiJiang(kernel) = &mut layer.attn.kernel else {
            return Err(ModelError::Config(format!("layer {i} is not a DiJiang layer")));
        };
        if values.len() != heads {
            return Err(ModelError::Config(format!("layer {i}: {} values for {heads} heads", values.len())));
        }
        let device = kernel.proj.val().device();
        let values: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        set(kernel, Tensor::from_data(TensorData::new(values, [heads]), &device))
            .map_err(|e| ModelError::Config(format!("layer {i}: {e}")))?;
    }
    Ok(())
}
