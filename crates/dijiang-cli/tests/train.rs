//! `dijiang train` end to end on the real stories260K (llama2.c) and TinyStories text from
//! ../shared: a two-stage run (attention transfer, then distillation with KL + LM and gradient
//! accumulation); exact resume after SIGKILL; a process killed while writing a checkpoint; the
//! TensorBoard event files read by TensorBoard itself; dry-run and bad-input errors.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::{repo, shared};

const STEPS: usize = 40;

fn dijiang() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dijiang"));
    command.env_remove("RUST_BACKTRACE").env("RUST_LOG", "info");
    command
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A scratch directory with the prepared data and the experiment file `t.toml`, made once.
fn setup() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let model = shared("models/stories260K/stories260K.bin")?;
        let corpus = shared("corpora/tinystories-fragment.txt")?;
        let dir = std::env::temp_dir().join(format!("dijiang-train-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("raw")).unwrap();
        std::fs::create_dir_all(dir.join("experiments")).unwrap();
        // One story per line; the first 8 stories keep the debug-build tokeniser quick.
        let stories: Vec<&str> = std::fs::read_to_string(&corpus).unwrap().leak().lines().take(8).collect();
        std::fs::write(dir.join("raw/stories.txt"), stories.join("\n\n")).unwrap();
        let out = dijiang()
            .args(["prepare", "--tokenizer", model.to_str().unwrap(), "--input"])
            .arg(dir.join("raw"))
            .arg("--out")
            .arg(dir.join("data"))
            .args(["--validation-fraction", "0.25", "--seed", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "prepare failed: {}", text(&out));
        let experiment = format!(
            r#"description = "test: stories260K, attention transfer then distillation"
seed = 3

[teacher]
path = "{model}"

[student]
feature_map = "reference"
sampling = {{ kind = "mc", seed = 0 }}
chunk_len = 16

[data]
path = "{data}"
block_size = 32
batch_size = 4
grad_accumulation = 2

[[stages]]
name = "transfer"
steps = 10
lr = 1e-3
warmup_steps = 2
trainable = "kernel"
loss = {{ attention = 1.0, attention_rows = 0.5 }}

[[stages]]
name = "distill"
steps = {distill}
lr = 3e-4
min_lr = 3e-5
warmup_steps = 3
trainable = "all"
loss = {{ kl = 1.0, lm = 0.5, temperature = 2.0 }}

[checkpoint]
every = 5
keep = 2

[eval]
every = 10
batches = 2
"#,
            model = model.display(),
            data = dir.join("data").display(),
            distill = STEPS - 10,
        );
        std::fs::write(dir.join("experiments/t.toml"), experiment).unwrap();
        Some(dir)
    })
    .as_deref()
}

/// `dijiang train experiment=t` with runs in `dir/runs`.
fn train(dir: &Path, runs: &str, extra: &[&str]) -> Command {
    let mut command = dijiang();
    command
        .arg("train")
        .arg("experiment=t")
        .args(extra)
        .arg("--experiments")
        .arg(dir.join("experiments"))
        .arg("--runs")
        .arg(dir.join(runs));
    command
}

fn run_ok(mut command: Command) -> String {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?} failed:\n{}", text(&out));
    text(&out)
}

type Metrics = BTreeMap<(usize, String), f64>;

/// The JSONL metrics of a run, keyed by (step, tag); asserts each appears once.
fn metrics(run: &Path) -> Metrics {
    let mut out = Metrics::new();
    let body = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (v["step"].as_u64().unwrap() as usize, v["tag"].as_str().unwrap().to_string());
        let value = v["value"].as_f64().unwrap();
        assert!(out.insert(key.clone(), value).is_none(), "{key:?} logged twice in {}", run.display());
    }
    out
}

