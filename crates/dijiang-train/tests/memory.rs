//! The memory model (`dijiang_train::memory`) against the measured peak of real training steps.
//!
//! This binary counts every byte the process holds (a counting global allocator) and runs, one
//! recipe at a time, the trainer's own step (`step::step`) twice on a mid-size LLaMA (SmolLM2-135M's
//! layer shapes, 4 layers, blocks of 128, 256 and 384 tokens, seeded random weights: memory does
//! not depend on the values): the peak live bytes from before the models exist, minus what was live
//! before, must be within +-20% of `memory::stage_estimate`. Memory must grow linearly with the
//! block length (equal increments), and the recipes must order as the design says (block
//! recomputation below the plain graph, LoRA below full fine-tuning).
//!
//! Also: building the teacher view (`Transformer::teacher_view`) allocates < 1% of the model's bytes.
//!
//! One test function: the counter is global, so nothing else may run beside it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use dijiang_data::dataset::LmBatch;
use dijiang_model::cpu::Cpu;
use dijiang_model::{ModelConfig, Transformer};
use dijiang_train::Experiment;
use dijiang_train::distributed::Reducer;
use dijiang_train::experiment::StorageDtype;
use dijiang_train::memory::{Memory, stage_estimate};
use dijiang_train::optim::AdamW;
use dijiang_train::params::{set_storage, set_trainable};
use dijiang_train::step::{Signals, StepInputs, step};
use dijiang_train::trainable::{frozen_for_run, teacher_is_view, trains};

type I = Cpu;
type B = Autodiff<Cpu>;

/// Counts live heap bytes and their peak (System does the allocating).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to System unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The mid-size teacher: SmolLM2-135M's layer shapes (hidden 576, GQA 9 / 3 heads, MLP 1,536, tied
/// embeddings) with 4 layers and a vocabulary of 8,192 (so the logits do not hide the rest).
fn teacher_config() -> ModelConfig {
    ModelConfig { num_layers: 4, vocab_size: 8192, ..ModelConfig::preset("smollm2-135m").expect("a preset") }
}

