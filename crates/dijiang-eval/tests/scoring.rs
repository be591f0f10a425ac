//! Scoring: the shared-context path (a context computed once, its KV cache or recurrent state
//! repeated for each continuation) equals lm-eval's one-forward-per-request computation to 1e-4,
//! for softmax and DiJiang models, on synthetic token ids (grouped-query fixture) and on real task
//! documents with a real model (stories260K); an interrupted evaluation resumes to the same result.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{evaldata, fixture, shared};

use std::path::{Path, PathBuf};

use dijiang_eval::encode::Encoder;
use dijiang_eval::evaluate::load_docs;
use dijiang_eval::{EvalOptions, LogLikelihood, Scorer, Task, TaskResult, Unit, evaluate_task};
use dijiang_model::config::AttentionKernelConfig;
use dijiang_model::cpu::Cpu;
use dijiang_model::import::Checkpoint;
use dijiang_model::tokenizer::Tokenizer;
use dijiang_model::{DiJiangConfig, Transformer};

type B = Cpu;

/// A model from `path`, as it is or converted to DiJiang (chunks of 16 tokens, so that contexts
/// span several chunks and continuations start mid-chunk).
fn model(path: &Path, dijiang: bool) -> Transformer<B> {
    let checkpoint = Checkpoint::open(path).unwrap();
    let mut config = checkpoint.config.clone();
    if dijiang {
        config.attention = AttentionKernelConfig::Dijiang(DiJiangConfig { chunk_len: 16, ..Default::default() });
    }
    let is_new = |n: &str| dijiang && n.contains(".attn.kernel.");
    checkpoint.build(&config, &is_new, 7, &Default::default()).unwrap().model
}

fn assert_close(shared: &[LogLikelihood], plain: &[LogLikelihood], what: &str) {
    assert_eq!(shared.len(), plain.len(), "{what}");
    for (s, p) in shared.iter().zip(plain) {
        assert!((s.logprob - p.logprob).abs() < 1e-4, "{what}: shared {s:?}, plain {p:?}");
        assert_eq!(s.greedy, p.greedy, "{what}: shared {s:?}, plain {p:?}");
    }
}

/// Token ids that are not all alike: `n` ids from a seed.
fn ids(seed: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((seed * 7919 + i * 104_729 + i * i * 31) % vocab) as u32).collect()
}

#[test]
fn shared_context_equals_plain_on_grouped_query_heads() {
    for dijiang in [false, true] {
        let model = model(&fixture("llama-gqa-tiny"), dijiang);
        let vocab = model.config().vocab_size;
        let scorer = Scorer::new(&model);
        // Contexts of one length per batch; continuations of 1 to 19 tokens, 1 to 4 per context.
        for lc in [1, 7, 20] {
            let units: Vec<Unit> = (0..3)
                .map(|u| Unit {
                    context: ids(u + lc, lc, vocab),
                    continuations: (0..=u).map(|c| ids(100 + 10 * u + c, 1 + 6 * c, vocab)).collect(),
                })
                .collect();
            // And one unit whose 12 continuations (2 to 57 tokens) run in several groups.
            let mut units = units;
            units.push(Unit {
                context: ids(9 + lc, lc, vocab),
                continuations: (0..12).map(|c| ids(200 + c, 2 + 5 * c, vocab)).collect(),
            });
            let shared = scorer.score_shared(&units.iter().collect::<Vec<_>>());
            for (unit, got) in units.iter().zip(&shared) {
                let plain: Vec<_> = unit.continuations.iter().map(|c| scorer.score_plain(&unit.context, c)).collect();
                assert_close(got, &plain, &format!("dijiang {dijiang}, context {lc}"));
            }
        }
    }
}

#[test]
fn requests_longer_than_the_model_are_truncated_on_the_left() {
    let model = model(&fixture("llama-gqa-tiny"), false);
    let (vocab, max) = (model.config().vocab_size, model.config().max_seq_len);
    let scorer = Scorer::new(&model);
    let unit = Unit { context: ids(3, max + 44, vocab), continuations: vec![ids(4, 5, vocab)] };
    assert!(!scorer.fits(&unit));
    // lm-eval feeds (context + continuation)[-(max + 1):][:-1]: the first 48 context tokens go.
    let whole = scorer.score_plain(&unit.context, &unit.continuations[0]);
    let cut = scorer.score_plain(&unit.context[48..], &unit.continuations[0]);
    assert_eq!(whole, cut);
    let uncut = scorer.score_plain(&unit.context[47..], &unit.continuations[0]);
    assert_eq!(whole, uncut, "a request one token longer loses one token more");
}

