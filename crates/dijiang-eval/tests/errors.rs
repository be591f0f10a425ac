//! Bad input gets a clear error: unknown task names list the known ones, missing data names the
//! recipe that fetches it, a malformed row names its file and line, and records made with another
//! model are not resumed.

use std::path::{Path, PathBuf};

use dijiang_eval::encode::BosPolicy;
use dijiang_eval::records::{Header, Records, Scored};
use dijiang_eval::{LogLikelihood, Task};

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dijiang-eval-errors-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A data directory holding one task's file with the given lines.
fn data_with(tag: &str, task: Task, lines: &[&str]) -> PathBuf {
    let dir = temp(tag);
    let file = dir.join(task.data_file());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    dir
}

fn load_error(dir: &Path, task: Task) -> String {
    task.load(dir).expect_err("the data is malformed").to_string()
}

#[test]
fn unknown_task_names_list_the_known_ones() {
    let e = Task::parse_list("piqa, hellaswagg").unwrap_err().to_string();
    assert_eq!(
        e,
        "unknown task `hellaswagg`; known tasks: piqa, hellaswag, winogrande, arc_easy, arc_challenge, boolq, \
         openbookqa, sciq, copa, mmlu, lambada_openai"
    );
    assert_eq!(Task::parse_list("all").unwrap(), Task::ALL.to_vec());
    assert_eq!(Task::parse_list("copa,piqa,copa").unwrap(), vec![Task::Copa, Task::Piqa]);
}

#[test]
fn missing_data_names_the_recipe() {
    let e = Task::Piqa.load(Path::new("/nonexistent/evals")).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/evals is absent") && e.contains("`just evaldata`"), "{e}");
    let dir = temp("missing");
    let e = Task::Mmlu.load(&dir).unwrap_err().to_string();
    assert!(e.contains("mmlu/test.jsonl is absent") && e.contains("`just evaldata`"), "{e}");
}

#[test]
fn malformed_rows_name_the_file_and_line() {
    let good = r#"{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}"#;
    let cases: [(Task, &str, &str); 6] = [
        (Task::Piqa, r#"{"goal": "g", "sol1": "a", "label": 0}"#, "missing field `sol2`"),
        (
            Task::Piqa,
            r#"{"goal": "g", "sol1": "a", "sol2": "b", "label": 2}"#,
            "gold index 2 is out of range for 2 choices",
        ),
        (Task::Piqa, r#"{"goal": "g", "sol1": "#, "EOF while parsing"),
        (
            Task::Winogrande,
            r#"{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}"#,
            "no blank `_`",
        ),
        (
            Task::ArcEasy,
            r#"{"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"}"#,
            "answer key `E`",
        ),
        (
            Task::Copa,
            r#"{"premise": "p.", "choice1": "a", "choice2": "b", "question": "why", "idx": 0, "label": 0}"#,
            "question `why`",
        ),
    ];
    for (i, (task, bad, reason)) in cases.into_iter().enumerate() {
        // The bad row is line 3, after two rows (valid for PIQA; the others fail on line 1 if the
        // good row is not theirs, so they get the bad row alone).
        let lines: Vec<&str> = if task == Task::Piqa { vec![good, good, bad] } else { vec![bad] };
        let dir = data_with(&format!("row{i}"), task, &lines);
        let e = load_error(&dir, task);
        let line = lines.len();
        let want = format!("{}:{line}: ", dir.join(task.data_file()).display());
        assert!(e.starts_with(&want) && e.contains(reason), "{e}\nwanted {want}... {reason}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn records_of_another_model_are_not_resumed() {
    let dir = temp("records");
    let path = dir.join("piqa.jsonl");
    let header = Header::new(Task::Piqa, "model-a", "bpe-1", BosPolicy::Tokenizer);
    let mut records = Records::open(&path, &header).unwrap();
    let scores = vec![LogLikelihood { logprob: -1.5, greedy: true }, LogLikelihood { logprob: -2.0, greedy: false }];
    let scored = Scored { scores, seconds: 0.25 };
    records.append(vec![(7, scored.clone())]).unwrap();
    drop(records);
    assert_eq!(Records::open(&path, &header).unwrap().done.get(&7), Some(&scored));
    let other = Header::new(Task::Piqa, "model-b", "bpe-1", BosPolicy::Tokenizer);
    let e = Records::open(&path, &other).unwrap_err().to_string();
    assert!(e.contains("model-b") && e.contains("remove the file or choose another output directory"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
