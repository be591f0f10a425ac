//! Prompt construction: for every document of every task, the requests (context, continuation),
//! the gold index and the choices equal those lm-eval 0.4.13's own task code built from the same
//! rows (`../shared/evaldata/lm-eval-requests`). No model needed.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::path::Path;

use dijiang_eval::data::read_lines;
use dijiang_eval::{Doc, Scoring, Task};
use serde::Deserialize;

/// One line of lm-eval's dump.
#[derive(Deserialize)]
struct Dumped {
    doc_id: usize,
    requests: Vec<(String, String)>,
    gold: Option<usize>,
    choices: Option<Vec<String>>,
    subject: Option<String>,
}

/// The first document that differs from lm-eval's, described; `None` if all agree.
fn first_difference(task: Task, docs: &[Doc], dumped: &[Dumped]) -> Option<String> {
    if docs.len() != dumped.len() {
        return Some(format!("{} documents, lm-eval has {}", docs.len(), dumped.len()));
    }
    // lm-eval numbers documents per task; each MMLU subject is a task of its own.
    let mut per_subject = std::collections::HashMap::new();
    for (i, (doc, want)) in docs.iter().zip(dumped).enumerate() {
        let n = per_subject.entry(doc.subject.clone()).or_insert(0usize);
        let doc_id = *n;
        *n += 1;
        let requests: Vec<(String, String)> =
            doc.requests.iter().map(|r| (r.context.clone(), r.continuation.clone())).collect();
        let (gold, choices) = match &doc.scoring {
            Scoring::MultipleChoice { gold, choices } => (Some(*gold), Some(choices.clone())),
            Scoring::Loglikelihood => (None, None),
        };
        let subject = if task == Task::Mmlu { doc.subject.clone() } else { None };
        if want.doc_id != doc_id
            || requests != want.requests
            || gold != want.gold
            || choices != want.choices
            || subject != want.subject
        {
            return Some(format!(
                "document {i} (lm-eval's doc_id {}, ours {doc_id}):\n ours:   {requests:?} gold {gold:?} choices {choices:?} subject {subject:?}\n lm-eval: {:?} gold {:?} choices {:?} subject {:?}",
                want.doc_id, want.requests, want.gold, want.choices, want.subject
            ));
        }
    }
    None
}

fn check(task: Task, data: &Path) -> usize {
    let docs = task.load(data).unwrap();
    let dumped: Vec<Dumped> = read_lines(&data.join(task.requests_file()))
        .unwrap()
        .into_iter()
        .map(|(_, line)| serde_json::from_str(&line).unwrap())
        .collect();
    if let Some(diff) = first_difference(task, &docs, &dumped) {
        panic!("{}: {diff}", task.name());
    }
    docs.len()
}

#[test]
fn every_request_of_every_task_equals_lm_evals() {
    let Some(data) = support::evaldata() else { return };
    let counts: Vec<(&str, usize)> = Task::ALL.iter().map(|&t| (t.name(), check(t, &data))).collect();
    // The full splits (../shared/evaldata/README.md).
    let want = [
        ("piqa", 1838),
        ("hellaswag", 10042),
        ("winogrande", 1267),
        ("arc_easy", 2376),
        ("arc_challenge", 1172),
        ("boolq", 3270),
        ("openbookqa", 500),
        ("sciq", 1000),
        ("copa", 100),
        ("mmlu", 14042),
        ("lambada_openai", 5153),
    ];
    assert_eq!(counts, want);
}