/// The task's documents' per-request scores from the evaluation's records, in document order.
fn recorded(dir: &Path, task: Task) -> Vec<Vec<LogLikelihood>> {
    let text = std::fs::read_to_string(dir.join(format!("{}.jsonl", task.name()))).unwrap();
    let mut docs: Vec<(usize, Vec<LogLikelihood>)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["doc"].as_u64().unwrap() as usize, serde_json::from_value(v["scores"].clone()).unwrap())
        })
        .collect();
    docs.sort_by_key(|(d, _)| *d);
    docs.into_iter().map(|(_, s)| s).collect()
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dijiang-eval-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Every request of the first documents of `task`, scored by the evaluation (shared contexts)
/// and one by one as lm-eval does.
fn check_task(model: &Transformer<B>, tokenizer: &Tokenizer, task: Task, options: &EvalOptions) -> TaskResult {
    let result = evaluate_task(model, tokenizer, task, options, &mut |_| {}).unwrap();
    let scores = recorded(options.records_dir.as_ref().unwrap(), task);
    let (encoder, scorer) = (Encoder::new(tokenizer, options.bos), Scorer::new(model));
    for (d, (doc, got)) in load_docs(task, options).unwrap().iter().zip(&scores).enumerate() {
        let plain: Vec<_> = doc
            .requests
            .iter()
            .map(|r| {
                let pair = encoder.encode_pair(&r.context, &r.continuation).unwrap();
                scorer.score_plain(&pair.context, &pair.continuation)
            })
            .collect();
        assert_close(got, &plain, &format!("{} document {d}", task.name()));
    }
    result
}

#[test]
fn stories260k_tasks_agree_on_both_paths_and_resume() {
    let (Some(data), Some(bin)) = (evaldata(), shared("models/stories260K/stories260K.bin")) else { return };
    let tokenizer = Tokenizer::for_model(&bin).unwrap();
    for dijiang in [false, true] {
        let model = model(&bin, dijiang);
        let dir = temp(if dijiang { "dijiang" } else { "softmax" });
        let options = EvalOptions {
            limit: Some(4),
            records_dir: Some(dir.clone()),
            model_id: format!("stories260K dijiang={dijiang}"),
            ..EvalOptions::new(&data)
        };
        // Short texts: stories260K's tokenizer makes almost a token per character. One context
        // with several continuations (ARC, COPA) and one continuation after several contexts
        // (WinoGrande).
        for task in [Task::ArcEasy, Task::Copa, Task::Winogrande] {
            let first = check_task(&model, &tokenizer, task, &options);
            assert_eq!((first.items, first.resumed), (4, 0));
            // Interrupted after two documents, the last line cut short: a rerun scores the rest.
            let file = dir.join(format!("{}.jsonl", task.name()));
            let text = std::fs::read_to_string(&file).unwrap();
            let kept: Vec<&str> = text.lines().take(3).collect();
            std::fs::write(&file, format!("{}\n{{\"doc\": 3, \"sco", kept.join("\n"))).unwrap();
            let again = evaluate_task(&model, &tokenizer, task, &options, &mut |_| {}).unwrap();
            assert_eq!((again.items, again.resumed), (4, 2));
            for (a, b) in again.metrics.iter().zip(&first.metrics) {
                assert_eq!(a.metric, b.metric);
                assert!((a.value - b.value).abs() < 1e-9, "{}: {a:?} after resuming, {b:?} before", task.name());
            }
            assert_eq!(recorded(&dir, task).len(), 4);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn limit_applies_per_mmlu_subject() {
    let Some(data) = evaldata() else { return };
    let options = EvalOptions { limit: Some(2), ..EvalOptions::new(&data) };
    let docs = load_docs(Task::Mmlu, &options).unwrap();
    assert_eq!(docs.len(), 2 * 57);
    assert_eq!(docs[2].subject.as_deref(), Some("anatomy"));
    assert_eq!(load_docs(Task::LambadaOpenai, &options).unwrap().len(), 2);
}
