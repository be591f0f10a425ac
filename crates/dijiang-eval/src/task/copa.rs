//! COPA (lm-eval `super_glue/copa`, `utils.py`): the premise without its final period, then the
//! connector ("because" for a cause, "therefore" for an effect); each choice is
//! `" " + choice[0].lower() + choice[1:]` (so the continuation starts with two spaces after the
//! target delimiter), gold `label`.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use super::python::{lower_first, strip};
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    premise: String,
    choice1: String,
    choice2: String,
    question: String,
    label: usize,
}

fn doc(r: Row) -> Result<Doc, String> {
    let connector = match r.question.as_str() {
        "cause" => "because",
        "effect" => "therefore",
        other => return Err(format!("question `{other}` is neither \"cause\" nor \"effect\"")),
    };
    let premise = strip(&r.premise);
    // `premise[:-1]`: drop the last character (the period).
    let cut = premise.char_indices().last().map_or(0, |(i, _)| i);
    let context = format!("{} {connector}", &premise[..cut]);
    let choices = [&r.choice1, &r.choice2].iter().map(|c| format!(" {}", lower_first(c))).collect();
    Doc::multiple_choice(&context, choices, r.label)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
