//! WinoGrande (lm-eval `winogrande/default.yaml`, `preprocess_winogrande.py`): partial evaluation.
//! The sentence is cut at its blank `_`: each option completes the part before it as a context,
//! and the part after it (stripped) is the one continuation scored after each; gold is
//! `answer - 1`. The choices (for lengths) are the contexts.

use std::path::Path;

use serde::Deserialize;

use super::python::strip;
use super::{Doc, Request, Scoring};
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    sentence: String,
    option1: String,
    option2: String,
    answer: String,
}

fn doc(r: Row) -> Result<Doc, String> {
    let blank = r.sentence.find('_').ok_or("the sentence has no blank `_`")?;
    let target = strip(&r.sentence[blank + 1..]);
    let gold = match r.answer.as_str() {
        "1" => 0,
        "2" => 1,
        other => return Err(format!("answer `{other}` is neither \"1\" nor \"2\"")),
    };
    let contexts: Vec<String> =
        [&r.option1, &r.option2].iter().map(|o| format!("{}{o}", &r.sentence[..blank])).collect();
    let requests = contexts.iter().map(|c| Request::new(c.as_str(), format!(" {target}"))).collect();
    Ok(Doc { requests, scoring: Scoring::MultipleChoice { gold, choices: contexts }, subject: None })
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, doc)
}
