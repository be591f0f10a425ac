//! Training-step throughput, with model FLOPs and the achieved FLOP/s against the backend's own
//! matrix-product peak (the FLOP/s of a large square matmul, measured here).
//!
//! - pythia-70m-DiJiang (`--model`), plain LM fine-tuning (the reference recipe): forward,
//!   cross-entropy, backward, global-norm clipping and an AdamW update, at block 512 x batch 4 and
//!   2048 x 1 (`--shapes`).
//! - The default experiment (`experiments/default.toml`: SmolLM2-135M's shape, its batch and both
//!   stages' losses): teacher forward on the inner backend, the student's loss, backward, AdamW;
//!   end-to-end stages also with block recomputation (its cost in time).
//!
//! Model FLOPs per token, forward: `2 x` the weights used in matrix products (each feature-map
//! weight once per head) plus the attention mixing (softmax: `4 t d` per head; chunked DiJiang:
//! `2 c (m + d) + 4 m d` per head); a training step is 3x its forward. Teacher forwards count once.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use dijiang_data::dataset::LmBatch;
use dijiang_model::{AttentionKernelConfig, DiJiangConfig, ModelConfig, Transformer};
use dijiang_train::distributed::Reducer;
use dijiang_train::experiment::{Experiment, Recompute, Trainable};
use dijiang_train::objective::{Objective, Term};
use dijiang_train::optim::AdamW;
use dijiang_train::params::{params, set_trainable};
use dijiang_train::step::{Signals, StepInputs, step};
use dijiang_train::trainable::trains;
use dijiang_train::transfer::shares_heads;
use serde_json::json;

use super::{OnBackend, Run, machine, median_time, write_json};

