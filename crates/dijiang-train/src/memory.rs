//! The memory model: what one device holds at a run's peak, by component, for `--dry-run` and
//! the plan. Everything is f32 (the trainer stores and computes in f32).
//!
//! - **weights**: the student's parameters;
//! - **teacher**: a second copy of the teacher's weights, or nothing when the teacher is a view of
//!   the student's or is dropped after the step-0 evaluation ([`teacher_held`]);
//! - **moments**: AdamW's two moments per trained parameter (of this worker's share when the state
//!   is sharded, [`crate::shard`]), plus the running sum of the gradients when several
//!   micro-batches accumulate;
//! - then the larger of the step's two phases: **backward** (what it reads: activations, by how
//!   the stage keeps them ([`StepMode`]), and the logits' tensors) and the **update** (every
//!   trained parameter's gradient, and the new moments of the largest parameter being written).
//!   Backward frees activations as the gradients appear, so the two do not add up.
//!
//! Activations per token are counted in hidden-sized (`h`), MLP-sized (`i`), per-head (features `m`,
//! chunk `c`, window `W`, sequence `t`) and vocabulary-sized units, with coefficients measured, not
//! derived: a counting allocator measures the peak of real steps of every recipe on a mid-size
//! LLaMA, and the test `tests/memory.rs` holds the model to +-20% of it (docs/memory.md).

use std::fmt;

use dijiang_model::ModelConfig;
use dijiang_model::transformer::parameter_shapes;

use crate::experiment::{Experiment, Recompute, Stage};
use crate::shard::{OptimizerLayout, Shards};

use crate::experiment::StorageDtype;
use crate::trainable::{TeacherHeld, frozen_for_run, teacher_held, trains, trains_base_weights};

/// How a stage's step keeps what backward reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// One graph through the whole student: every block's activations until backward.
    Graph,
    /// Block recomputation ([`crate::recompute`]): every block's input, and one block's
    /// activations at a time.
    Blocks,
    /// A layer-local loss streamed layer by layer ([`crate::transfer`]): a few layers' teacher
    /// traces and one layer's graph.
    Streamed,
}

impl StepMode {
    pub fn of(experiment: &Experiment, stage: &Stage) -> Self {
        if stage.loss.is_layer_local() {
            StepMode::Streamed
        } else if experiment.memory.recompute == Recompute::Blocks {
            StepMode::Blocks
        } else {
            StepMode::Graph
        }
    }
}

/// One device's memory at the peak of a stage's step, by component, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// The stage (its name) these numbers are for.
    pub stage: String,
    pub mode: StepMode,
    /// The student's weights.
    pub weights: u64,
    /// A separate teacher's weights (0 unless the run holds a copy while it trains).
    pub teacher: u64,
    pub teacher_held: TeacherHeld,
    /// Before the first step, with a teacher dropped after step 0: the weights and the teacher's.
    pub at_start: u64,
    /// AdamW's moments (and the accumulated gradients with several micro-batches).
    pub moments: u64,
    /// Workers the moments are sharded over (1: replicated).
    pub sharded_over: usize,
    /// The update phase: every trained parameter's gradient (unless they are the running sum, in
    /// `moments`) and the largest one's new moments.
    pub update: u64,
    /// The backward phase's activations besides the logits' tensors (Blocks: the blocks' inputs
    /// and one block).
    pub activations: u64,
    /// The logits' tensors (student's, log-softmax, gradients; the teacher's for KL).
    pub logits: u64,
    /// f32 copies of half-precision frozen weights that backward keeps (`memory.frozen_dtype`).
    pub casts: u64,
    /// How the frozen weights are stored.
    pub frozen_dtype: StorageDtype,
    /// What backward holds at once: activations and logits, or in block recomputation the blocks'
    /// inputs with either the logits (the head's phase) or one block.
    pub backward: u64,
}

impl Memory {
    pub fn total(&self) -> u64 {
        (self.weights + self.teacher + self.moments + self.update.max(self.backward)).max(self.at_start)
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let teacher = match self.teacher_held {
            TeacherHeld::View => "a view".to_string(),
            TeacherHeld::AtStart => "dropped after step 0".to_string(),
            TeacherHeld::Copy => format!("{:.2}", gib(self.teacher)),
        };
        let sharded =
            if self.sharded_over > 1 { format!(" (sharded over {})", self.sharded_over) } else { String::new() };
        let (frozen, casts) = match self.frozen_dtype {
            StorageDtype::F32 => (String::new(), String::new()),
            dtype => (format!(" (frozen in {dtype:?})"), format!(", f32 casts {:.2}", gib(self.casts))),
        };
        write!(
            f,
            "~{:.1} GiB per device, at stage `{}` ({:?}): weights {:.2}{frozen} + teacher {teacher} + moments \
             {:.2}{sharded} + the larger of backward {:.2} (activations {:.2}, logits {:.2}{casts}) and update {:.2}",
            gib(self.total()),
            self.stage,
            self.mode,
            gib(self.weights),
            gib(self.moments),
            gib(self.backward),
            gib(self.activations),
            gib(self.logits),
            gib(self.update)
        )
    }
}

