//! [`evaluate_tasks`]: load each task's documents, build and encode their requests as lm-eval
//! does, score them in batches (resuming from the task's records where they exist) and aggregate
//! lm-eval's metrics. This is the library entry point for the CLI and the trainer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use dijiang_model::Transformer;
use dijiang_model::tokenizer::Tokenizer;

use crate::batch::{Batch, BatchLimits, Work, encode_docs, plan};
use crate::encode::{BosPolicy, Encoder};
use crate::error::EvalError;
use crate::loglikelihood::{LogLikelihood, Scorer};
use crate::records::{Header, Records, Scored};
use crate::results::{TaskResult, aggregate};
use crate::task::{Doc, Task};

/// lm-eval's default number of bootstrap resamples (`--bootstrap_iters`).
pub const BOOTSTRAP_ITERS: usize = 100_000;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The JSON Lines splits (`just evaldata` writes them to `datasets/evals`).
    pub data_dir: PathBuf,
    /// Only the first N documents of each task (MMLU: of each subject, as lm-eval's `--limit`
    /// applies to each subject's task).
    pub limit: Option<usize>,
    pub batch: BatchLimits,
    pub bos: BosPolicy,
    /// Where each task's per-document records go (`DIR/TASK.jsonl`); existing records are
    /// resumed. `None`: kept in memory only.
    pub records_dir: Option<PathBuf>,
    /// Names the model in the records, so that another model's records are not resumed.
    pub model_id: String,
    /// Resamples for bootstrapped standard errors (LAMBADA's perplexity); 0: none.
    pub bootstrap_iters: usize,
}

impl EvalOptions {
    /// lm-eval's defaults on the data in `data_dir`, nothing written.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limit: None,
            batch: BatchLimits::default(),
            bos: BosPolicy::default(),
            records_dir: None,
            model_id: String::new(),
            bootstrap_iters: BOOTSTRAP_ITERS,
        }
    }
}

/// Where a task's evaluation stands (documents, including resumed ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub task: Task,
    pub done: usize,
    pub total: usize,
    /// Documents taken from earlier records (not scored in this run).
    pub resumed: usize,
}

/// Evaluates `model` on each task in turn, calling `on_progress` after every batch.
pub fn evaluate_tasks<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    tasks: &[Task],
    options: &EvalOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<TaskResult>, EvalError> {
    tasks.iter().map(|&task| evaluate_task(model, tokenizer, task, options, on_progress)).collect()
}

/// The task's documents, cut to `limit` (per subject for MMLU).
pub fn load_docs(task: Task, options: &EvalOptions) -> Result<Vec<Doc>, EvalError> {
    let docs = task.load(&options.data_dir)?;
    let Some(limit) = options.limit else { return Ok(docs) };
    let mut taken: BTreeMap<Option<String>, usize> = BTreeMap::new();
    Ok(docs
        .into_iter()
        .filter(|d| {
            let n = taken.entry(d.subject.clone()).or_default();
            *n += 1;
            *n <= limit
        })
        .collect())
}

