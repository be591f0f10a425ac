//! Which parameters a stage trains: the one rule the trainer applies, the plan counts with and the
//! benchmark uses. A parameter trains when the stage selects it ([`Trainable`]) and the model lets it
//! train at all ([`DiJiangConfig::is_trainable`]: frozen projections, fixed decays).

use dijiang_model::config::is_lora_param;
use dijiang_model::convert::is_kernel_param;
use dijiang_model::transformer::parameter_shapes;
use dijiang_model::{DiJiangConfig, ModelConfig};

use crate::experiment::{Experiment, TeacherEval, Trainable};

/// The parameter groups a stage can give their own learning rates (`lr_scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The attention kernels' new parameters (`layers.*.attn.kernel.*`).
    Kernel,
    /// LoRA adapters (`*.lora.a`, `*.lora.b`).
    Lora,
    /// Everything else: the teacher's weights.
    Base,
}

impl Group {
    pub fn of(name: &str) -> Self {
        if is_kernel_param(name) {
            Group::Kernel
        } else if is_lora_param(name) {
            Group::Lora
        } else {
            Group::Base
        }
    }
}

/// Whether a stage that trains `trainable` trains the parameter `name` of a student with kernel
/// options `student`.
pub fn trains(trainable: Trainable, student: &DiJiangConfig, name: &str) -> bool {
    student.is_trainable(name)
        && match trainable {
            Trainable::Kernel => is_kernel_param(name),
            Trainable::All => true,
            Trainable::Body => !is_vocabulary_param(name),
            Trainable::Lora => Group::of(name) != Group::Base,
        }
}

/// Whether `name` is the token embedding's or the output head's weight (what `Trainable::Body`
/// keeps frozen).
fn is_vocabulary_param(name: &str) -> bool {
    name.starts_with("embed.") || name.starts_with("lm_head.")
}

/// Whether `name` is one of the teacher's weights that no stage of `experiment` trains (it keeps
/// the checkpoint's value for the whole run: what `memory.frozen_dtype` stores in half
/// precision; the attention kernels' few frozen parameters stay f32).
pub fn frozen_for_run(experiment: &Experiment, name: &str) -> bool {
    Group::of(name) == Group::Base && experiment.stages.iter().all(|s| !trains(s.trainable, &experiment.student, name))
}

/// Whether a stage that trains `trainable` changes the base weights (those the student shares with
/// its teacher).
pub fn trains_base_weights(trainable: Trainable) -> bool {
    match trainable {
        Trainable::All | Trainable::Body => true,
        Trainable::Kernel | Trainable::Lora => false,
    }
}

/// How a run holds its teacher while it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeacherHeld {
    /// A view of the student's own weights ([`dijiang_model::Transformer::teacher_view`]): no
    /// stage trains the base weights, so they stay the teacher's for the whole run.
    View,
    /// A second copy of the weights, for the whole run.
    Copy,
    /// A second copy until the step-0 evaluation, then none: no stage's loss reads the teacher
    /// and evaluations compare with it only at the start (`eval.teacher = "start"`).
    AtStart,
}

/// How `experiment`'s run holds its teacher (the one rule the trainer and the memory model use).
pub fn teacher_held(experiment: &Experiment) -> TeacherHeld {
    if experiment.stages.iter().all(|s| !trains_base_weights(s.trainable)) {
        TeacherHeld::View
    } else if experiment.eval.teacher == TeacherEval::Start && experiment.stages.iter().all(|s| !s.loss.needs_teacher())
    {
        TeacherHeld::AtStart
    } else {
        TeacherHeld::Copy
    }
}

/// Whether the run's teacher is a view of the student's own weights rather than a second copy.
pub fn teacher_is_view(experiment: &Experiment) -> bool {
    teacher_held(experiment) == TeacherHeld::View
}

/// The student's parameter count and, per stage, how many of them train.
pub fn parameter_counts(experiment: &Experiment, teacher: &ModelConfig) -> (usize, Vec<usize>) {
    let shapes = parameter_shapes(&experiment.student_config(teacher));
    let numel = |shape: &Vec<usize>| shape.iter().product::<usize>();
    let total = shapes.iter().map(|(_, s)| numel(s)).sum();
    let per_stage = experiment
        .stages
        .iter()
        .map(|stage| {
            shapes
                .iter()
                .filter(|(name, _)| trains(stage.trainable, &experiment.student, name))
                .map(|(_, s)| numel(s))
                .sum()
        })
        .collect();
    (total, per_stage)
}

#[cfg(test)]
mod tests {
    use dijiang_model::config::Architecture;
    use dijiang_model::transformer::parameter_shapes;
    use dijiang_model::{AttentionKernelConfig, DiJiangConfig, ModelConfig};

    use super::*;

    /// `body` trains what `all` trains but the vocabulary's weights: the tied embedding (LLaMA
    /// tiny, as SmolLM2), or the embedding and the separate output head (GPT-NeoX).
    #[test]
    fn body_trains_all_but_the_embedding_and_the_output_head() {
        let student = DiJiangConfig::default();
        for (arch, vocabulary) in [
            (Architecture::Llama, vec!["embed.weight"]),
            (Architecture::GptNeox, vec!["embed.weight", "lm_head.weight"]),
        ] {
            let config = ModelConfig::tiny(arch).with_attention(AttentionKernelConfig::Dijiang(student.clone()));
            let names: Vec<String> = parameter_shapes(&config).into_iter().map(|(name, _)| name).collect();
            let frozen: Vec<&str> = names
                .iter()
                .filter(|name| trains(Trainable::All, &student, name) && !trains(Trainable::Body, &student, name))
                .map(String::as_str)
                .collect();
            assert_eq!(frozen, vocabulary, "{arch:?}");
            assert!(
                names
                    .iter()
                    .all(|name| !trains(Trainable::Body, &student, name) || trains(Trainable::All, &student, name))
            );
            assert!(trains_base_weights(Trainable::Body));
        }
    }
}
