//! HellaSwag (lm-eval `hellaswag.yaml` and `utils.py`): the query is
//! `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`, the choices are the
//! preprocessed endings, gold `int(label)`. `preprocess` strips, turns `" [title]"` into `". "`,
//! removes WikiHow's bracketed artifacts and halves double spaces.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use super::python::{capitalize, remove_bracketed, strip};
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    endings: Vec<String>,
    label: String,
}

/// lm-eval's `preprocess`.
fn preprocess(text: &str) -> String {
    let text = strip(text).replace(" [title]", ". ");
    remove_bracketed(&text).replace("  ", " ")
}

fn doc(r: Row) -> Result<Doc, String> {
    let ctx = format!("{} {}", r.ctx_a, capitalize(&r.ctx_b));
    let query = preprocess(&format!("{}: {ctx}", r.activity_label));
    let gold = r.label.parse().map_err(|_| format!("label `{}` is not an integer", r.label))?;
    Doc::multiple_choice(&query, r.endings.iter().map(|e| preprocess(e)).collect(), gold)
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