/// The uninterrupted reference run, made once.
fn reference() -> Option<(&'static Path, &'static Metrics)> {
    static RUN: OnceLock<Option<Metrics>> = OnceLock::new();
    let dir = setup()?;
    let metrics = RUN
        .get_or_init(|| {
            let log = run_ok(train(dir, "runs-a", &[]));
            assert!(log.contains("model       "), "{log}");
            Some(metrics(&dir.join("runs-a/t")))
        })
        .as_ref()?;
    Some((dir, metrics))
}

/// Every training and evaluation value of `got` equals the reference's to 1e-6 (timings aside).
fn assert_same_run(got: &Metrics, want: &Metrics) {
    let compared: Vec<_> = want.keys().filter(|(_, tag)| tag != "train/tokens_per_s").collect();
    for key in &compared {
        let (a, b) = (got.get(*key).unwrap_or_else(|| panic!("{key:?} missing after resume")), want[*key]);
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{key:?}: resumed {a} vs uninterrupted {b}");
    }
    let losses = got.keys().filter(|(_, tag)| tag == "train/loss").count();
    assert_eq!(losses, STEPS, "one train/loss per step");
}

fn wait_for(path: &Path, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before {} appeared", path.display());
        }
        assert!(start.elapsed() < Duration::from_secs(600), "timed out waiting for {}", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn two_stage_run_trains_and_improves_the_student() {
    let Some((dir, m)) = reference() else { return };
    let run = dir.join("runs-a/t");
    // Every step logged loss, lr, gradient norm and throughput; the stages' own terms.
    for step in 1..=STEPS {
        for tag in ["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"] {
            assert!(m.contains_key(&(step, tag.into())), "step {step}: {tag}");
        }
        let (own, other) = if step <= 10 { ("train/attention", "train/kl") } else { ("train/kl", "train/attention") };
        assert!(m.contains_key(&(step, own.into())) && !m.contains_key(&(step, other.into())), "step {step}");
        assert_eq!(m.contains_key(&(step, "train/attention_rows".into())), step <= 10, "step {step}");
    }
    // Attention transfer lowers the attention error; distillation the KL and perplexity.
    let at = |step: usize, tag: &str| m[&(step, tag.to_string())];
    assert!(at(10, "eval/attention_error") < at(0, "eval/attention_error"), "attention transfer helped");
    assert!(at(10, "eval/attention_tv") < at(0, "eval/attention_tv"), "the rows moved towards the teacher's");
    assert!(at(STEPS, "eval/kl") < at(10, "eval/kl"), "distillation lowered the KL");
    assert!(at(STEPS, "eval/perplexity") < at(0, "eval/perplexity"), "the student recovered");
    assert_eq!(at(0, "eval/teacher_perplexity"), at(STEPS, "eval/teacher_perplexity"));
    // Warmup then cosine within each stage.
    assert!((at(1, "train/lr") - 5e-4).abs() < 1e-12 && (at(11, "train/lr") - 1e-4).abs() < 1e-12);
    // Checkpoints: the last `keep` = 2, the final one at the last step; the exported model loads.
    let mut kept: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000035", "step-00000040"]);
    assert!(run.join("experiment.toml").exists() && run.join("outcome.json").exists());
    // A checkpoint's model carries the teacher's tokenizer: it generates as it is.
    let generated = run_ok({
        let mut c = dijiang();
        c.arg("generate").arg("--model").arg(run.join("checkpoints/step-00000035/model"));
        c.args(["--max-new-tokens", "4", "--json"]);
        c
    });
    let generated: serde_json::Value = serde_json::from_str(generated.trim()).expect("JSON");
    assert!(generated["ids"][0] == 1 && generated["text"].is_string(), "{generated}");
    let inspected = run_ok({
        let mut c = dijiang();
        c.arg("inspect").arg(run.join("model")).arg("--json");
        c
    });
    let inspected: serde_json::Value = serde_json::from_str(inspected.trim()).expect("JSON");
    assert_eq!(inspected["config"]["attention"]["kind"], "dijiang");
    // `dijiang compare` tabulates the run: variant, TV before -> after stage 1, tokens.
    let table = run_ok({
        let mut c = dijiang();
        c.arg("compare").arg(&run);
        c
    });
    let row = format!(
        "| t | frozen | {:.3} -> {:.3} | - | {:.1} -> {:.1} | - | 5,120 |",
        at(0, "eval/attention_tv"),
        at(10, "eval/attention_tv"),
        at(10, "eval/perplexity"),
        at(STEPS, "eval/perplexity")
    );
    assert!(table.contains(&row), "{row}\n{table}");
}

#[test]
fn resume_after_sigkill_matches_the_uninterrupted_run() {
    let Some((dir, want)) = reference() else { return };
    let mut child = train(dir, "runs-b", &[]).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&dir.join("runs-b/t/checkpoints/step-00000005"), &mut child);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the run was killed before finishing ({status})");
    let log = run_ok(train(dir, "runs-b", &[]));
    assert!(log.contains("resuming from"), "{log}");
    assert_same_run(&metrics(&dir.join("runs-b/t")), want);
}