/// The run's peak: the stage whose step needs the most.
pub fn estimate(experiment: &Experiment, teacher: &ModelConfig) -> Memory {
    (0..experiment.stages.len())
        .map(|i| stage_estimate(experiment, teacher, i))
        .max_by_key(Memory::total)
        .expect("validated: at least one stage")
}

/// One device's memory at the peak of stage `index`'s step.
pub fn stage_estimate(experiment: &Experiment, teacher: &ModelConfig, index: usize) -> Memory {
    let stage = &experiment.stages[index];
    let mode = StepMode::of(experiment, stage);
    let student = experiment.student_config(teacher);
    let shapes = parameter_shapes(&student);
    let numel = |shape: &Vec<usize>| shape.iter().product::<usize>() as u64;
    let total: u64 = shapes.iter().map(|(_, s)| numel(s)).sum();
    let trained: Vec<u64> = shapes
        .iter()
        .filter(|(name, _)| trains(stage.trainable, &experiment.student, name))
        .map(|(_, s)| numel(s))
        .collect();
    let (trainable, largest) = (trained.iter().sum::<u64>(), trained.iter().copied().max().unwrap_or(0));
    let d = &experiment.data;
    // Data parallelism replicates everything but the activations, which are split.
    let micro = (d.batch_size / d.grad_accumulation / experiment.distributed.world()).max(1);
    // The stage's longest block (`data.block_schedule`) sets its peak.
    let (_, block) = d.block_range(experiment.stage_steps(index));
    let tokens = (micro * block) as u64;
    let accumulates = d.grad_accumulation > 1;
    // ZeRO-1 divides the moments (the owners' largest share), not the running sum.
    let sharded_over = match experiment.distributed.optimizer {
        OptimizerLayout::Sharded => experiment.distributed.world(),
        OptimizerLayout::Replicated => 1,
    };
    let own =
        if sharded_over > 1 { Shards::of_stage(experiment, &student, index).largest_share() as u64 } else { trainable };
    let moments = 2 * own + u64::from(accumulates) * trainable;
    // At the update, the gradients are the running sum when it exists, except that the plain graph
    // gets a whole new set from its last micro-batch beside the sum before adding it (block by block
    // and layer by layer, only one piece's gradients arrive at a time).
    let gradients = if accumulates && mode != StepMode::Graph { 0 } else { trainable };
    // The teacher dropped after step 0 was there before any moment or activation existed.
    let held = teacher_held(experiment);
    let teacher_weights = if held == TeacherHeld::Copy { teacher.num_params() as u64 } else { 0 };
    let (kept, one_at_a_time) = activations_per_token(&student, experiment, stage, mode, block);
    let logits = 4 * tokens * logits_per_token(&student, stage, mode);
    let (kept, one_at_a_time) = (4 * tokens * kept, 4 * tokens * one_at_a_time);
    // Frozen weights stored in half precision, and their f32 copies cast at use that backward
    // keeps (for the inputs' gradients): every block's in one graph, one block's at a time
    // otherwise (or the output head's, in the head's phase).
    let half = frozen_half(experiment, &shapes);
    let (block_casts, head_casts) = (4 * half.blocks / student.num_layers as u64, 4 * half.head);
    let (backward, casts) = match mode {
        StepMode::Blocks => {
            let (block, head) = (one_at_a_time + block_casts, logits + head_casts);
            (kept + block.max(head), if block >= head { block_casts } else { head_casts })
        }
        StepMode::Graph => {
            let casts = 4 * half.blocks + head_casts;
            (kept + one_at_a_time + logits + casts, casts)
        }
        StepMode::Streamed => (kept + one_at_a_time + logits + block_casts, block_casts),
    };
    Memory {
        stage: stage.name.clone(),
        mode,
        weights: 4 * total - (4 - experiment.memory.frozen_dtype.bytes()) * (half.blocks + half.other),
        teacher: 4 * teacher_weights,
        teacher_held: held,
        at_start: if held == TeacherHeld::AtStart { 4 * (total + teacher.num_params() as u64) } else { 0 },
        moments: 4 * moments,
        sharded_over,
        update: 4 * (gradients + 2 * largest),
        activations: kept + one_at_a_time,
        logits,
        casts,
        frozen_dtype: experiment.memory.frozen_dtype,
        backward,
    }
}

