//! The eleven zero-shot tasks of the DiJiang paper's table, each building its requests exactly as
//! lm-evaluation-harness 0.4.13's task YAML (and its Python helpers) does: the template, the
//! target delimiter `" "`, the choices and the gold index.
//!
//! A document becomes one or more requests `(context, continuation)`; lm-eval scores each by the
//! continuation's log-likelihood given the context. Multiple choice puts the choices in the
//! continuations (one context); winogrande's "partial evaluation" puts them in the contexts
//! (one continuation); LAMBADA has one request per document.

mod arc;
mod boolq;
mod copa;
mod hellaswag;
mod lambada;
mod mmlu;
mod openbookqa;
mod piqa;
pub(crate) mod python;
mod sciq;
mod winogrande;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EvalError;
pub use mmlu::{MMLU_SUBJECTS, mmlu_category};

/// One log-likelihood request: score `continuation` after `context`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

impl Request {
    fn new(context: impl Into<String>, continuation: impl Into<String>) -> Self {
        Self { context: context.into(), continuation: continuation.into() }
    }
}

/// How a document's log-likelihoods become its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scoring {
    /// One request per choice; `choices` are lm-eval's choice strings (`doc_to_choice`), whose
    /// lengths in characters normalise `acc_norm`.
    MultipleChoice { gold: usize, choices: Vec<String> },
    /// One request (LAMBADA): its log-likelihood (perplexity) and whether every target token is
    /// the greedy one (acc).
    Loglikelihood,
}

/// One document of a task, as requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub requests: Vec<Request>,
    pub scoring: Scoring,
    /// MMLU's subject (lm-eval scores each subject as its own task).
    pub subject: Option<String>,
}

impl Doc {
    /// lm-eval's `multiple_choice` with one context: each choice continues it after the target
    /// delimiter `" "`.
    fn multiple_choice(context: &str, choices: Vec<String>, gold: usize) -> Result<Self, String> {
        if gold >= choices.len() {
            return Err(format!("gold index {gold} is out of range for {} choices", choices.len()));
        }
        let requests = choices.iter().map(|c| Request::new(context, format!(" {c}"))).collect();
        Ok(Self { requests, scoring: Scoring::MultipleChoice { gold, choices }, subject: None })
    }
}

/// A metric as lm-eval names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The choice with the highest log-likelihood is the gold one (LAMBADA: the target is greedy).
    Acc,
    /// The same with each log-likelihood divided by its choice's length in characters.
    AccNorm,
    /// LAMBADA: `exp(-mean log-likelihood of the target)`.
    Perplexity,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::Perplexity => "perplexity",
        }
    }
}

/// A zero-shot task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Piqa,
    Hellaswag,
    Winogrande,
    ArcEasy,
    ArcChallenge,
    Boolq,
    Openbookqa,
    Sciq,
    Copa,
    Mmlu,
    LambadaOpenai,
}

impl Task {
    /// In the order of the DiJiang paper's table.
    pub const ALL: [Task; 11] = [
        Task::Piqa,
        Task::Hellaswag,
        Task::Winogrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::Boolq,
        Task::Openbookqa,
        Task::Sciq,
        Task::Copa,
        Task::Mmlu,
        Task::LambadaOpenai,
    ];

    /// lm-eval's task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::Piqa => "piqa",
            Task::Hellaswag => "hellaswag",
            Task::Winogrande => "winogrande",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Boolq => "boolq",
            Task::Openbookqa => "openbookqa",
            Task::Sciq => "sciq",
            Task::Copa => "copa",
            Task::Mmlu => "mmlu",
            Task::LambadaOpenai => "lambada_openai",
        }
    }

    /// The task named `name` (lm-eval's name).
    pub fn from_name(name: &str) -> Result<Self, EvalError> {
        Self::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| EvalError::UnknownTask {
            name: name.to_string(),
            known: Self::ALL.map(Task::name).join(", "),
        })
    }

    /// A comma-separated list of task names, or `all`.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, EvalError> {
        if list.trim() == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut tasks = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let task = Self::from_name(name)?;
            if !tasks.contains(&task) {
                tasks.push(task);
            }
        }
        Ok(tasks)
    }

    /// The split lm-eval evaluates, relative to the data directory (SciQ: its test split is not
    /// obtainable, the validation split stands in).
    pub fn data_file(self) -> &'static str {
        match self {
            Task::Piqa => "piqa/validation.jsonl",
            Task::Hellaswag => "hellaswag/validation.jsonl",
            Task::Winogrande => "winogrande/validation.jsonl",
            Task::ArcEasy => "arc_easy/test.jsonl",
            Task::ArcChallenge => "arc_challenge/test.jsonl",
            Task::Boolq => "boolq/validation.jsonl",
            Task::Openbookqa => "openbookqa/test.jsonl",
            Task::Sciq => "sciq/validation.jsonl",
            Task::Copa => "copa/validation.jsonl",
            Task::Mmlu => "mmlu/test.jsonl",
            Task::LambadaOpenai => "lambada_openai/test.jsonl",
        }
    }

    /// lm-eval 0.4.13's own requests for this task's documents (`../shared/evaldata`), relative to
    /// the data directory.
    pub fn requests_file(self) -> String {
        let name = if self == Task::Sciq { "sciq_val" } else { self.name() };
        format!("lm-eval-requests/{name}.jsonl.gz")
    }

    /// The metrics lm-eval reports for this task.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Task::Piqa | Task::Hellaswag | Task::ArcEasy | Task::ArcChallenge | Task::Openbookqa | Task::Sciq => {
                &[Metric::Acc, Metric::AccNorm]
            }
            Task::Winogrande | Task::Boolq | Task::Copa | Task::Mmlu => &[Metric::Acc],
            Task::LambadaOpenai => &[Metric::Perplexity, Metric::Acc],
        }
    }

    /// Every document of the task's split in `data_dir`, as requests.
    pub fn load(self, data_dir: &Path) -> Result<Vec<Doc>, EvalError> {
        let path = data_path(data_dir, self.data_file())?;
        match self {
            Task::Piqa => piqa::load(&path),
            Task::Hellaswag => hellaswag::load(&path),
            Task::Winogrande => winogrande::load(&path),
            Task::ArcEasy | Task::ArcChallenge => arc::load(&path),
            Task::Boolq => boolq::load(&path),
            Task::Openbookqa => openbookqa::load(&path),
            Task::Sciq => sciq::load(&path),
            Task::Copa => copa::load(&path),
            Task::Mmlu => mmlu::load(&path),
            Task::LambadaOpenai => lambada::load(&path),
        }
    }
}

/// `data_dir/rel`, or an error naming the recipe that fetches it.
pub fn data_path(data_dir: &Path, rel: &str) -> Result<PathBuf, EvalError> {
    if !data_dir.is_dir() {
        return Err(EvalError::MissingData { path: data_dir.to_path_buf() });
    }
    let path = data_dir.join(rel);
    if !path.is_file() {
        return Err(EvalError::MissingData { path });
    }
    Ok(path)
}
