//! LAMBADA, OpenAI's detokenised test set (lm-eval `lambada_openai.yaml`): the context is the
//! text up to its last space (`text.split(' ')[:-1]` joined), the continuation `" " + last word`.

use std::path::Path;

use serde::Deserialize;

use super::{Doc, Request, Scoring};
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    text: String,
}

fn doc(r: Row) -> Result<Doc, String> {
    // Python's split(' ') splits at single spaces only; without a space the context is empty.
    let (context, last) = r.text.rsplit_once(' ').unwrap_or(("", &r.text));
    Ok(Doc {
        requests: vec![Request::new(context, format!(" {last}"))],
        scoring: Scoring::Loglikelihood,
        subject: None,
    })
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
