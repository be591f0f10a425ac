//! The trainer in process, on tiny random LLaMA and GPT-NeoX models and a few hundred tokens held in
//! memory (this README's bytes): nothing outside the repository. Two stages over every loss term,
//! gradient accumulation, checkpoints, an exact resume after a stop, two CPU workers against one,
//! the plan's trainable counts against the trainer's, damaged checkpoints and failing writes.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use burn::backend::Autodiff;
use burn::module::Module;
use dijiang_model::config::Architecture;
use dijiang_model::cpu::Cpu;
use dijiang_model::import::native::{self, Manifest};
use dijiang_model::{ModelConfig, Transformer};
use dijiang_train::experiment::{DistributedConfig, Experiment};
use dijiang_train::objective::Term;
use dijiang_train::params::{params, set_trainable};
use dijiang_train::start::Inputs;
use dijiang_train::trainable::{parameter_counts, trains};
use dijiang_train::{Outcome, RunOptions, train_with};

type I = Cpu;
type B = Autodiff<Cpu>;

const BLOCK: usize = 16;
const STEPS: usize = 6;

/// A scratch directory holding a tiny random teacher of `arch` (saved in our format) and the
/// experiment for it: attention transfer on the attention terms, then distillation on KL + LM with
/// 2 micro-batches per step.
fn setup(name: &str, arch: Architecture) -> (PathBuf, Experiment) {
    let dir = std::env::temp_dir().join(format!("dijiang-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ModelConfig::tiny(arch);
    let teacher = Transformer::<I>::init(&config, 7, &Default::default()).unwrap();
    native::save(&teacher, &Manifest::new(config), &dir.join("teacher")).unwrap();
    let text = format!(
        r#"description = "in-process trainer test"
seed = 5
teacher = {{ path = "{teacher}" }}
student = {{ chunk_len = 8, sampling = {{ kind = "mc", seed = 1 }} }}
data = {{ path = "unused: in memory", block_size = {BLOCK}, batch_size = 4, grad_accumulation = 2 }}
checkpoint = {{ every = 2, keep = 2 }}
eval = {{ every = 3, batches = 1 }}

[[stages]]
name = "transfer"
steps = 3
lr = 1e-2
warmup_steps = 1
trainable = "kernel"
loss = {{ attention = 1.0, attention_rows = 0.5 }}

[[stages]]
name = "distill"
steps = 3
lr = 1e-3
min_lr = 1e-4
trainable = "all"
loss = {{ kl = 1.0, lm = 0.5, temperature = 2.0 }}
"#,
        teacher = dir.join("teacher").display()
    );
    std::fs::write(dir.join("t.toml"), text).unwrap();
    let experiment = Experiment::load(&dir.join("t.toml"), &[]).unwrap();
    (dir, experiment)
}

/// The teacher and this repository's README as tokens (bytes), 3/4 for training.
fn inputs(dir: &Path) -> Inputs<I> {
    let teacher = dijiang_model::import::load::<I>(&dir.join("teacher"), &Default::default()).unwrap().model;
    let text = std::fs::read(support::repo().join("README.md")).unwrap();
    let tokens: Vec<u32> = text.iter().take(1200).map(|b| u32::from(*b)).collect();
    let (train, validation) = tokens.split_at(900);
    Inputs::in_memory(teacher, train.to_vec(), validation.to_vec(), BLOCK)
}

/// burn-collective's registry is one per process and backend: runs with several workers take
/// turns (the tests run in parallel threads).
static COLLECTIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(dir: &Path, experiment: &Experiment, run: &str, stop: bool, workers: usize) -> Outcome {
    let _turn = (workers > 1).then(|| COLLECTIVE.lock().unwrap_or_else(|e| e.into_inner()));
    let distributed = DistributedConfig { devices: vec!["cpu".into(); workers], ..experiment.distributed.clone() };
    let experiment = Experiment { distributed, ..experiment.clone() };
    let options =
        RunOptions { experiment, run_dir: dir.join(run), resume: true, stop: Arc::new(AtomicBool::new(stop)) };
    train_with::<B>(options, inputs(dir), &vec![Default::default(); workers]).unwrap()
}

type Metrics = BTreeMap<(usize, String), f64>;

/// The scratch directory of `arch`, with its uninterrupted run `a` made once and its metrics; the
/// tests add their own runs beside it.
fn reference(arch: Architecture) -> &'static (PathBuf, Experiment, Metrics) {
    static LLAMA: OnceLock<(PathBuf, Experiment, Metrics)> = OnceLock::new();
    static NEOX: OnceLock<(PathBuf, Experiment, Metrics)> = OnceLock::new();
    let cell = match arch {
        Architecture::Llama => &LLAMA,
        Architecture::GptNeox => &NEOX,
    };
    cell.get_or_init(|| {
        let (dir, experiment) = setup(&format!("{arch:?}"), arch);
        let full = run(&dir, &experiment, "a", false, 1);
        assert!(!full.interrupted && full.step == STEPS, "{full:?}");
        let m = metrics(&dir.join("a"));
        (dir, experiment, m)
    })
}

fn metrics(run: &Path) -> Metrics {
    let records = dijiang_train::metrics::read(run).unwrap();
    let mut out = Metrics::new();
    for r in records {
        assert!(out.insert((r.step, r.tag.clone()), r.value).is_none(), "{} at {} logged twice", r.tag, r.step);
    }
    out
}

fn two_stages_and_an_exact_resume(arch: Architecture) {
    let (dir, experiment, m) = reference(arch);
    for step in 1..=STEPS {
        let stage = &experiment.stages[usize::from(step > 3)];
        let logged: Vec<Term> =
            Term::ALL.into_iter().filter(|t| m.contains_key(&(step, format!("train/{t}")))).collect();
        let wanted: Vec<Term> = stage.loss.terms().map(|(t, _)| t).collect();
        assert_eq!(logged, wanted, "step {step}: each stage logs exactly its own terms");
        assert!(m[&(step, "train/loss".into())].is_finite() && m.contains_key(&(step, "train/grad_norm".into())));
    }
    let at = |step: usize, tag: &str| m[&(step, tag.to_string())];
    assert!(at(3, "eval/attention_error") < at(0, "eval/attention_error"), "attention transfer helped");
    // A random teacher predicts nearly uniformly: the LM term leads the distillation stage.
    assert!(at(6, "eval/perplexity") < at(3, "eval/perplexity"), "distillation lowered the perplexity");
    // Checkpoints at 2, 3 (a stage end), 4 and 6: the newest 2 kept; the student exported.
    let kept: Vec<String> = std::fs::read_dir(dir.join("a/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(kept, ["step-00000004", "step-00000006"]);
    assert!(dijiang_model::import::load::<I>(&dir.join("a/model"), &Default::default()).is_ok());

    // Stopped after its first step (as Ctrl-C does), then resumed: the same run, bit for bit.
    let stopped = run(dir, experiment, "b", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    let resumed = run(dir, experiment, "b", false, 1);
    assert_eq!(resumed.resumed_from, Some(1));
    assert_same(&metrics(&dir.join("b")), m);
}

#[test]
fn llama_two_stages_every_term_and_an_exact_resume() {
    two_stages_and_an_exact_resume(Architecture::Llama);
}

#[test]
fn gpt_neox_two_stages_every_term_and_an_exact_resume() {
    two_stages_and_an_exact_resume(Architecture::GptNeox);
}

#[test]
fn two_workers_match_one() {
    let (dir, experiment, one) = reference(Architecture::Llama);
    run(dir, experiment, "two", false, 2);
    let two = metrics(&dir.join("two"));
    let mut compared = 0;
    for ((step, tag), want) in one {
        if tag.starts_with("train/") && tag != "train/tokens_per_s" {
            let got = two[&(*step, tag.clone())];
            // Relative 1e-5, absolute 1e-7 for small values: a KL near 0 is a difference of terms of
            // size ~ln(vocab), whose f32 round-off does not shrink with it.
            // f32 round-off of two orders of the same sums, relative to the loss scale (1e-1): a
            // KL of 1.7e-3 differed by 1.1e-7 on Flex in one CI run (6.7e-5 of itself).
            let tolerance = 1e-5 * want.abs().max(1e-1);
            assert!((got - want).abs() <= tolerance, "{tag} at {step}: two workers {got} vs one {want}");
            compared += 1;
        }
    }
    assert!(compared >= STEPS * 4, "{compared} values compared");
}

/// ZeRO-1 (`distributed.optimizer = "sharded"`): 4 workers that each keep a quarter of the
/// moments train as 4 replicated workers do, bit for bit; a sharded checkpoint holds the whole state (the same
/// bytes as the replicated run's), and a run stopped with 2 sharded workers resumes with 4 as the
/// replicated run does.
#[test]
fn sharded_optimizer_trains_as_replicated_and_resumes_at_another_worker_count() {
    use dijiang_train::shard::OptimizerLayout;

    let (dir, experiment, _) = reference(Architecture::Llama);
    // 8 sequences per step in 2 micro-batches: one sequence per worker and micro-batch with 4.
    let mut experiment = experiment.clone();
    experiment.data.batch_size = 8;
    let layout = |optimizer| Experiment {
        distributed: DistributedConfig { optimizer, ..experiment.distributed.clone() },
        ..experiment.clone()
    };
    let (replicated, sharded) = (layout(OptimizerLayout::Replicated), layout(OptimizerLayout::Sharded));
    run(dir, &replicated, "replicated-4", false, 4);
    run(dir, &sharded, "sharded-4", false, 4);
    // Bit for bit: the same averaged gradients (burn-collective's local sums in peer order,
    // vendor/README.md), each parameter's update computed once by its owner, and `x + 0 = x`.
    assert_same(&metrics(&dir.join("sharded-4")), &metrics(&dir.join("replicated-4")));

    // Stopped after the first step with 2 workers, then resumed with 4.
    for (name, e) in [("replicated-2-4", &replicated), ("sharded-2-4", &sharded)] {
        let stopped = run(dir, e, name, true, 2);
        assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
        assert_eq!(run(dir, e, name, false, 4).resumed_from, Some(1));
    }
    let optimizer = |name: &str| std::fs::read(dir.join(name).join("checkpoints/step-00000006/optimizer.safetensors"));
    assert_eq!(optimizer("sharded-4").unwrap(), optimizer("replicated-4").unwrap(), "the gathered state is whole");
    assert_same(&metrics(&dir.join("sharded-2-4")), &metrics(&dir.join("replicated-2-4")));
}

/// `eval.teacher = "start"` with a stage that reads no teacher (the reference recipe's full
/// fine-tune): the teacher is evaluated at step 0 only, later evaluations log its kept perplexity
/// beside the student's (no KL or attention errors), and a resumed run, which never loads it into
/// training, logs the same numbers bit for bit.
#[test]
fn a_teacher_evaluated_at_the_start_only_is_kept_as_a_number() {
    use dijiang_train::experiment::TeacherEval;
    use dijiang_train::objective::Objective;
    use dijiang_train::trainable::{TeacherHeld, teacher_held};

    let (dir, experiment, _) = reference(Architecture::Llama);
    let mut e = experiment.clone();
    e.eval.teacher = TeacherEval::Start;
    for stage in &mut e.stages {
        stage.trainable = dijiang_train::experiment::Trainable::All;
        stage.loss = Objective::new([(Term::Lm, 1.0)]);
    }
    assert_eq!(teacher_held(&e), TeacherHeld::AtStart);
    run(dir, &e, "teacher-start", false, 1);
    let m = metrics(&dir.join("teacher-start"));
    let at = |step: usize, tag: &str| m.get(&(step, tag.to_string())).copied();
    assert!(at(0, "eval/kl").is_some() && at(0, "eval/attention_error").is_some(), "step 0 compares with the teacher");
    for step in [3, 6] {
        assert!(at(step, "eval/perplexity").is_some(), "step {step} evaluates the student");
        assert_eq!(at(step, "eval/teacher_perplexity"), at(0, "eval/teacher_perplexity"), "step {step}");
        assert!(at(step, "eval/kl").is_none() && at(step, "eval/attention_error").is_none(), "step {step}");
    }
    let stopped = run(dir, &e, "teacher-start-resumed", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(dir, &e, "teacher-start-resumed", false, 1);
    assert_same(&metrics(&dir.join("teacher-start-resumed")), &m);
}

/// `memory.recompute = "blocks"`: the same run to f32 round-off (the distillation stage
/// recomputes each block in backward; attention transfer streams as before), and an interrupted
/// recomputed run resumes to its uninterrupted numbers bit for bit.
#[test]
fn block_recomputation_trains_as_the_plain_step_and_resumes_exactly() {
    use dijiang_train::experiment::{MemoryConfig, Recompute};

    let (dir, experiment, plain) = reference(Architecture::Llama);
    let recomputed = Experiment {
        memory: MemoryConfig { recompute: Recompute::Blocks, ..Default::default() },
        ..experiment.clone()
    };
    run(dir, &recomputed, "blocks", false, 1);
    let got = metrics(&dir.join("blocks"));
    let mut compared = 0;
    for ((step, tag), want) in plain {
        if tag.starts_with("train/") && tag != "train/tokens_per_s" {
            let value = got[&(*step, tag.clone())];
            // f32 round-off of two orders of the same sums, relative to the loss scale (1e-1): a
            // KL of 1.7e-3 differed by 1.1e-7 on Flex in one CI run (6.7e-5 of itself).
            let tolerance = 1e-5 * want.abs().max(1e-1);
            assert!((value - want).abs() <= tolerance, "{tag} at {step}: recomputed {value} vs plain {want}");
            compared += 1;
        }
    }
    assert!(compared >= STEPS * 4, "{compared} values compared");
    // Stopped after its first step (Ctrl-C), then resumed through the recomputed stage: the same
    // numbers bit for bit (recomputation is a fixed sequence of operations).
    let stopped = run(dir, &recomputed, "blocks-resumed", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(dir, &recomputed, "blocks-resumed", false, 1);
    assert_same(&metrics(&dir.join("blocks-resumed")), &got);
}

/// An on-policy distillation stage trains on the student's own continuations (its KL differs
/// from the same stage on the data alone; its LM term counts the data's positions only) and
/// resumes to the uninterrupted run bit for bit (the rollouts are seeded by the run's seed and
/// the step).
#[test]
fn an_on_policy_stage_distils_on_the_students_text_and_resumes_exactly() {
    use dijiang_train::objective::Objective;
    use dijiang_train::on_policy::OnPolicy;

    let (dir, experiment, _) = reference(Architecture::Llama);
    let mut on_data = experiment.clone();
    on_data.stages[1].loss = Objective::new([(Term::Kl, 1.0), (Term::Lm, 0.1)]).with_temperature(2.0);
    let mut on_policy = on_data.clone();
    on_policy.stages[1].on_policy = Some(OnPolicy { tokens: BLOCK / 2, temperature: 1.0, every: 1, after: None });
    on_policy.validate().unwrap();
    run(dir, &on_data, "kl-data", false, 1);
    run(dir, &on_policy, "kl-policy", false, 1);
    let (data, policy) = (metrics(&dir.join("kl-data")), metrics(&dir.join("kl-policy")));
    let kl = |m: &Metrics, step: usize| m[&(step, "train/kl".to_string())];
    assert_eq!(data[&(3, "train/loss".into())].to_bits(), policy[&(3, "train/loss".into())].to_bits(), "stage 1 alike");
    for step in 4..=STEPS {
        assert!(kl(&policy, step).is_finite() && kl(&policy, step) != kl(&data, step), "step {step}: other text");
        let lm = policy[&(step, "train/lm".to_string())];
        assert!(lm.is_finite() && lm > 0.0, "step {step}: the LM term on the prefix ({lm})");
    }
    let stopped = run(dir, &on_policy, "kl-policy-resumed", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(dir, &on_policy, "kl-policy-resumed", false, 1);
    assert_same(&metrics(&dir.join("kl-policy-resumed")), &policy);
}

/// Unlikelihood on greedy rollouts: the tiny random student's greedy continuations repeat
/// themselves, so the term has tokens to push down (it is 0 only on text without repeats), and it
/// changes the training against the same on-policy stage without it; `written_kl = 0` takes the
/// KL on the data's prefix alone; `after` writes inside the block.
#[test]
fn an_unlikelihood_term_pushes_down_the_students_own_repeats() {
    use dijiang_train::objective::Objective;
    use dijiang_train::on_policy::OnPolicy;

    let (dir, experiment, _) = reference(Architecture::Llama);
    let mut greedy = experiment.clone();
    greedy.stages[1].loss = Objective::new([(Term::Kl, 1.0)]);
    greedy.stages[1].on_policy = Some(OnPolicy { tokens: BLOCK / 2, temperature: 0.0, every: 1, after: None });
    let mut unlikely = greedy.clone();
    unlikely.stages[1].loss = Objective::new([(Term::Kl, 1.0), (Term::Unlikelihood, 1.0)]);
    unlikely.validate().unwrap();
    run(dir, &greedy, "greedy", false, 1);
    run(dir, &unlikely, "greedy-unlikelihood", false, 1);
    let (plain, pushed) = (metrics(&dir.join("greedy")), metrics(&dir.join("greedy-unlikelihood")));
    let at = |m: &Metrics, step: usize, tag: &str| m[&(step, tag.to_string())];
    assert_eq!(at(&plain, 4, "train/kl").to_bits(), at(&pushed, 4, "train/kl").to_bits(), "the same first rollout");
    let values: Vec<f64> = (4..=STEPS).map(|step| at(&pushed, step, "train/unlikelihood")).collect();
    assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{values:?}");
    assert!(values[0] > 0.0, "the random student's greedy text repeats: {values:?}");
    assert_ne!(at(&plain, STEPS, "train/kl").to_bits(), at(&pushed, STEPS, "train/kl").to_bits(), "trained apart");
    // The KL on the data's prefix only (`written_kl = 0`): another KL from the first rollout on.
    let mut prefix = unlikely.clone();
    prefix.stages[1].loss = unlikely.stages[1].loss.clone().with_written_kl(0.0);
    prefix.validate().unwrap();
    run(dir, &prefix, "greedy-unlikelihood-prefix", false, 1);
    let on_prefix = metrics(&dir.join("greedy-unlikelihood-prefix"));
    let kl = at(&on_prefix, 4, "train/kl");
    assert!(kl.is_finite() && kl != at(&pushed, 4, "train/kl"), "the prefix's KL: {kl}");
    assert_eq!(at(&on_prefix, 4, "train/unlikelihood").to_bits(), values[0].to_bits(), "the same rollout");
    // Written after the block's first 2 tokens (`after`), the data after the span kept: the KL
    // on other data positions, the term on another continuation, and the run resumes exactly.
    let mut early = prefix.clone();
    early.stages[1].on_policy = Some(OnPolicy { tokens: BLOCK / 2, temperature: 0.0, every: 1, after: Some(2) });
    early.validate().unwrap();
    run(dir, &early, "greedy-early", false, 1);
    let written_early = metrics(&dir.join("greedy-early"));
    let (kl_early, term) = (at(&written_early, 4, "train/kl"), at(&written_early, 4, "train/unlikelihood"));
    assert!(kl_early.is_finite() && kl_early != kl, "the KL on the data around the span: {kl_early}");
    assert!(term.is_finite() && term >= 0.0, "{term}");
    let stopped = run(dir, &early, "greedy-early-resumed", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(dir, &early, "greedy-early-resumed", false, 1);
    assert_same(&metrics(&dir.join("greedy-early-resumed")), &written_early);
}

/// A length curriculum (`data.block_schedule`): the steps before the change are the plain run's
/// bit for bit, the later ones read blocks twice as long, and a run resumed from a checkpoint
/// taken after the change (and one stopped before it) ends as the uninterrupted run.
#[test]
fn a_block_schedule_lengthens_the_blocks_mid_stage_and_resumes_exactly() {
    use dijiang_train::experiment::BlockChange;

    let (dir, experiment, plain) = reference(Architecture::Llama);
    let mut longer = experiment.clone();
    longer.data.block_schedule = vec![BlockChange { from_step: 4, block_size: 2 * BLOCK }];
    longer.validate().unwrap();
    run(dir, &longer, "longer", false, 1);
    let m = metrics(&dir.join("longer"));
    let at = |m: &Metrics, step: usize, tag: &str| m[&(step, tag.to_string())];
    for step in 1..=4 {
        assert_eq!(at(&m, step, "train/loss").to_bits(), at(plain, step, "train/loss").to_bits(), "step {step}");
    }
    let tokens = |step: usize| at(&m, step, "train/tokens_seen") - at(&m, step - 1, "train/tokens_seen");
    assert_eq!((tokens(4), tokens(5), tokens(6)), (4.0 * BLOCK as f64, 8.0 * BLOCK as f64, 8.0 * BLOCK as f64));
    assert_ne!(at(&m, 5, "train/loss").to_bits(), at(plain, 5, "train/loss").to_bits(), "other blocks from step 5");
    assert!(at(&m, 6, "eval/perplexity").is_finite());

    // Resumed from step 4's checkpoint (its blocks chosen afresh for step 4 on): the same run.
    let resumed_dir = dir.join("longer-resumed");
    let _ = std::fs::remove_dir_all(&resumed_dir);
    run(dir, &longer, "longer-resumed", false, 1);
    std::fs::remove_dir_all(resumed_dir.join("checkpoints/step-00000006")).unwrap();
    let resumed = run(dir, &longer, "longer-resumed", false, 1);
    assert_eq!(resumed.resumed_from, Some(4));
    assert_same(&metrics(&resumed_dir), &m);
    // Stopped after step 1, before the change, then resumed through it.
    let stopped = run(dir, &longer, "longer-stopped", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(dir, &longer, "longer-stopped", false, 1);
    assert_same(&metrics(&dir.join("longer-stopped")), &m);
}

#[test]
fn the_plan_counts_what_the_trainer_trains() {
    for arch in [Architecture::Llama, Architecture::GptNeox] {
        let (dir, experiment) = setup(&format!("counts-{arch:?}"), arch);
        let teacher = ModelConfig::tiny(arch);
        let (total, per_stage) = parameter_counts(&experiment, &teacher);
        let device = Default::default();
        let student = dijiang_model::convert::convert::<B>(&dir.join("teacher"), experiment.student.clone(), &device)
            .unwrap()
            .model;
        assert_eq!(total, student.num_params());
        for (stage, planned) in experiment.stages.iter().zip(per_stage) {
            let student = set_trainable(student.clone(), &|name| trains(stage.trainable, &experiment.student, name));
            let trained: usize = params(&student).iter().filter(|p| p.trainable).map(|p| p.numel()).sum();
            assert_eq!(planned, trained, "{arch:?} stage {}", stage.name);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// A flipped byte, then a truncated file, in the newest checkpoint: it is skipped, naming the
/// file, and the run resumes from the one before, to the uninterrupted run's numbers.
#[test]
fn a_damaged_checkpoint_falls_back_to_the_previous_one() {
    let (dir, experiment, want) = reference(Architecture::Llama);
    let run_dir = dir.join("damaged");
    run(dir, experiment, "damaged", false, 1);
    let newest = run_dir.join("checkpoints/step-00000006");
    for (file, damage) in [("model/model.safetensors", "flip"), ("optimizer.safetensors", "truncate")] {
        let path = newest.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        match damage {
            "flip" => bytes[middle] ^= 0x10,
            _ => bytes.truncate(bytes.len() - 3),
        }
        std::fs::write(&path, bytes).unwrap();
        let checked = dijiang_train::checkpoint::verify_run(&run_dir);
        let damaged = checked[0].1.as_ref().unwrap_err().to_string();
        assert!(damaged.contains(file), "{damage}: the file is named: {damaged}");
        assert_eq!(checked[1].1.as_ref().unwrap().step, 4);
        let resumed = run(dir, experiment, "damaged", false, 1);
        assert_eq!(resumed.resumed_from, Some(4), "{damage}");
        assert_same(&metrics(&run_dir), want);
    }
}

/// Every value of `got` equals `want`'s bit for bit (timings aside), and no other is logged.
fn assert_same(got: &Metrics, want: &Metrics) {
    let keys = |m: &Metrics| m.keys().filter(|(_, t)| t != "train/tokens_per_s").cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want));
    for key in keys(want) {
        assert_eq!(got[&key].to_bits(), want[&key].to_bits(), "{key:?}: {} vs {}", got[&key], want[&key]);
    }
}

/// Failing writes (`DIJIANG_FAULT`, in a child process): the run stops with an error naming the
/// file, leaves no partial checkpoint, and the next run resumes from the last good checkpoint to
/// the uninterrupted run's numbers.
#[test]
fn failed_writes_leave_a_resumable_run() {
    let (dir, experiment, want) = reference(Architecture::Llama);
    for (fault, says, resumes_from) in [
        ("disk-full:checkpoint:4", "trainer.json: No space left on device", Some(3)),
        ("write-error:metrics:5", "metrics.jsonl: Input/output error", Some(4)),
        ("disk-full:metrics", "No space left on device", None),
    ] {
        let name = fault.replace(':', "-");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "train_child", "--nocapture", "--test-threads=1"])
            .env("DIJIANG_FAULT", fault)
            .env("DIJIANG_TEST_DIR", dir)
            .env("DIJIANG_TEST_RUN", &name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{fault}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("TRAIN FAILED") && stdout.contains(says), "{fault}: {stdout}");
        let checkpoints = std::fs::read_dir(dir.join(&name).join("checkpoints")).into_iter().flatten();
        let partial = checkpoints.flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).count();
        assert_eq!(partial, 0, "{fault}: a failed checkpoint leaves no partial directory");
        let resumed = run(dir, experiment, &name, false, 1);
        assert_eq!(resumed.resumed_from, resumes_from, "{fault}");
        assert_same(&metrics(&dir.join(&name)), want);
    }
}

/// Run by `failed_writes_leave_a_resumable_run` in a child process.
#[test]
fn train_child() {
    let (Some(dir), Some(name)) = (std::env::var_os("DIJIANG_TEST_DIR"), std::env::var("DIJIANG_TEST_RUN").ok()) else {
        return; // only meaningful as the child
    };
    let dir = PathBuf::from(dir);
    let experiment = Experiment::load(&dir.join("t.toml"), &[]).unwrap();
    let options =
        RunOptions { experiment, run_dir: dir.join(&name), resume: true, stop: Arc::new(AtomicBool::new(false)) };
    match train_with::<B>(options, inputs(&dir), &[Default::default()]) {
        Ok(outcome) => println!("TRAIN SUCCEEDED at step {}", outcome.step),
        Err(e) => println!("TRAIN FAILED: {e}"),
    }
}

/// A LoRA stage after attention transfer: the plan counts the adapters, the stage trains only
/// them and the kernels (the base weights stay the teacher's, so the teacher is a view of them),
/// checkpoints keep the adapters, and the exported model has them merged (the same logits as the
/// last checkpoint, no adapter left).
#[test]
fn a_lora_stage_trains_adapters_and_kernels_and_exports_a_merged_model() {
    use dijiang_model::config::is_lora_param;
    use dijiang_model::convert::is_kernel_param;
    use dijiang_model::{LoraConfig, LoraTarget};
    use dijiang_train::experiment::Trainable;

    let (dir, mut experiment) = setup("lora", Architecture::Llama);
    experiment.stages[1].trainable = Trainable::Lora;
    let err = experiment.validate().unwrap_err();
    assert!(err.contains("[lora]") && err.contains("distill"), "{err}");
    let lora = LoraConfig { rank: 2, alpha: 4.0, targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Up] };
    experiment.lora = Some(lora.clone());
    experiment.validate().unwrap();

    let device = Default::default();
    let teacher = dijiang_model::import::load::<I>(&dir.join("teacher"), &device).unwrap().model;
    let student = dijiang_model::convert::convert::<B>(&dir.join("teacher"), experiment.student.clone(), &device)
        .unwrap()
        .model
        .with_lora(&lora, experiment.seed);
    let (total, per_stage) = parameter_counts(&experiment, teacher.config());
    assert_eq!(total, student.num_params());
    let stage = set_trainable(student, &|name| trains(Trainable::Lora, &experiment.student, name));
    let trained: Vec<_> = params(&stage).into_iter().filter(|p| p.trainable).collect();
    assert!(trained.iter().all(|p| is_kernel_param(&p.name) || is_lora_param(&p.name)));
    assert!(trained.iter().any(|p| is_lora_param(&p.name)));
    assert_eq!(per_stage[1], trained.iter().map(|p| p.numel()).sum::<usize>());

    assert!(dijiang_train::trainable::teacher_is_view(&experiment), "no stage trains the base weights");
    let outcome = run(&dir, &experiment, "lora", false, 1);
    assert_eq!(outcome.step, STEPS);
    // The teacher is a view of the student's weights here, the loaded teacher in the reference run:
    // the same teacher (same weights and data).
    let tag = (0, "eval/teacher_perplexity".to_string());
    let (_, _, want) = reference(Architecture::Llama);
    assert_eq!(metrics(&dir.join("lora"))[&tag], want[&tag], "the teacher view is the teacher");
    let exported = dijiang_model::import::load::<I>(outcome.model.as_ref().unwrap(), &device).unwrap().model;
    assert!(exported.config().lora.is_none());
    assert!(params(&exported).iter().all(|p| !is_lora_param(&p.name)));
    let newest = std::fs::read_dir(dir.join("lora/checkpoints")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let adapted = dijiang_model::import::load::<I>(&newest.join("model"), &device).unwrap().model;
    assert_eq!(adapted.config().lora.as_ref(), Some(&lora), "{}", newest.display());
    let b = adapted.layers[0].attn.q.lora.as_ref().unwrap().b.val();
    assert!(b.abs().max().into_scalar() > 0.0, "the adapters trained");
    let base = |m: &dijiang_model::Transformer<I>| m.layers[1].mlp.clone();
    let same_base = match (base(&adapted), base(&teacher)) {
        (dijiang_model::layers::Mlp::SwiGlu(a), dijiang_model::layers::Mlp::SwiGlu(t)) => {
            a.up.weight.val().equal(t.up.weight.val()).all().into_scalar()
        }
        _ => false,
    };
    assert!(same_base, "a LoRA stage leaves the base weights as the teacher's");
    let tokens = burn::tensor::Tensor::<I, 2, burn::tensor::Int>::from_data([[3, 17, 42, 9, 100, 7, 64, 21]], &device);
    let (a, e) = (adapted.forward(tokens.clone()), exported.forward(tokens));
    let diff = (a.clone() - e).abs().max().into_scalar() / a.abs().max().into_scalar();
    assert!(diff < 1e-5, "the exported model is the adapted one merged: {diff}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `memory.frozen_dtype = "f16"` on a LoRA recipe whose teacher holds f16 values (as LLaMA-2's and
/// Pythia's checkpoints do): the frozen base weights are stored in f16 and cast to f32 at use, so
/// the run logs the f32-stored run's numbers bit for bit, checkpoints keep them in f16, and a
/// stopped run resumes exactly. NdArray (no f16) is refused before any work.
#[test]
fn half_precision_frozen_weights_train_as_f32_storage_bit_for_bit() {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{DType, Tensor};
    use dijiang_model::{LoraConfig, LoraTarget};
    use dijiang_train::experiment::{StorageDtype, Trainable};

    struct ToHalf;
    impl ModuleMapper<I> for ToHalf {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<I, D>>) -> Param<Tensor<I, D>> {
            param.map(|t| t.cast(DType::F16).cast(DType::F32))
        }
    }
    let (dir, mut experiment) = setup("half", Architecture::Llama);
    let device = Default::default();
    let teacher = dijiang_model::import::load::<I>(&dir.join("teacher"), &device).unwrap().model.map(&mut ToHalf);
    native::save(&teacher, &Manifest::new(teacher.config().clone()), &dir.join("teacher")).unwrap();
    experiment.stages[1].trainable = Trainable::Lora;
    experiment.lora = Some(LoraConfig { rank: 2, alpha: 4.0, targets: vec![LoraTarget::Q, LoraTarget::Up] });
    run(&dir, &experiment, "f32", false, 1);
    let want = metrics(&dir.join("f32"));

    experiment.memory.frozen_dtype = StorageDtype::F16;
    experiment.validate().unwrap();
    let stopped = run(&dir, &experiment, "f16", true, 1);
    assert!(stopped.interrupted && stopped.step == 1, "{stopped:?}");
    run(&dir, &experiment, "f16", false, 1);
    assert_same(&metrics(&dir.join("f16")), &want);
    let weights = std::fs::read(dir.join("f16/checkpoints/step-00000006/model").join(native::WEIGHTS)).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let dtype = |name: &str| saved.tensor(name).unwrap().dtype();
    assert_eq!(dtype("layers.1.mlp.down.weight"), safetensors::Dtype::F16, "a frozen weight is stored in f16");
    assert_eq!(dtype("layers.1.mlp.up.lora.b"), safetensors::Dtype::F32, "an adapter trains in f32");

    let options = RunOptions {
        experiment: experiment.clone(),
        run_dir: dir.join("ndarray"),
        resume: false,
        stop: Arc::new(AtomicBool::new(false)),
    };
    type N = burn::backend::NdArray<f32>;
    let refused = train_with::<Autodiff<N>>(options, ndarray_inputs(&dir), &[Default::default()]).unwrap_err();
    assert!(refused.to_string().contains("frozen_dtype"), "{refused}");
    std::fs::remove_dir_all(&dir).ok();
}

fn ndarray_inputs(dir: &Path) -> Inputs<burn::backend::NdArray<f32>> {
    let teacher = dijiang_model::import::load(&dir.join("teacher"), &Default::default()).unwrap().model;
    let text = std::fs::read(support::repo().join("README.md")).unwrap();
    let tokens: Vec<u32> = text.iter().take(1200).map(|b| u32::from(*b)).collect();
    let (train, validation) = tokens.split_at(900);
    Inputs::in_memory(teacher, train.to_vec(), validation.to_vec(), BLOCK)
}
