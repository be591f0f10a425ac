//! Held-out evaluation of the student against the teacher: perplexities, the KL between them, and
//! per layer how far the student's attention is from the teacher's (output error on the teacher's
//! layer inputs, total-variation distance of the attention rows). Without the teacher
//! (`eval.teacher = "start"` after step 0), the student's perplexity beside the teacher's kept one.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use dijiang_data::dataset::{LmBatch, LmBatcher, Windows};
use dijiang_model::Transformer;
use dijiang_model::fidelity::measure;
use dijiang_model::reduce;
use serde::Serialize;

use crate::losses::{cross_entropy, kl_divergence};

/// Held-out numbers of the student (and the teacher, for reference).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub perplexity: f64,
    pub teacher_loss: f64,
    pub teacher_perplexity: f64,
    /// KL(teacher || student) per token at temperature 1 (`None`: evaluated without the teacher).
    pub kl: Option<f64>,
    /// Per layer: `||student - teacher|| / ||teacher||` of the attention output on the teacher's
    /// layer input (empty without the teacher).
    pub attention_error: Vec<f64>,
    /// Per layer: the mean total-variation distance between the teacher's softmax attention rows
    /// and the student's normalised rows (`dijiang fidelity`), on the first validation window
    /// (empty without the teacher).
    pub attention_tv: Vec<f64>,
    pub tokens: usize,
    /// Zero-shot metrics (`eval.tasks`) as `(zero_shot/TASK/METRIC, value)`, where they were
    /// evaluated (step 0 and the end of each stage).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zero_shot: Vec<(String, f64)>,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

impl Evaluation {
    pub fn attention_error_mean(&self) -> f64 {
        mean(&self.attention_error)
    }

    pub fn attention_tv_mean(&self) -> f64 {
        mean(&self.attention_tv)
    }

    /// The numbers as metric tags: `eval/NAME`, and per layer `eval/NAME/layer_NN`.
    pub fn tagged(&self) -> Vec<(String, f64)> {
        let mut values: Vec<(String, f64)> = [
            ("eval/loss", Some(self.loss)),
            ("eval/perplexity", Some(self.perplexity)),
            ("eval/teacher_perplexity", Some(self.teacher_perplexity)),
            ("eval/kl", self.kl),
            ("eval/attention_error", (!self.attention_error.is_empty()).then(|| self.attention_error_mean())),
            ("eval/attention_tv", (!self.attention_tv.is_empty()).then(|| self.attention_tv_mean())),
        ]
        .into_iter()
        .filter_map(|(tag, v)| Some((tag.to_string(), v?)))
        .collect();
        for (name, per_layer) in [("attention_error", &self.attention_error), ("attention_tv", &self.attention_tv)] {
            values.extend(per_layer.iter().enumerate().map(|(i, v)| (format!("eval/{name}/layer_{i:02}"), *v)));
        }
        values.extend(self.zero_shot.iter().map(|(tag, v)| (format!("eval/{tag}"), *v)));
        values
    }
}

fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_scalar().elem::<f64>()
}

/// The teacher of an evaluation: the model itself, or the loss it had on the same windows.
#[derive(Clone, Copy)]
pub enum TeacherSide<'a, B: Backend> {
    Model(&'a Transformer<B>),
    /// Its loss, kept from an evaluation with the model (NaN if none was made).
    Kept(f64),
}

/// Evaluates on the first `batches` micro-batches of `micro` windows of `validation`.
pub fn evaluate<B: Backend>(
    student: &Transformer<B>,
    teacher: TeacherSide<'_, B>,
    validation: &Windows,
    batches: usize,
    micro: usize,
    device: &B::Device,
) -> Evaluation {
    let n = validation.len().min(batches.max(1) * micro);
    let layers = student.layers.len();
    let (mut loss, mut teacher_loss, mut kl) = (0.0, 0.0, 0.0);
    let (mut err2, mut norm2) = (vec![0.0; layers], vec![0.0; layers]);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(micro) {
        let windows: Vec<Vec<u32>> = chunk.iter().map(|&i| validation.get(i).expect("in range")).collect();
        let batch: LmBatch<B> = LmBatcher.batch(windows, device);
        let w = chunk.len() as f64 / n as f64;
        let logits = student.forward(batch.inputs.clone());
        loss += w * scalar(cross_entropy(logits.clone(), batch.targets.clone()));
        let TeacherSide::Model(teacher) = teacher else { continue };
        let trace = teacher.trace(batch.inputs.clone(), None, true);
        let teacher_logits = trace.logits.expect("traced with logits");
        teacher_loss += w * scalar(cross_entropy(teacher_logits.clone(), batch.targets.clone()));
        kl += w * scalar(kl_divergence(teacher_logits, logits, 1.0));
        for i in 0..layers {
            let out = student.layer_attention(i, trace.layers[i].input.clone());
            let target = trace.layers[i].attention.clone();
            err2[i] += scalar(reduce::sum((out - target.clone()).square()));
            norm2[i] += scalar(reduce::sum(target.square()));
        }
    }
    let tokens = n * validation.block();
    let teacher = match teacher {
        TeacherSide::Model(teacher) => teacher,
        TeacherSide::Kept(teacher_loss) => {
            return Evaluation {
                loss,
                perplexity: loss.exp(),
                teacher_loss,
                teacher_perplexity: teacher_loss.exp(),
                kl: None,
                attention_error: Vec::new(),
                attention_tv: Vec::new(),
                tokens,
                zero_shot: Vec::new(),
            };
        }
    };
    let first: LmBatch<B> = LmBatcher.batch(vec![validation.get(0).expect("a validation window")], device);
    let all: Vec<usize> = (0..layers).collect();
    let attention_tv = measure(teacher, student, first.inputs, &all).into_iter().map(|f| f.tv_mean).collect();
    Evaluation {
        attention_tv,
        loss,
        perplexity: loss.exp(),
        teacher_loss,
        teacher_perplexity: teacher_loss.exp(),
        kl: Some(kl),
        attention_error: err2.iter().zip(&norm2).map(|(e, t)| (e / t.max(f64::MIN_POSITIVE)).sqrt()).collect(),
        tokens,
        zero_shot: Vec::new(),
    }
}
