//! Zero-shot evaluation compatible with lm-evaluation-harness (lm-eval) 0.4.13: the DiJiang
//! paper's table (PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, BoolQ, OpenBookQA, SciQ,
//! COPA, MMLU, LAMBADA) computed the way lm-eval computes it, on the same data.
//!
//! - [`task`]: each task's requests from its JSON Lines split, as lm-eval's task YAMLs build them;
//! - [`data`]: the JSON Lines reader (errors name the file and line);
//! - [`encode`]: tokenisation as lm-eval's HF model does it;
//! - [`loglikelihood`]: continuation log-likelihoods, lm-eval's way ([`Scorer::score_plain`]) and
//!   batched with the context computed once ([`Scorer::score_shared`], KV cache or recurrent state);
//! - [`batch`]: grouping requests into units and batches;
//! - [`metrics`], [`results`]: acc, acc_norm, perplexity and lm-eval's standard errors;
//! - [`records`]: per-document results on disk, for resuming;
//! - [`evaluate`]: [`evaluate_tasks`], the entry point.
//!
//! The trainer or any caller: `evaluate_tasks(&model, &tokenizer, &[Task::Piqa, Task::ArcEasy],
//! &EvalOptions { limit: Some(200), ..EvalOptions::new("datasets/evals") }, &mut |_| {})` returns
//! one serialisable [`TaskResult`] per task.

pub mod batch;
pub mod data;
pub mod encode;
pub mod error;
pub mod evaluate;
pub mod loglikelihood;
pub mod metrics;
pub mod pyrandom;
pub mod records;
pub mod results;
pub mod task;

pub use batch::BatchLimits;
pub use encode::BosPolicy;
pub use error::EvalError;
pub use evaluate::{EvalOptions, Progress, evaluate_task, evaluate_tasks};
pub use loglikelihood::{LogLikelihood, Scorer, Unit};
pub use metrics::MetricValue;
pub use results::{SubjectResult, TaskResult};
pub use task::{Doc, Metric, Request, Scoring, Task};