/// Values of the frozen matrices stored in half precision (`memory.frozen_dtype`): in the blocks,
/// in the output head (the tied embedding or `lm_head`), and the others (an untied embedding).
struct FrozenHalf {
    blocks: u64,
    head: u64,
    other: u64,
}

fn frozen_half(experiment: &Experiment, shapes: &[(String, Vec<usize>)]) -> FrozenHalf {
    let mut half = FrozenHalf { blocks: 0, head: 0, other: 0 };
    if experiment.memory.frozen_dtype == StorageDtype::F32 {
        return half;
    }
    let tied = !shapes.iter().any(|(name, _)| name == "lm_head.weight");
    for (name, shape) in shapes.iter().filter(|(name, shape)| shape.len() >= 2 && frozen_for_run(experiment, name)) {
        let n = shape.iter().product::<usize>() as u64;
        let is_head = name == "lm_head.weight" || (tied && name == "embed.weight");
        match (name.starts_with("layers."), is_head) {
            (true, _) => half.blocks += n,
            (false, true) => {
                half.head += n;
                half.other += n;
            }
            (false, false) => half.other += n,
        }
    }
    half
}

/// f32 values per token of a stage's backward phase: what stays for the whole backward, and what
/// is alive one layer or block at a time.
fn activations_per_token(
    config: &ModelConfig,
    experiment: &Experiment,
    stage: &Stage,
    mode: StepMode,
    t: usize,
) -> (u64, u64) {
    let layers = config.num_layers as u64;
    let h = config.hidden_size as u64;
    let block = block_per_token(config, experiment, trains_base_weights(stage.trainable));
    match mode {
        StepMode::Graph => {
            // A loss that mixes layer terms with logits keeps the teacher's trace of every layer.
            let traces =
                if stage.loss.has_layer_local_terms() { layers * trace_per_token(config, stage, t) } else { 0 };
            (layers * block + traces, 0)
        }
        StepMode::Blocks => ((layers + 1) * h, block + 2 * h),
        StepMode::Streamed => {
            // Three layer traces (one being made, one in the channel, one in use), the teacher's
            // softmax scores and probabilities of the layer it is computing, one layer's graph.
            let teacher_scores = 2 * (config.num_heads * t) as u64;
            (0, 3 * trace_per_token(config, stage, t) + teacher_scores + attention_per_token(config, experiment))
        }
    }
}

/// One block's activations per token when its graph is kept: the norms', the MLP's and the
/// attention's (fewer when the base weights are frozen: a frozen linear layer keeps no input).
fn block_per_token(config: &ModelConfig, experiment: &Experiment, base_trains: bool) -> u64 {
    let (h, i) = (config.hidden_size as u64, config.intermediate_size as u64);
    let norms_and_mlp = if base_trains { 3 * h + 8 * i } else { 2 * h + 6 * i };
    norms_and_mlp + attention_per_token(config, experiment)
}

/// The attention's activations per token (heads, feature maps, chunk scores, window scores).
/// (Measured the same whether the base weights train or not.)
fn attention_per_token(config: &ModelConfig, experiment: &Experiment) -> u64 {
    let s = &experiment.student;
    let h = config.hidden_size as u64;
    let heads = config.num_heads as u64;
    let kv = (config.num_kv_heads * config.head_dim) as u64;
    let m = s.num_features(config.head_dim) as u64;
    let (c, w) = (s.chunk_len as u64, s.window as u64);
    3 * h + 2 * kv + heads * (7 * m + 5 * c + 5 * w)
}

/// A teacher's layer trace per token (input, normed input, q and k after and before RoPE, v,
/// attention output; the rows when the loss reads them).
fn trace_per_token(config: &ModelConfig, stage: &Stage, block_size: usize) -> u64 {
    let h = config.hidden_size as u64;
    let kv = (config.num_kv_heads * config.head_dim) as u64;
    // `[heads, n, n]` per sequence for the rows of the first n positions: `heads x n^2 / t` per token.
    let rows = stage.loss.teacher_rows(block_size).map_or(0, |n| (config.num_heads * n * n / block_size) as u64);
    5 * h + 3 * kv + rows
}

/// The logits' tensors per token: the student's logits, log-softmax and their gradients; the
/// teacher's logits and probabilities for KL. None for a layer-local loss (no output head).
fn logits_per_token(config: &ModelConfig, stage: &Stage, mode: StepMode) -> u64 {
    if mode == StepMode::Streamed {
        return 0;
    }
    let v = config.vocab_size as u64;
    let kl = if stage.loss.needs_teacher_logits() { 3 } else { 0 };
    (4 + kl) * v
}
