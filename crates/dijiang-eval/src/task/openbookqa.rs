//! OpenBookQA (lm-eval `openbookqa.yaml`): the context is `question_stem` alone, choices
//! `choices.text`, gold `choices.label.index(answerKey.lstrip())`.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use super::arc::Choices;
use super::python::lstrip;
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    question_stem: String,
    choices: Choices,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

fn doc(r: Row) -> Result<Doc, String> {
    let gold = r.choices.index_of(lstrip(&r.answer_key))?;
    Doc::multiple_choice(&r.question_stem, r.choices.text, gold)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
