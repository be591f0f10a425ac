//! A task's result: its metrics (with lm-eval's standard errors) from the documents' scores, and
//! for MMLU the per-subject accuracies behind the group's.

use serde::{Deserialize, Serialize};

use crate::loglikelihood::LogLikelihood;
use crate::metrics::{
    MetricValue, bootstrap_stderr, mean, mean_stderr, multiple_choice, perplexity, pooled_sample_stderr,
};
use crate::task::{Doc, Metric, Scoring, Task, mmlu_category};

/// One task's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: Task,
    pub metrics: Vec<MetricValue>,
    /// Documents evaluated.
    pub items: usize,
    /// Of those, documents whose scores came from an earlier, interrupted run.
    pub resumed: usize,
    /// Log-likelihood requests (choices) of the documents.
    pub requests: usize,
    /// Tokens the model read in this run.
    pub tokens: usize,
    /// Wall time of the whole task, seconds (loading, encoding, scoring), resumed parts included.
    pub seconds: f64,
    /// Wall time of this run alone.
    pub run_seconds: f64,
    /// MMLU: each subject's accuracy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<SubjectResult>,
}

impl TaskResult {
    /// The value of `metric`, if the task reports it.
    pub fn metric(&self, metric: Metric) -> Option<&MetricValue> {
        self.metrics.iter().find(|m| m.metric == metric)
    }
}

/// One MMLU subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectResult {
    pub subject: String,
    pub category: String,
    pub acc: f64,
    pub acc_stderr: Option<f64>,
    pub items: usize,
}

/// Per-document values of one metric.
fn per_doc(task: Task, docs: &[Doc], scores: &[Vec<LogLikelihood>], metric: Metric) -> Vec<f64> {
    docs.iter()
        .zip(scores)
        .map(|(doc, s)| match (&doc.scoring, metric) {
            (Scoring::MultipleChoice { gold, choices }, Metric::Acc) => multiple_choice(s, choices, *gold).0,
            (Scoring::MultipleChoice { gold, choices }, Metric::AccNorm) => multiple_choice(s, choices, *gold).1,
            (Scoring::Loglikelihood, Metric::Acc) => f64::from(u8::from(s[0].greedy)),
            (Scoring::Loglikelihood, Metric::Perplexity) => s[0].logprob,
            (scoring, metric) => unreachable!("{} has no {metric:?} for {scoring:?}", task.name()),
        })
        .collect()
}

/// The task's metrics from every document's scores (in document order); `bootstrap_iters` as
/// lm-eval's (`0`: no bootstrapped standard errors).
pub fn aggregate(
    task: Task,
    docs: &[Doc],
    scores: &[Vec<LogLikelihood>],
    bootstrap_iters: usize,
) -> (Vec<MetricValue>, Vec<SubjectResult>) {
    if task == Task::Mmlu {
        return aggregate_mmlu(docs, scores);
    }
    let metrics = task
        .metrics()
        .iter()
        .map(|&metric| {
            let xs = per_doc(task, docs, scores, metric);
            match metric {
                Metric::Perplexity => MetricValue {
                    metric,
                    value: perplexity(&xs),
                    stderr: bootstrap_stderr(&xs, bootstrap_iters, perplexity),
                },
                Metric::Acc | Metric::AccNorm => MetricValue { metric, value: mean(&xs), stderr: mean_stderr(&xs) },
            }
        })
        .collect();
    (metrics, Vec::new())
}

/// MMLU: lm-eval scores each subject as a task and the group `mmlu` as their size-weighted mean
/// (the mean over all questions) with the pooled standard error.
fn aggregate_mmlu(docs: &[Doc], scores: &[Vec<LogLikelihood>]) -> (Vec<MetricValue>, Vec<SubjectResult>) {
    let acc = per_doc(Task::Mmlu, docs, scores, Metric::Acc);
    let mut subjects: Vec<(String, Vec<f64>)> = Vec::new();
    for (doc, x) in docs.iter().zip(acc) {
        let subject = doc.subject.clone().unwrap_or_default();
        match subjects.iter_mut().find(|(s, _)| *s == subject) {
            Some((_, xs)) => xs.push(x),
            None => subjects.push((subject, vec![x])),
        }
    }
    let subjects: Vec<SubjectResult> = subjects
        .into_iter()
        .map(|(subject, xs)| SubjectResult {
            category: mmlu_category(&subject).unwrap_or("").to_string(),
            acc: mean(&xs),
            acc_stderr: mean_stderr(&xs),
            items: xs.len(),
            subject,
        })
        .collect();
    let sizes: Vec<usize> = subjects.iter().map(|s| s.items).collect();
    let total: usize = sizes.iter().sum();
    let value = subjects.iter().map(|s| s.acc * s.items as f64).sum::<f64>() / total as f64;
    // lm-eval reports "N/A" when a subtask has no standard error.
    let stderrs: Option<Vec<f64>> = subjects.iter().map(|s| s.acc_stderr).collect();
    let stderr = stderrs.filter(|_| total > sizes.len()).map(|se| pooled_sample_stderr(&se, &sizes));
    (vec![MetricValue { metric: Metric::Acc, value, stderr }], subjects)
}
