//! Zero-shot accuracy during training (`eval.tasks`): the lm-eval tasks of `dijiang evaluate` on
//! the first `eval.task_limit` documents of each, at step 0 and at the end of each stage, logged as
//! `zero_shot/TASK/METRIC` beside the held-out perplexity.

use burn::prelude::*;
use dijiang_eval::{EvalOptions, Task, evaluate_tasks};
use dijiang_model::Transformer;
use dijiang_model::tokenizer::Tokenizer;

use crate::error::{Result, TrainError};
use crate::experiment::Experiment;

/// The tasks, their options and the tokenizer they are encoded with.
pub struct ZeroShot {
    tasks: Vec<Task>,
    options: EvalOptions,
    tokenizer: Tokenizer,
}

impl ZeroShot {
    /// `None` when the experiment names no task. The data of each task must be there (the plan
    /// checks it before training starts, naming `just evaldata`).
    pub fn new(experiment: &Experiment) -> Result<Option<Self>> {
        let eval = &experiment.eval;
        if eval.tasks.is_empty() {
            return Ok(None);
        }
        let tasks = Task::parse_list(&eval.tasks.join(",")).map_err(|e| TrainError::context("eval.tasks", e))?;
        let teacher = &experiment.teacher.path;
        let tokenizer = Tokenizer::for_model(teacher)
            .map_err(|e| TrainError::context(format!("the tokenizer of the teacher {}", teacher.display()), e))?;
        let mut options = EvalOptions::new(&eval.task_data);
        options.limit = (eval.task_limit > 0).then_some(eval.task_limit);
        // Perplexity's bootstrapped standard error is not logged; its resamples would cost seconds.
        options.bootstrap_iters = 0;
        Ok(Some(Self { tasks, options, tokenizer }))
    }

    /// Each task's metrics as `(zero_shot/TASK/METRIC, value)`.
    pub fn evaluate<B: Backend>(&self, model: &Transformer<B>) -> Result<Vec<(String, f64)>> {
        let results = evaluate_tasks(model, &self.tokenizer, &self.tasks, &self.options, &mut |_| {})
            .map_err(|e| TrainError::context("zero-shot evaluation", e))?;
        Ok(results
            .iter()
            .flat_map(|r| {
                r.metrics.iter().map(move |m| (format!("zero_shot/{}/{}", r.task.name(), m.metric.name()), m.value))
            })
            .collect())
    }
}

/// The tasks whose data is missing under `eval.task_data` (empty when all are there).
pub fn missing_data(experiment: &Experiment) -> Vec<String> {
    let eval = &experiment.eval;
    let Ok(tasks) = Task::parse_list(&eval.tasks.join(",")) else { return Vec::new() };
    tasks
        .into_iter()
        .filter(|t| dijiang_eval::task::data_path(&eval.task_data, t.data_file()).is_err())
        .map(|t| t.name().to_string())
        .collect()
}
