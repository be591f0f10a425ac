//! BoolQ (lm-eval `super_glue/boolq/default.yaml`): `"{passage}\nQuestion: {question}?\nAnswer:"`,
//! choices `["no", "yes"]`, gold `label`.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    passage: String,
    question: String,
    label: usize,
}

fn doc(r: Row) -> Result<Doc, String> {
    let context = format!("{}\nQuestion: {}?\nAnswer:", r.passage, r.question);
    Doc::multiple_choice(&context, vec!["no".into(), "yes".into()], r.label)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
