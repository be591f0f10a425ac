//! PIQA (lm-eval `piqa.yaml`): `"Question: {goal}\nAnswer:"`, choices `[sol1, sol2]`, gold `label`.

use std::path::Path;

use serde::Deserialize;

use super::Doc;
use crate::data::read_rows;
use crate::error::EvalError;

#[derive(Deserialize)]
struct Row {
    goal: String,
    sol1: String,
    sol2: String,
    label: usize,
}

pub(super) fn load(path: &Path) -> Result<Vec<Doc>, EvalError> {
    read_rows(path, |r: Row| {
        Doc::multiple_choice(&format!("Question: {}\nAnswer:", r.goal), vec![r.sol1, r.sol2], r.label)
    })
}