/// Evaluates `model` on one task.
pub fn evaluate_task<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    task: Task,
    options: &EvalOptions,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<TaskResult, EvalError> {
    let start = Instant::now();
    let docs = load_docs(task, options)?;
    let mut records = open_records(task, tokenizer, options)?;
    let mut scores: BTreeMap<usize, Scored> = records
        .as_ref()
        .map(|r| r.done.range(..docs.len()).map(|(&d, s)| (d, s.clone())).collect())
        .unwrap_or_default();
    let resumed = scores.len();
    let pending: Vec<usize> = (0..docs.len()).filter(|d| !scores.contains_key(d)).collect();
    let work = encode_docs(task, &Encoder::new(tokenizer, options.bos), &docs, &pending)?;

    let mut progress = Progress { task, done: resumed, total: docs.len(), resumed };
    on_progress(&progress);
    let mut run = Run::new(&docs, &work);
    let scorer = Scorer::new(model);
    // Wall time not yet attributed to a finished document (loading and encoding count too).
    let mut unattributed = start.elapsed().as_secs_f64();
    for batch in plan(&work.units, |u| scorer.fits(u), options.batch) {
        let batch_start = Instant::now();
        let finished = run.score(&scorer, &batch);
        unattributed += batch_start.elapsed().as_secs_f64();
        if finished.is_empty() {
            continue;
        }
        let share = std::mem::take(&mut unattributed) / finished.len() as f64;
        let finished: Vec<(usize, Scored)> =
            finished.into_iter().map(|(d, scores)| (d, Scored { scores, seconds: share })).collect();
        progress.done += finished.len();
        if let Some(records) = records.as_mut() {
            records.append(finished.clone())?;
        }
        scores.extend(finished);
        on_progress(&progress);
    }

    let seconds = scores.values().map(|s| s.seconds).sum::<f64>();
    let ordered: Vec<Vec<LogLikelihood>> =
        (0..docs.len()).map(|d| scores.remove(&d).expect("every document scored").scores).collect();
    let (metrics, subjects) = aggregate(task, &docs, &ordered, options.bootstrap_iters);
    Ok(TaskResult {
        task,
        metrics,
        items: docs.len(),
        resumed,
        requests: docs.iter().map(|d| d.requests.len()).sum(),
        tokens: run.tokens,
        seconds: seconds + unattributed,
        run_seconds: start.elapsed().as_secs_f64(),
        subjects,
    })
}

/// The task's records in `options.records_dir`, if any.
fn open_records(task: Task, tokenizer: &Tokenizer, options: &EvalOptions) -> Result<Option<Records>, EvalError> {
    let Some(dir) = &options.records_dir else { return Ok(None) };
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let header = Header::new(task, &options.model_id, &tokenizer.fingerprint(), options.bos);
    Ok(Some(Records::open(&dir.join(format!("{}.jsonl", task.name())), &header)?))
}

/// The documents being scored: their requests' scores so far, until each is complete.
struct Run<'a> {
    work: &'a Work,
    partial: BTreeMap<usize, Vec<Option<LogLikelihood>>>,
    /// Tokens read by the model so far.
    tokens: usize,
}

impl<'a> Run<'a> {
    fn new(docs: &[Doc], work: &'a Work) -> Self {
        let partial = work.owners.iter().map(|(d, _)| (*d, vec![None; docs[*d].requests.len()])).collect();
        Self { work, partial, tokens: 0 }
    }

    /// Scores one batch; returns the documents it completed.
    fn score<B: Backend>(&mut self, scorer: &Scorer<B>, batch: &Batch) -> Vec<(usize, Vec<LogLikelihood>)> {
        let units = &self.work.units;
        let (indices, results) = match batch {
            Batch::Shared(indices) => {
                let batch_units: Vec<_> = indices.iter().map(|&i| &units[i]).collect();
                (indices.clone(), scorer.score_shared(&batch_units))
            }
            Batch::Plain(i) => {
                let unit = &units[*i];
                (vec![*i], vec![unit.continuations.iter().map(|c| scorer.score_plain(&unit.context, c)).collect()])
            }
        };
        let mut finished = Vec::new();
        for (i, unit_scores) in indices.into_iter().zip(results) {
            let unit = &units[i];
            self.tokens += unit.context.len() + unit.continuations.iter().map(|c| c.len() - 1).sum::<usize>();
            let (doc, requests) = &self.work.owners[i];
            let slots = self.partial.get_mut(doc).expect("a pending document");
            for (&r, s) in requests.iter().zip(unit_scores) {
                slots[r] = Some(s);
            }
            if slots.iter().all(Option::is_some) {
                let slots = self.partial.remove(doc).expect("a pending document");
                finished.push((*doc, slots.into_iter().map(|s| s.expect("complete")).collect()));
            }
        }
        finished
    }
}