/// An experiment of one stage on the default experiment's student, `block` tokens per sequence.
fn experiment(stage: &str, extra: &str, block: usize) -> Experiment {
    let text = format!(
        r#"
description = "memory"
[teacher]
path = "unused"
[student]
normalize = true
window = 64
gate = "none"
output_norm = "none"
feature_training = "projection"
chunk_len = 64
[data]
path = "unused"
block_size = {block}
batch_size = 1
{extra}
[[stages]]
name = "s"
steps = 2
lr = 1e-4
{stage}
"#
    );
    let path = std::env::temp_dir().join(format!("dijiang-memory-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let e = Experiment::load(&path, &[]).unwrap();
    let _ = std::fs::remove_file(&path);
    e
}

/// Peak bytes of two steps of `experiment`'s only stage, models included.
fn measure(experiment: &Experiment, teacher_config: &ModelConfig) -> u64 {
    let device = Default::default();
    let stage = &experiment.stages[0];
    let before = LIVE.load(Ordering::SeqCst);
    let peak = {
        let mut student = Transformer::<B>::init(&experiment.student_config(teacher_config), 1, &device).unwrap();
        if let Some(lora) = &experiment.lora {
            student = student.with_lora(lora, 2);
        }
        let student = set_trainable(student, &|name| trains(stage.trainable, &experiment.student, name));
        let frozen = experiment.memory.frozen_dtype;
        let student = match frozen {
            StorageDtype::F32 => student,
            _ => set_storage(student, frozen.dtype(), &|name| frozen_for_run(experiment, name)).0,
        };
        let teacher = if teacher_is_view(experiment) {
            student.valid().teacher_view()
        } else {
            Transformer::<I>::init(teacher_config, 3, &device).unwrap()
        };
        let t = experiment.data.block_size;
        let ids: Vec<i64> = (0..=t).map(|i| ((i * 7919 + 13) % teacher_config.vocab_size) as i64).collect();
        let tokens = Tensor::<I, 1, Int>::from_data(ids.as_slice(), &device).reshape([1, t + 1]);
        let batch = LmBatch { inputs: tokens.clone().slice([0..1, 0..t]), targets: tokens.slice([0..1, 1..t + 1]) };
        let mut optimizer = AdamW::new(experiment.optimizer.clone());
        // Building the models may have passed through temporaries: the peak counts from here on.
        PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
        let mut student = Some(student);
        for _ in 0..2 {
            let inputs = StepInputs {
                objective: &stage.loss,
                teacher: Some(&teacher),
                micro_batches: vec![batch.clone()],
                lr: stage.lr,
                lr_scale: stage.lr_scale,
                recompute: experiment.memory.recompute,
                clip: 1.0,
                signals: Signals::default(),
            };
            let (next, _) = step(student.take().unwrap(), &mut optimizer, inputs, &mut Reducer::Single).unwrap();
            student = Some(next);
        }
        PEAK.load(Ordering::SeqCst)
    };
    (peak - before) as u64
}

const MIB: f64 = (1 << 20) as f64;

#[test]
fn the_memory_model_is_within_20_percent_of_measured_peaks() {
    let teacher = teacher_config();
    // The teacher view shares the student's tensors: building it allocates < 1% of the model's bytes.
    {
        let e = experiment("trainable = \"kernel\"\nloss = { attention = 1.0 }", "", 128);
        let student = Transformer::<B>::init(&e.student_config(&teacher), 1, &Default::default()).unwrap();
        let bytes = 4 * student.num_params();
        let before = LIVE.load(Ordering::SeqCst);
        let view = student.valid().teacher_view();
        let allocated = LIVE.load(Ordering::SeqCst).saturating_sub(before);
        assert!(allocated * 100 < bytes, "the view allocated {allocated} bytes of a {bytes}-byte model");
        drop(view);
    }
    let lora = "[lora]\nrank = 8\nalpha = 16.0\n";
    let blocks = "[memory]\nrecompute = \"blocks\"\n";
    let full = r#"trainable = "all"
loss = { kl = 1.0, lm = 0.1 }"#;
    let lora_kl = r#"trainable = "lora"
loss = { kl = 1.0, lm = 0.1 }"#;
    let transfer = r#"trainable = "kernel"
loss = { attention = 1.0 }"#;
    // Name, stage, extra sections, whether the peak is backward's alone at every length, so that
    // it grows linearly (full fine-tuning's update phase, all gradients and moments, is larger at
    // short lengths; streamed transfer's peak depends on how far the teacher's thread runs ahead).
    let recipes: Vec<(&str, &str, String, bool)> = vec![
        ("full fine-tune, KL + LM, separate teacher", full, String::new(), false),
        ("full fine-tune, block recomputation", full, blocks.into(), false),
        ("attention transfer, streamed", transfer, String::new(), false),
        ("LoRA, KL + LM, teacher a view", lora_kl, lora.into(), true),
        ("LoRA, block recomputation", lora_kl, format!("{lora}{blocks}"), true),
        // Its head's phase (the logits beside the output head's f32 copy) sets the peak at short lengths.
        (
            "LoRA, block recomputation, frozen weights in f16",
            lora_kl,
            format!("{lora}{blocks}frozen_dtype = \"f16\"\n"),
            false,
        ),
    ];
    let lengths = [128, 256, 384];
    let mut report = String::new();
    let mut measured = Vec::new();
    for (name, stage, extra, _) in &recipes {
        let mut per_length = Vec::new();
        for block in lengths {
            let e = experiment(stage, extra, block);
            let estimate: Memory = stage_estimate(&e, &teacher, 0);
            let got = measure(&e, &teacher);
            let ratio = estimate.total() as f64 / got as f64;
            report += &format!(
                "{name}, T = {block}: measured {:.1} MiB, estimated {:.1} MiB ({ratio:.2}x): {estimate}\n",
                got as f64 / MIB,
                estimate.total() as f64 / MIB
            );
            per_length.push((got, estimate.total()));
        }
        measured.push(per_length);
    }
    eprintln!("{report}");
    for (per_length, (name, _, _, activation_bound)) in measured.iter().zip(&recipes) {
        for (got, estimate) in per_length {
            let ratio = *estimate as f64 / *got as f64;
            assert!((0.8..=1.2).contains(&ratio), "{name}: estimate / measured = {ratio:.2}\n{report}");
        }
        if !activation_bound {
            continue;
        }
        // Linear in the length: each 128 more tokens add the same.
        let step = |i: usize| per_length[i + 1].0 as f64 - per_length[i].0 as f64;
        let growth = step(1) / step(0);
        assert!((0.8..=1.25).contains(&growth), "{name}: increments {} then {} bytes\n{report}", step(0), step(1));
    }
    // A shape the coefficients were not fitted on: GPT-NeoX (pythia-70m's layers: parallel
    // residual, untied head, 8 full heads, MLP 4h), 3 layers.
    let neox = ModelConfig { num_layers: 3, vocab_size: 8192, ..ModelConfig::preset("pythia-70m").expect("a preset") };
    for (name, stage, extra, _) in [&recipes[0], &recipes[2], &recipes[4]] {
        let e = experiment(stage, extra, 256);
        let (estimate, got) = (stage_estimate(&e, &neox, 0), measure(&e, &neox));
        let ratio = estimate.total() as f64 / got as f64;
        report +=
            &format!("GPT-NeoX, {name}, T = 256: measured {:.1} MiB ({ratio:.2}x): {estimate}\n", got as f64 / MIB);
        assert!((0.8..=1.2).contains(&ratio), "GPT-NeoX, {name}: estimate / measured = {ratio:.2}\n{report}");
    }
    eprintln!("{report}");
    let peak = |i: usize| measured[i][2].0;
    assert!(peak(1) < peak(0), "block recomputation holds less than the plain graph\n{report}");
    assert!(peak(4) < peak(3) && peak(3) < peak(0), "LoRA below full fine-tuning, recomputed lowest\n{report}");
    assert!(peak(5) < peak(4), "frozen weights in f16 below f32\n{report}");
}