#[test]
fn a_second_trainer_on_the_same_run_is_refused_until_the_first_dies() {
    let Some((dir, want)) = reference() else { return };
    let mut first = train(dir, "runs-l", &[]).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&dir.join("runs-l/t/checkpoints/step-00000005"), &mut first);
    let out = train(dir, "runs-l", &[]).output().unwrap();
    assert!(!out.status.success(), "a second trainer must be refused: {}", text(&out));
    let pid = format!("PID {}", first.id());
    assert!(text(&out).contains("in use by another trainer") && text(&out).contains(&pid), "{}", text(&out));
    first.kill().unwrap(); // SIGKILL: the lock goes with the process
    first.wait().unwrap();
    let log = run_ok(train(dir, "runs-l", &[]));
    assert!(log.contains("resuming from"), "{log}");
    assert_same_run(&metrics(&dir.join("runs-l/t")), want);
    // `dijiang checkpoint verify` finds every kept checkpoint intact and names the resume point.
    let verified = run_ok({
        let mut c = dijiang();
        c.args(["checkpoint", "verify"]).arg(dir.join("runs-l/t"));
        c
    });
    assert!(verified.contains("ok       ") && verified.contains("resume   from"), "{verified}");
}

#[test]
fn ctrl_c_checkpoints_stops_and_the_same_command_resumes() {
    let Some((dir, want)) = reference() else { return };
    let mut child = train(dir, "runs-e", &[]).stdout(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&dir.join("runs-e/t/checkpoints/step-00000005"), &mut child);
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C ends the run cleanly ({status})");
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs-e/t/outcome.json")).unwrap()).unwrap();
    assert_eq!(outcome["interrupted"], true);
    let step = outcome["step"].as_u64().unwrap() as usize;
    assert!(step < STEPS, "interrupted before the end (step {step})");
    let checkpoint = dir.join(format!("runs-e/t/checkpoints/step-{step:08}"));
    assert!(checkpoint.join("trainer.json").exists(), "a checkpoint at the step it stopped: {}", checkpoint.display());
    let log = run_ok(train(dir, "runs-e", &[]));
    assert!(log.contains(&format!("(step {step})")), "{log}");
    assert_same_run(&metrics(&dir.join("runs-e/t")), want);
}

