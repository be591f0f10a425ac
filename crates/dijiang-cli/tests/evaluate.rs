//! `dijiang evaluate` end to end: the table and JSON on a real model (stories260K), and its
//! errors for unknown tasks and missing data.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{evaldata, shared};

use std::process::{Command, Output};

fn dijiang(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dijiang")).args(args).output().expect("run dijiang")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn evaluate_prints_the_table_and_writes_json() {
    let (Some(data), Some(model)) = (evaldata(), shared("models/stories260K/stories260K.bin")) else { return };
    let dir = std::env::temp_dir().join(format!("dijiang-cli-evaluate-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let (out_dir, json) = (dir.join("records"), dir.join("results.json"));
    let args = [
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--tasks",
        "copa,arc_easy",
        "--limit",
        "3",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    let out = dijiang(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("| task | metric | value | stderr | items | wall time |"), "{table}");
    assert!(table.contains("| copa | acc | ") && table.contains("|  | acc_norm | "), "{table}");
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = results["results"].as_array().unwrap();
    assert_eq!((results[0]["task"].as_str(), results[0]["items"].as_u64()), (Some("copa"), Some(3)));
    assert_eq!(results[1]["metrics"][1]["metric"], "acc_norm");
    // The same command again resumes every document from the records.
    let again = dijiang(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stderr(&again).contains("copa: 3 docs in") && stderr(&again).contains("3 resumed"), "{}", stderr(&again));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn evaluate_names_unknown_tasks_and_missing_data() {
    let out = dijiang(&["evaluate", "--model", "nowhere.gguf", "--tasks", "piqa,wino"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown task `wino`; known tasks: piqa, hellaswag, winogrande"), "{}", stderr(&out));
    let out = dijiang(&["evaluate", "--model", "nowhere.gguf", "--tasks", "piqa", "--data", "/nonexistent/evals"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/evals is absent. Run `just evaldata`"), "{}", stderr(&out));
}
