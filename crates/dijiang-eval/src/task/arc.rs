//! ARC-Easy and ARC-Challenge (lm-eval `arc_easy.yaml`): `"Question: {question}\nAnswer:"`,
//! choices `choices.text`, gold `choices.label.index(answerKey)`.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
pub(super) struct Choices {
    pub text: Vec<String>,
    pub label: Vec<String>,
}

impl Choices {
    /// `label.index(key)`.
    pub fn index_of(&self, key: &str) -> Result<usize, String> {
        self.label
            .iter()
            .position(|l| l == key)
            .ok_or_else(|| format!("answer key `{key}` is not among the labels {:?}", self.label))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    question: String,
    choices: Choices,
    answer_key: String,
}

fn doc(r: Row) -> Result<Doc, String> {
    let gold = r.choices.index_of(&r.answer_key)?;
    Doc::multiple_choice(&format!("Question: {}\nAnswer:", r.question), r.choices.text, gold)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