#[test]
fn a_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable() {
    let Some((dir, want)) = reference() else { return };
    let out = train(dir, "runs-c", &[]).env("DIJIANG_FAULT", "abort:checkpoint:10").output().unwrap();
    assert!(!out.status.success(), "the fault should have killed the run: {}", text(&out));
    let checkpoints = dir.join("runs-c/t/checkpoints");
    let names: Vec<String> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"step-00000005".to_string()), "{names:?}");
    assert!(!names.contains(&"step-00000010".to_string()), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with(".step-00000010.tmp-")), "the partial write is there: {names:?}");
    let log = run_ok(train(dir, "runs-c", &[]));
    assert!(log.contains("removed the partial checkpoint"), "{log}");
    assert!(log.contains("step-00000005 (step 5)"), "{log}");
    assert_same_run(&metrics(&dir.join("runs-c/t")), want);

    // Another architecture in the same run directory is refused...
    let out = train(dir, "runs-c", &["student.feature_map=performer"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("another architecture") && text(&out).contains("resume=false"), "{}", text(&out));
    // ... and resume=false starts over, keeping the old run aside.
    run_ok(train(
        dir,
        "runs-c",
        &["resume=false", "stages.0.steps=1", "stages.0.warmup_steps=0", "stages.1.steps=1", "stages.1.warmup_steps=0"],
    ));
    let aside = std::fs::read_dir(dir.join("runs-c")).unwrap().filter_map(|e| {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        name.starts_with("t.old-").then_some(name)
    });
    assert_eq!(aside.count(), 1);
}