#[derive(clap::Args)]
pub struct Args {
    /// The model shape (a preset) of the LM fine-tuning steps.
    #[arg(long, default_value = "pythia-70m")]
    pub model: String,
    /// Its steps' shapes as BLOCKxBATCH.
    #[arg(long, value_delimiter = ',', default_value = "512x4,2048x1")]
    pub shapes: Vec<String>,
    /// The experiment whose steps are also measured (its teacher shape is its `teacher.preset`).
    #[arg(long, default_value = "experiments/default.toml")]
    pub experiment: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Only the binary's backend (by default a Flex build also measures NdArray, side by side).
    #[arg(long)]
    pub no_peer: bool,
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

/// Forward FLOPs per token of the weight products (see the module docs).
fn weight_flops_per_token<B: Backend, M: Module<B>>(model: &M, config: &ModelConfig) -> f64 {
    let heads = (config.num_heads + config.num_kv_heads) as f64;
    let weights: f64 = params(model)
        .iter()
        .filter(|p| p.shape.len() == 2)
        .map(|p| {
            let n = p.numel() as f64;
            if p.name == "embed.weight" {
                if config.tie_embeddings { n } else { 0.0 }
            } else if p.name.ends_with("kernel.proj") || p.name.contains("kernel.mlp_") {
                n * heads
            } else {
                n
            }
        })
        .sum();
    2.0 * weights
}

/// Forward FLOPs of the attention mixing for a sequence of `t` tokens.
fn mixing_flops(config: &ModelConfig, t: usize) -> f64 {
    let (t, d, h, layers) = (t as f64, config.head_dim as f64, config.num_heads as f64, config.num_layers as f64);
    let per_head = match &config.attention {
        AttentionKernelConfig::Softmax => 4.0 * t * t * d,
        AttentionKernelConfig::Dijiang(dj) => {
            let (c, m) = ((dj.chunk_len as f64).min(t), dj.num_features(config.head_dim) as f64);
            2.0 * t * c * (m + d) + 4.0 * t * m * d
        }
    };
    per_head * h * layers
}

fn forward_flops<B: Backend, M: Module<B>>(model: &M, config: &ModelConfig, block: usize, batch: usize) -> f64 {
    batch as f64 * (weight_flops_per_token(model, config) * block as f64 + mixing_flops(config, block))
}

fn random_batch<B: Backend>(vocab: usize, block: usize, batch: usize, device: &B::Device) -> LmBatch<B> {
    let tokens = Tensor::<B, 2>::random([batch, block + 1], Distribution::Uniform(0.0, vocab as f64), device).int();
    LmBatch { inputs: tokens.clone().slice([0..batch, 0..block]), targets: tokens.slice([0..batch, 1..block + 1]) }
}

/// FLOP/s of a `n x n x n` matrix product on the backend.
fn matmul_peak<B: Backend>(device: &B::Device) -> (usize, f64) {
    let n = 4096;
    let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let s = median_time::<B>(device, 3, 30.0, || {
        let _ = a.clone().matmul(b.clone());
    });
    (n, 2.0 * (n as f64).powi(3) / s)
}

/// Median seconds of a training step of `objective` on `data` (the trainer's own step: loss,
/// backward, clipping to norm 1, an AdamW update), after a warm-up step.
fn time_steps<B: Backend>(
    student: Transformer<Autodiff<B>>,
    (objective, recompute): (&Objective, Recompute),
    teacher: Option<&Transformer<B>>,
    data: &LmBatch<B>,
    reps: usize,
    device: &B::Device,
) -> f64 {
    let mut optimizer = AdamW::new(Default::default());
    let mut student = Some(student);
    median_time::<B>(device, reps, 120.0, || {
        let inputs = StepInputs {
            objective,
            teacher,
            micro_batches: vec![data.clone()],
            lr: 1e-4,
            lr_scale: Default::default(),
            recompute,
            clip: 1.0,
            signals: Signals::default(),
        };
        let (next, _) = step(student.take().expect("a model"), &mut optimizer, inputs, &mut Reducer::Single)
            .expect("a single worker's step cannot fail");
        student = Some(next);
    })
}

/// Median seconds of the one-graph form of a layer-local stage (attention transfer as it ran
/// before the streamed step, the baseline of `dijiang_train::transfer`): the teacher's whole
/// trace, every layer's student attention from the block input, one backward. The student's
/// projections differ from the teacher's (another seed), so it computes its own heads, as the
/// one-graph step did. The AdamW update of the few kernel parameters is left out.
fn time_one_graph<B: Backend>(
    student: Transformer<Autodiff<B>>,
    objective: &Objective,
    teacher: &Transformer<B>,
    data: &LmBatch<B>,
    reps: usize,
    device: &B::Device,
) -> f64 {
    assert!(!shares_heads(&student, teacher), "the baseline computes the student's own heads");
    median_time::<B>(device, reps, 120.0, || {
        let (loss, _) = objective.loss(&student, Some(teacher), data);
        let _ = loss.backward();
    })
}

/// FLOPs of a step of an end-to-end stage (none for layer-local ones): the student's forward and
/// backward, and the teacher's forward where the loss reads its logits.
fn stage_flops<B: Backend>(
    loss: &Objective,
    (teacher, teacher_config): (&Transformer<B>, &ModelConfig),
    config: &ModelConfig,
    (block, batch): (usize, usize),
    device: &B::Device,
) -> Option<f64> {
    (!loss.has_layer_local_terms()).then(|| {
        let inner = Transformer::<B>::init(config, 0, device).expect("the same config");
        let teacher_flops =
            if loss.needs_teacher_logits() { forward_flops(teacher, teacher_config, block, batch) } else { 0.0 };
        teacher_flops + 3.0 * forward_flops(&inner, config, block, batch)
    })
}

/// The default experiment's steps (each stage; layer-local ones also in their one-graph form,
/// end-to-end ones also with block recomputation), handed to `record` as (name, block, batch,
/// seconds, FLOPs).
fn default_experiment_rows<B: Backend>(
    args: &Args,
    device: &B::Device,
    record: &mut impl FnMut(String, usize, usize, f64, Option<f64>),
) -> Result<()> {
    let device = device.clone();
    let experiment = Experiment::load(&args.experiment, &[])
        .with_context(|| format!("reading {} (run from the repository root)", args.experiment.display()))?;
    let preset = experiment.teacher.preset.clone().context("the experiment has no teacher.preset")?;
    let teacher_config = ModelConfig::preset(&preset).with_context(|| format!("`{preset}` is not a preset"))?;
    let config = experiment.student_config(&teacher_config);
    let teacher = Transformer::<B>::init(&teacher_config, 0, &device)?;
    let (block, batch) = (experiment.data.block_size, experiment.data.batch_size / experiment.data.grad_accumulation);
    let data = random_batch(config.vocab_size, block, batch, &device);
    for (i, stage) in experiment.stages.iter().enumerate() {
        // Seed 0: the teacher's values outside the kernels (a converted student); 1: others.
        let student = |seed| -> Result<Transformer<Autodiff<B>>> {
            let student = Transformer::<Autodiff<B>>::init(&config, seed, &device)?;
            Ok(set_trainable(student, &|name| trains(stage.trainable, &experiment.student, name)))
        };
        let seconds =
            time_steps(student(0)?, (&stage.loss, Recompute::None), Some(&teacher), &data, args.reps, &device);
        let flops = stage_flops(&stage.loss, (&teacher, &teacher_config), &config, (block, batch), &device);
        record(format!("default stage {} ({})", i + 1, stage.name), block, batch, seconds, flops);
        if !stage.loss.has_layer_local_terms() {
            // The same step with block recomputation (`[memory] recompute = "blocks"`): its cost.
            let blocks = (&stage.loss, Recompute::Blocks);
            let seconds = time_steps(student(0)?, blocks, Some(&teacher), &data, args.reps, &device);
            let name = format!("default stage {} ({}), block recomputation", i + 1, stage.name);
            record(name, block, batch, seconds, flops);
        }
        if stage.loss.is_layer_local() {
            let seconds = time_one_graph(student(1)?, &stage.loss, &teacher, &data, args.reps, &device);
            record(format!("default stage {} ({}), one graph", i + 1, stage.name), block, batch, seconds, None);
        }
    }

    Ok(())
}

/// Every step on backend `B`, written to `run`'s file.
fn run_on<B: Backend>(args: &Args, run: Run) -> Result<()> {
    println!("train on {}", run.backend());
    let device = B::Device::default();
    let (n, peak) = matmul_peak::<B>(&device);
    println!("matmul peak ({n}^3): {:.1} GFLOP/s", peak / 1e9);
    let mut rows = Vec::new();
    let mut record = |name: String, block: usize, batch: usize, seconds: f64, flops: Option<f64>| {
        let model = name.split_whitespace().next().unwrap_or_default().trim_end_matches("-dijiang").to_string();
        let tokens = (block * batch) as f64;
        let achieved = flops.map(|f| f / seconds);
        println!(
            "train {name}: {:.3} s/step, {:.0} tok/s{}",
            seconds,
            tokens / seconds,
            achieved.map_or(String::new(), |a| format!(
                ", {:.1} GFLOP/s ({:.0}% of matmul peak)",
                a / 1e9,
                100.0 * a / peak
            ))
        );
        rows.push(json!({
            "name": name, "model": model, "block": block, "batch": batch, "step_s": seconds, "tokens_per_s": tokens / seconds,
            "flops_per_step": flops, "achieved_flops": achieved, "fraction_of_peak": achieved.map(|a| a / peak),
        }));
    };

    // pythia-70m-DiJiang, plain LM fine-tuning (everything but the projection trains).
    let teacher = ModelConfig::preset(&args.model).with_context(|| format!("`{}` is not a preset", args.model))?;
    let dj = DiJiangConfig::default();
    let config = teacher.clone().with_attention(AttentionKernelConfig::Dijiang(dj.clone()));
    for shape in &args.shapes {
        let (block, batch) = shape
            .split_once('x')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .with_context(|| format!("--shapes `{shape}`: expected BLOCKxBATCH, e.g. 512x4"))?;
        let inner = Transformer::<B>::init(&config, 0, &device)?;
        let flops = 3.0 * forward_flops(&inner, &config, block, batch);
        let student = set_trainable(Transformer::<Autodiff<B>>::init(&config, 0, &device)?, &|name| {
            trains(Trainable::All, &dj, name)
        });
        let data = random_batch::<B>(config.vocab_size, block, batch, &device);
        let lm = Objective::new([(Term::Lm, 1.0)]);
        let seconds = time_steps(student, (&lm, Recompute::None), None, &data, args.reps, &device);
        record(format!("{}-dijiang LM", args.model), block, batch, seconds, Some(flops));
    }

    default_experiment_rows::<B>(args, &device, &mut record)?;

    let result = json!({
        "bench": "train",
        "machine": machine::<B>(run),
        "matmul_peak": {"n": n, "flops": peak},
        "rows": rows,
    });
    let path = write_json(&args.out, &run.file("train"), &result)?;
    println!("train -> {}", path.display());
    Ok(())
}

impl OnBackend for Args {
    fn no_peer(&self) -> bool {
        self.no_peer
    }

    fn run_on<B: Backend>(&self, run: Run) -> Result<()> {
        run_on::<B>(self, run)
    }
}
