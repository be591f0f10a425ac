//! SciQ (lm-eval `sciq.yaml`): `"{support.lstrip()}\nQuestion: {question}\nAnswer:"`, choices
//! `[distractor1, distractor2, distractor3, correct_answer]`, gold 3.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use super::python::lstrip;
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    question: String,
    distractor1: String,
    distractor2: String,
    distractor3: String,
    correct_answer: String,
    support: String,
}

fn doc(r: Row) -> Result<Doc, String> {
    let context = format!("{}\nQuestion: {}\nAnswer:", lstrip(&r.support), r.question);
    Doc::multiple_choice(&context, vec![r.distractor1, r.distractor2, r.distractor3, r.correct_answer], 3)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