#[test]
fn tensorboard_reads_the_event_files() {
    let Some((dir, m)) = reference() else { return };
    let python = std::env::var("DIJIANG_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_tensorboard =
        Command::new(&python).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    if !has_tensorboard {
        assert!(
            std::env::var_os("DIJIANG_PYTHON").is_none(),
            "DIJIANG_PYTHON={python} has no tensorboard: run `just python-tools`"
        );
        eprintln!("SKIPPED: {python} has no `tensorboard` package (`just python-tools` installs it)");
        return;
    }
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(&python).args(["-c", script]).arg(dir.join("runs-a/t/tb")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let read: BTreeMap<String, Vec<(usize, f64)>> = serde_json::from_slice(&out.stdout).unwrap();
    for tag in [
        "train/loss",
        "train/lm",
        "train/kl",
        "train/attention",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "eval/perplexity",
        "eval/teacher_perplexity",
        "eval/kl",
        "eval/attention_error",
        "eval/attention_error/layer_04",
        "eval/attention_tv",
        "eval/attention_tv/layer_04",
    ] {
        let events = read.get(tag).unwrap_or_else(|| panic!("TensorBoard has no {tag}: {:?}", read.keys()));
        let want: Vec<(usize, f64)> =
            m.iter().filter(|((_, t), _)| t == tag).map(|((step, _), value)| (*step, *value)).collect();
        assert_eq!(events.len(), want.len(), "{tag}");
        for ((step, value), (want_step, want_value)) in events.iter().zip(&want) {
            assert_eq!(step, want_step, "{tag}");
            assert!((value - want_value).abs() <= 1e-6 * want_value.abs().max(1.0), "{tag} at {step}");
        }
    }
    assert_eq!(read["train/loss"].iter().map(|e| e.0).collect::<Vec<_>>(), (1..=STEPS).collect::<Vec<_>>());
}

#[test]
fn dry_run_prints_the_plan_and_missing_inputs_are_named() {
    let Some(dir) = setup() else { return };
    let log = run_ok(train(dir, "runs-d", &["--dry-run"]));
    for needed in
        ["teacher ", "student ", "stage       transfer: 10 steps", "Kernel", "memory", "tokens      128 per step"]
    {
        assert!(log.contains(needed), "{needed}: {log}");
    }
    assert!(!dir.join("runs-d").exists(), "a dry run does no work");

    // The big experiments name what is missing and how to provide it.
    for (name, path) in [("dijiang-7b", "models/llama-2-7b-hf"), ("pythia-70m", "models/pythia-70m")] {
        let out =
            dijiang().current_dir(repo()).args(["train", &format!("experiment={name}"), "--dry-run"]).output().unwrap();
        assert!(!out.status.success(), "{name}");
        assert!(text(&out).contains(path) && text(&out).contains("teacher.path"), "{}", text(&out));
    }
    // Data made with another tokenizer is refused before any work.
    let smol = repo().join("tests/fixtures/llama-gqa-tiny");
    let out = train(dir, "runs-d", &[&format!("teacher.path={}", smol.display()), "--dry-run"]).output().unwrap();
    assert!(!out.status.success());
    // The default experiment's plan, on the real SmolLM2 (its data is prepared by `just train`).
    if let Some(_gguf) = support::smollm2_gguf() {
        let log = run_ok({
            let mut c = dijiang();
            c.current_dir(repo()).args(["train", "--dry-run"]);
            c
        });
        assert!(log.contains("30 layers, hidden 576, 134,515,008 parameters"), "{log}");
        assert!(log.contains("stage       attention-transfer"), "{log}");
    }
    let unknown = train(dir, "runs-d", &["stages.0.stepz=3"]).output().unwrap();
    assert!(!unknown.status.success() && text(&unknown).contains("stepz"), "{}", text(&unknown));
}

/// `eval.tasks`: zero-shot metrics at step 0 and at the end of each stage, in the logs and in
/// `dijiang compare`; an unknown task name is refused before any work, naming the known ones.
#[test]
fn zero_shot_tasks_are_evaluated_at_step_0_and_at_stage_ends() {
    let Some(dir) = setup() else { return };
    let Some(evaldata) = shared("evaldata") else { return };
    let data = format!("eval.task_data={}", evaldata.display());
    let args = with(&[r#"eval.tasks=["copa","arc_easy"]"#, "eval.task_limit=4", &data]);
    run_ok(train(dir, "runs-z", &args.iter().map(String::as_str).collect::<Vec<_>>()));
    let m = metrics(&dir.join("runs-z/t"));
    for step in [0, 2, 5] {
        for tag in ["eval/zero_shot/copa/acc", "eval/zero_shot/arc_easy/acc", "eval/zero_shot/arc_easy/acc_norm"] {
            let value = m.get(&(step, tag.to_string())).copied();
            assert!(value.is_some_and(|v| (0.0..=1.0).contains(&v)), "{tag} at step {step}: {value:?}");
        }
    }
    assert!(!m.keys().any(|(step, tag)| *step == 1 && tag.contains("zero_shot")), "only at stage ends");
    let table = run_ok({
        let mut c = dijiang();
        c.arg("compare").arg(dir.join("runs-z/t"));
        c
    });
    assert!(table.contains("copa acc ") && table.contains("arc_easy acc_norm "), "{table}");

    let unknown = train(dir, "runs-z", &[r#"eval.tasks=["copa","nope"]"#, "--dry-run"]).output().unwrap();
    assert!(!unknown.status.success(), "{}", text(&unknown));
    assert!(text(&unknown).contains("nope") && text(&unknown).contains("hellaswag"), "{}", text(&unknown));
}

/// A 5-step run (2 attention-transfer steps, 3 distillation steps) and its extra overrides.
const SHORT: &[&str] = &[
    "stages.0.steps=2",
    "stages.0.warmup_steps=1",
    "stages.1.steps=3",
    "stages.1.warmup_steps=1",
    "eval.every=0",
    "checkpoint.every=0",
];

fn with(extra: &[&str]) -> Vec<String> {
    SHORT.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// The 5-step single-device run the data-parallel ones must reproduce, made once.
fn single_device() -> Option<(&'static Path, &'static Metrics)> {
    static RUN: OnceLock<Option<Metrics>> = OnceLock::new();
    let dir = setup()?;
    let metrics = RUN
        .get_or_init(|| {
            let args = with(&[]);
            run_ok(train(dir, "runs-dp1", &args.iter().map(String::as_str).collect::<Vec<_>>()));
            Some(metrics(&dir.join("runs-dp1/t")))
        })
        .as_ref()?;
    Some((dir, metrics))
}

/// The training losses of the 5 steps equal the single-device run's to 1e-5 (relative).
fn assert_same_losses(got: &Metrics, want: &Metrics) {
    assert_same_losses_over(got, want, 5);
}

/// Waits for `child` at most `limit`, killing it (and failing) past that.
fn wait_limited(child: &mut std::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_devices_in_one_process_match_one_device() {
    let Some((dir, want)) = single_device() else { return };
    let args = with(&["devices=cpu,cpu"]);
    let log = run_ok(train(dir, "runs-dp2", &args.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(log.contains("data parallel: 2 device(s) here, 2 in all"), "{log}");
    assert_same_losses(&metrics(&dir.join("runs-dp2/t")), want);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// 20 steps over both stages (10 attention transfer, 10 distillation) with a global batch of 12
/// windows, which 1, 2, 3, 4 and 6 workers split evenly.
const NODES_RUN: &[&str] = &[
    "stages.0.steps=10",
    "stages.0.warmup_steps=1",
    "stages.1.steps=10",
    "stages.1.warmup_steps=1",
    "data.batch_size=12",
    "data.grad_accumulation=1",
    "eval.every=0",
    "checkpoint.every=0",
];

/// The 20-step single-device run the multi-node ones must reproduce, made once.
fn nodes_reference() -> Option<(&'static Path, &'static Metrics)> {
    static RUN: OnceLock<Option<Metrics>> = OnceLock::new();
    let dir = setup()?;
    let metrics = RUN
        .get_or_init(|| {
            run_ok(train(dir, "runs-n1", NODES_RUN));
            Some(metrics(&dir.join("runs-n1/t")))
        })
        .as_ref()?;
    Some((dir, metrics))
}

/// `nodes` node processes on localhost, each with `devices` CPU devices, training `runs` with
/// `extra` overrides; returns them running, with their log files.
fn start_nodes(
    dir: &Path,
    runs: &str,
    nodes: usize,
    devices: usize,
    extra: &[&str],
) -> Vec<(std::process::Child, PathBuf)> {
    let orchestrator = format!("127.0.0.1:{}", free_port());
    let addresses: Vec<String> = (0..nodes).map(|_| format!("\"127.0.0.1:{}\"", free_port())).collect();
    let devices = format!("devices={}", vec!["cpu"; devices].join(","));
    (0..nodes)
        .map(|rank| {
            let mut args: Vec<String> = NODES_RUN.iter().chain(extra).map(|s| s.to_string()).collect();
            args.extend([
                devices.clone(),
                format!("distributed.nodes={nodes}"),
                format!("distributed.node_rank={rank}"),
                format!("distributed.orchestrator={orchestrator}"),
                format!("distributed.addresses=[{}]", addresses.join(",")),
            ]);
            let log = dir.join(format!("{runs}-node-{rank}.log"));
            let file = std::fs::File::create(&log).unwrap();
            let child = train(dir, runs, &args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            (child, log)
        })
        .collect()
}

fn read_logs(nodes: &[(std::process::Child, PathBuf)]) -> String {
    let logs: Vec<String> = nodes.iter().map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default()).collect();
    logs.join("\n----\n")
}

/// Waits (at most 5 minutes) for every node; asserts all succeeded.
fn finish_nodes(mut nodes: Vec<(std::process::Child, PathBuf)>, what: &str) {
    let statuses: Vec<_> = nodes
        .iter_mut()
        .enumerate()
        .map(|(rank, (node, _))| wait_limited(node, Duration::from_secs(300), &format!("{what}: node {rank}")))
        .collect();
    assert!(statuses.iter().all(|s| s.success()), "{what}: nodes ended with {statuses:?}:\n{}", read_logs(&nodes));
}

/// 2 and 3 node processes on localhost, with 1 and 2 devices each, through burn-collective's
/// global all-reduce: 20 steps over both stages equal the single-device run with the same global
/// batch (1e-5 relative); the whole set twice in a row, so a stall between runs would show. The
/// second round shards the optimizer state (ZeRO-1) and logs the first round's values bit for bit.
#[test]
fn nodes_on_localhost_match_one_device() {
    let Some((dir, want)) = nodes_reference() else { return };
    for round in 0..2 {
        for (nodes, devices) in [(2, 1), (3, 1), (2, 2), (3, 2)] {
            let runs = format!("runs-n{nodes}x{devices}-{round}");
            // Six workers send their gradients between nodes in chunks of at most 100,000 values (3 per step).
            let mut extra: Vec<&str> =
                if nodes * devices == 6 { vec!["distributed.chunk_values=100000"] } else { vec![] };
            if round == 1 {
                extra.push("distributed.optimizer=\"sharded\"");
            }
            let started = start_nodes(dir, &runs, nodes, devices, &extra);
            let log1 = started[1].1.clone();
            finish_nodes(started, &runs);
            let log = std::fs::read_to_string(&log1).unwrap();
            let world = nodes * devices;
            let here = format!("data parallel: {devices} device(s) here, {world} in all (node 1 of {nodes})");
            assert!(log.contains(&here), "{log}");
            let got = metrics(&dir.join(format!("{runs}/t")));
            assert_same_losses_over(&got, want, 20);
            if round == 1 {
                let replicated = metrics(&dir.join(format!("runs-n{nodes}x{devices}-0/t")));
                for (key, value) in replicated.iter().filter(|((_, tag), _)| tag != "train/tokens_per_s") {
                    assert_eq!(
                        got.get(key).map(|v| v.to_bits()),
                        Some(value.to_bits()),
                        "{runs}: {key:?} sharded vs replicated"
                    );
                }
            }
        }
    }
}

/// Killing one node mid-run: the other exits within 60 s with an error naming the lost node, and
/// restarting both resumes from the last checkpoint to the same values as an uninterrupted run.
#[test]
fn a_killed_node_stops_the_others_and_the_restart_resumes_exactly() {
    let Some((dir, _)) = nodes_reference() else { return };
    let checkpoints = ["checkpoint.every=5", "checkpoint.keep=10"];
    finish_nodes(start_nodes(dir, "runs-kill-ref", 2, 1, &checkpoints), "uninterrupted");
    let want = metrics(&dir.join("runs-kill-ref/t"));

    let mut started = start_nodes(dir, "runs-kill", 2, 1, &checkpoints);
    let first_checkpoint = dir.join("runs-kill/t/checkpoints/step-00000005");
    wait_for(&first_checkpoint, &mut started[0].0);
    started[1].0.kill().unwrap();
    let killed = Instant::now();
    let status = wait_limited(&mut started[0].0, Duration::from_secs(60), "node 0 after node 1 was killed");
    let stopped_in = killed.elapsed();
    let log = std::fs::read_to_string(&started[0].1).unwrap();
    assert!(!status.success(), "node 0 went on without node 1:\n{log}");
    assert!(log.contains("lost node 1 (127.0.0.1:"), "node 0's error names node 1:\n{log}");
    started[1].0.wait().unwrap();
    let error = log.lines().rfind(|l| l.contains("lost node 1")).unwrap_or_default().to_string();
    println!("node 0 stopped {stopped_in:?} after node 1 was killed: {error}");

    let resumed = start_nodes(dir, "runs-kill", 2, 1, &checkpoints);
    finish_nodes(resumed, "resumed");
    let got = metrics(&dir.join("runs-kill/t"));
    for step in 1..=20 {
        for tag in ["train/loss", "train/grad_norm"] {
            let key = (step, tag.to_string());
            assert_eq!(got.get(&key), want.get(&key), "{key:?}: resumed vs uninterrupted two-node run");
        }
    }
}

/// The training losses of `steps` steps equal the single-device run's to 1e-5 (relative).
fn assert_same_losses_over(got: &Metrics, want: &Metrics, steps: usize) {
    for step in 1..=steps {
        for tag in ["train/loss", "train/attention", "train/kl", "train/lm", "train/grad_norm"] {
            let key = (step, tag.to_string());
            let (Some(a), Some(b)) = (got.get(&key), want.get(&key)) else {
                assert_eq!(got.contains_key(&key), want.contains_key(&key), "{key:?}");
                continue;
            };
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{key:?}: data-parallel {a} vs one device {b}");
        }
    }
    assert!(got.contains_key(&(steps, "train/loss".to_string())), "all {steps} steps ran");
}
