//! Experiments: TOML files in `experiments/`, parsed into typed configs. Unknown keys and wrong
//! types are errors naming the key, the file and the line; `key.path=value` overrides (from
//! `just train experiment=NAME key=value ...`) are applied before parsing, so they are checked the
//! same way.

use std::ops::Range;
use std::path::{Path, PathBuf};

use dijiang_model::{AttentionKernelConfig, DiJiangConfig, LoraConfig, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::objective::{Objective, Term};
use crate::on_policy::OnPolicy;
use crate::shard::OptimizerLayout;
use crate::trainable::Group;

/// What can be wrong with an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("override `{raw}`: {message}")]
    Override { raw: String, message: String },
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// One line on what the experiment is for.
    pub description: String,
    /// Seed of everything random in the run (data order, new parameters).
    #[serde(default)]
    pub seed: u64,
    pub teacher: ModelSource,
    /// The student's DiJiang attention (the student is the teacher converted with these options).
    #[serde(default)]
    pub student: DiJiangConfig,
    /// LoRA adapters added to the student (what `trainable = "lora"` stages train; merged into the
    /// weights of the exported model). None: no adapters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    pub data: DataConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub distributed: DistributedConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
}

/// How a training step trades compute for memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// What the backward pass recomputes instead of keeping.
    #[serde(default)]
    pub recompute: Recompute,
    /// How the weights no stage trains (the base weights of attention-transfer and LoRA recipes)
    /// are stored: `"f16"` / `"bf16"` halve them, cast to f32 where they are used (exact for a
    /// checkpoint in that precision). Trainable parameters, norms and optimizer state stay f32.
    #[serde(default)]
    pub frozen_dtype: StorageDtype,
}

/// The storage precision of frozen weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl StorageDtype {
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            StorageDtype::F32 => burn::tensor::DType::F32,
            StorageDtype::F16 => burn::tensor::DType::F16,
            StorageDtype::Bf16 => burn::tensor::DType::BF16,
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> u64 {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::Bf16 => 2,
        }
    }
}

/// What a training step recomputes in backward ([`crate::recompute`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recompute {
    /// Nothing: autodiff keeps every activation of every block until backward.
    #[default]
    None,
    /// Each block from its input, one at a time in backward (exact; every block's forward runs twice:
    /// +1.8% time on the default experiment's distillation step, docs/memory.md):
    /// activations of one block plus every block's input. For stages whose loss reads logits
    /// (`lm`, `kl`); attention transfer is layer by layer anyway.
    Blocks,
}

/// Data parallelism: the devices of this node, and the nodes of a multi-node run. Every device holds
/// a replica of the student and the teacher; each global batch is split evenly across all devices
/// of all nodes, gradients are averaged before every update (burn-collective's all-reduce between
/// the devices of one node and, through node 0's orchestrator, between nodes: [`crate::nodes`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// This node's devices (`cpu`, `cuda:0`, `wgpu:0`, ...); empty: the backend's default device.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Nodes (processes) in the run.
    #[serde(default = "one_u32")]
    pub nodes: u32,
    /// This node's index, 0 ..= nodes - 1 (node 0 writes checkpoints and logs).
    #[serde(default)]
    pub node_rank: u32,
    /// `HOST:PORT` of node 0's burn-collective orchestrator, where the nodes meet (node 0 listens
    /// there).
    #[serde(default)]
    pub orchestrator: Option<String>,
    /// Every node's `HOST:PORT` for gradient transfers, by node rank (each node listens on its
    /// own). Empty: all nodes on the orchestrator's host, on the ports after the orchestrator's.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// How long the nodes may take to all join the run (seconds).
    #[serde(default = "join_timeout_s")]
    pub join_timeout_s: u64,
    /// The most values one all-reduce between nodes carries (the gradients go in chunks of at most
    /// this many f32 values; one chunk is one message per ring step, at most 512 MiB).
    #[serde(default = "chunk_values")]
    pub chunk_values: usize,
    /// `"sharded"`: ZeRO-1, each worker keeps the optimizer moments of its share of the
    /// parameters ([`crate::shard`]); `"replicated"` (default): every worker keeps all of them.
    #[serde(default)]
    pub optimizer: OptimizerLayout,
}

fn chunk_values() -> usize {
    32 << 20
}

fn join_timeout_s() -> u64 {
    600
}

fn one_u32() -> u32 {
    1
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            nodes: 1,
            node_rank: 0,
            orchestrator: None,
            addresses: Vec::new(),
            join_timeout_s: join_timeout_s(),
            chunk_values: chunk_values(),
            optimizer: OptimizerLayout::Replicated,
        }
    }
}

impl DistributedConfig {
    /// Devices on this node.
    pub fn local_devices(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Devices in the whole run.
    pub fn world(&self) -> usize {
        self.local_devices() * self.nodes as usize
    }
}

/// Where a model comes from, and how to get it when it is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    pub path: PathBuf,
    /// The command that fetches it (shown when it is missing; `just train` runs it).
    #[serde(default)]
    pub fetch: Option<String>,
    /// The architecture preset (`dijiang inspect` names them) that `--dry-run` plans with while the
    /// weights are not there yet.
    #[serde(default)]
    pub preset: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A directory written by `dijiang prepare`.
    pub path: PathBuf,
    /// The command that prepares it when missing.
    #[serde(default)]
    pub prepare: Option<String>,
    pub block_size: usize,
    /// Sequences per optimizer step (split into `grad_accumulation` micro-batches).
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    /// A length curriculum: other block lengths from a step on, in the same stage, learning-rate
    /// schedule and optimizer moments (`block_schedule = [{ from_step = 400, block_size = 2048 }]`:
    /// 2,048-token blocks from optimizer step 400, counted from 0 over all stages). The trainer's
    /// evaluation stays on `block_size` blocks, so its numbers compare across the change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_schedule: Vec<BlockChange>,
}

/// One entry of [`DataConfig::block_schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockChange {
    pub from_step: usize,
    pub block_size: usize,
}

fn one() -> usize {
    1
}

impl DataConfig {
    /// The block length of optimizer step `step` (0-based, over all stages).
    pub fn block_size_at(&self, step: usize) -> usize {
        let change = self.block_schedule.iter().rev().find(|c| c.from_step <= step);
        change.map_or(self.block_size, |c| c.block_size)
    }

    /// Tokens of optimizer step `step` (all micro-batches, all devices).
    pub fn tokens_at(&self, step: usize) -> u64 {
        (self.batch_size * self.block_size_at(step)) as u64
    }

    /// Tokens of all of `steps`.
    pub fn tokens_over(&self, steps: Range<usize>) -> u64 {
        steps.map(|s| self.tokens_at(s)).sum()
    }

    /// The shortest and the longest block of `steps` (not empty).
    pub fn block_range(&self, steps: Range<usize>) -> (usize, usize) {
        let mut sizes = std::iter::once(self.block_size_at(steps.start))
            .chain(self.block_schedule.iter().filter(|c| steps.contains(&c.from_step)).map(|c| c.block_size));
        let first = sizes.next().expect("the first step's block");
        sizes.fold((first, first), |(lo, hi), b| (lo.min(b), hi.max(b)))
    }

    /// Every block length the run trains on.
    pub fn block_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.block_size).chain(self.block_schedule.iter().map(|c| c.block_size))
    }

    fn validate_schedule(&self, total_steps: usize) -> Result<(), String> {
        let mut after = 0;
        for (i, c) in self.block_schedule.iter().enumerate() {
            if c.block_size == 0 || c.from_step <= after || c.from_step >= total_steps {
                return Err(format!(
                    "data.block_schedule.{i} ({{ from_step = {}, block_size = {} }}): from_step must rise, within 1..{} \
                     (the run's steps), and block_size must be positive",
                    c.from_step, c.block_size, total_steps
                ));
            }
            after = c.from_step;
        }
        Ok(())
    }
}

/// AdamW. Defaults are PyTorch's (Burn's differ: see docs/burn-0.21.md), with the reference recipe's
/// betas and weight decay; no decay on norms, biases, gains and decays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global-norm gradient clipping over all parameters (0: off).
    pub clip_grad_norm: f64,
    /// Abort after this many skipped (non-finite) updates.
    pub max_nonfinite: usize,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip_grad_norm: 1.0, max_nonfinite: 10 }
    }
}

/// Which parameters a stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainable {
    /// Only the attention kernels' new parameters (attention transfer).
    Kernel,
    /// Everything but the frozen feature projections (the reference recipe).
    All,
    /// Everything `All` trains but the token embedding and the output head (tied to the embedding
    /// in SmolLM2): a distillation that keeps the teacher's vocabulary vectors, with no gradient
    /// for the head's weights (the largest single product of a 49,152-token vocabulary).
    Body,
    /// The LoRA adapters (`[lora]`) and the attention kernels' new parameters: the base weights
    /// stay frozen.
    Lora,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub steps: usize,
    pub lr: f64,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    pub trainable: Trainable,
    /// Learning-rate multipliers per parameter group (LoRA recipes train adapters and new
    /// attention parameters faster than anything else): `lr_scale = { kernel = 1.0, lora = 2.0 }`.
    #[serde(default)]
    pub lr_scale: LrScale,
    /// The stage's loss: `loss = { kl = 1.0, lm = 0.1, temperature = 2.0 }` (see [`crate::objective::Term`]).
    pub loss: Objective,
    /// On-policy distillation: the student writes the last tokens of each block (or those after
    /// its first `after`) before the step (`on_policy = { tokens = 128, temperature = 1.0 }`,
    /// [`OnPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<OnPolicy>,
}

impl Stage {
    /// Constraints serde cannot express (the message is prefixed with the stage's place).
    fn validate(&self, recompute: Recompute, block_size: usize) -> Result<(), String> {
        if self.steps == 0 || self.lr <= 0.0 || self.min_lr < 0.0 || self.min_lr > self.lr {
            return Err("steps > 0 and 0 <= min_lr <= lr > 0 are needed".into());
        }
        if self.warmup_steps > self.steps {
            return Err(format!("warmup_steps ({}) exceeds steps ({})", self.warmup_steps, self.steps));
        }
        self.loss.validate()?;
        if recompute == Recompute::Blocks && self.loss.has_layer_local_terms() && !self.loss.is_layer_local() {
            return Err(format!(
                "memory.recompute = \"blocks\" recomputes the end-to-end forward, but this loss mixes it with layer \
                 terms ({}): put the attention terms in a stage of their own or set memory.recompute = \"none\"",
                self.loss.describe()
            ));
        }
        if !self.lr_scale.is_valid() {
            return Err("lr_scale multipliers (kernel, lora, base) must be finite and > 0".into());
        }
        if self.on_policy.is_some() && (!self.loss.needs_teacher_logits() || self.loss.has_layer_local_terms()) {
            return Err(format!(
                "on_policy distils on the student's own text: its loss needs kl or reverse_kl and no layer terms, not {}",
                self.loss.describe()
            ));
        }
        if self.on_policy.is_none() && self.loss.written_kl() != 1.0 {
            return Err(
                "loss.written_kl weighs the KL at the student's written positions: the stage needs on_policy".into()
            );
        }
        if self.on_policy.is_none() && self.loss.weight(Term::Unlikelihood) > 0.0 {
            return Err(
                "loss.unlikelihood pushes down the repeats in the student's own continuations: the stage needs \
                 on_policy (e.g. on_policy = { tokens = 128, temperature = 0 })"
                    .into(),
            );
        }
        if let Some(on_policy) = &self.on_policy {
            on_policy.validate(block_size)?;
        }
        Ok(())
    }
}

/// A stage's learning-rate multiplier for each parameter group ([`Group`]); 1 by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrScale {
    pub kernel: f64,
    pub lora: f64,
    pub base: f64,
}

impl Default for LrScale {
    fn default() -> Self {
        Self { kernel: 1.0, lora: 1.0, base: 1.0 }
    }
}

impl LrScale {
    /// The multiplier of the parameter `name`.
    pub fn of(&self, name: &str) -> f64 {
        match Group::of(name) {
            Group::Kernel => self.kernel,
            Group::Lora => self.lora,
            Group::Base => self.base,
        }
    }

    fn is_valid(&self) -> bool {
        [self.kernel, self.lora, self.base].iter().all(|x| x.is_finite() && *x > 0.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Steps between checkpoints (0: only at the end of each stage and on Ctrl-C).
    pub every: usize,
    /// How many to keep.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 100, keep: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Steps between evaluations (0: only at step 0 and at the end of each stage).
    pub every: usize,
    /// Validation batches per evaluation.
    pub batches: usize,
    /// Zero-shot tasks (lm-eval names, as `dijiang evaluate --tasks`) evaluated at step 0 and at
    /// the end of each stage; empty: none.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Documents per zero-shot task (MMLU: per subject, as lm-eval's `--limit`); 0: the whole split.
    #[serde(default = "default_task_limit")]
    pub task_limit: usize,
    /// The zero-shot evaluation data (`just evaldata` writes it).
    #[serde(default = "default_task_data")]
    pub task_data: PathBuf,
    /// When the teacher is evaluated beside the student.
    #[serde(default)]
    pub teacher: TeacherEval,
}

/// When evaluations compare the student with its teacher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherEval {
    /// At every evaluation: the teacher's perplexity, the KL between them, the attention errors.
    #[default]
    Every,
    /// At step 0 only: the teacher's perplexity is kept (in checkpoints too) and logged with every
    /// evaluation; later evaluations measure the student alone. When no stage's loss reads the
    /// teacher, its weights are dropped after step 0 (a full fine-tune then holds one copy of the
    /// weights, not two: [`crate::trainable::teacher_held`]).
    Start,
}

fn default_task_limit() -> usize {
    200
}

fn default_task_data() -> PathBuf {
    PathBuf::from("datasets/evals")
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 100,
            batches: 8,
            tasks: Vec::new(),
            task_limit: default_task_limit(),
            task_data: default_task_data(),
            teacher: TeacherEval::Every,
        }
    }
}

/// Sets a dotted `key` (numbers index arrays: `stages.1.steps`) of a parsed experiment to `raw`'s
/// value, read as TOML (a bare word that is not TOML is taken as a string).
pub fn apply_override(root: &mut toml::Value, raw: &str) -> Result<(), ExperimentError> {
    let fail = |message: String| ExperimentError::Override { raw: raw.into(), message };
    let (key, value) = raw.split_once('=').ok_or_else(|| fail("expected key=value".into()))?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut table) => table.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    set_path(root, &parts, value).map_err(fail)
}

fn set_path(node: &mut toml::Value, parts: &[&str], value: toml::Value) -> Result<(), String> {
    let (head, rest) = parts.split_first().expect("a key has at least one part");
    let child = match node {
        toml::Value::Table(table) => {
            if rest.is_empty() {
                table.insert(head.to_string(), value);
                return Ok(());
            }
            table.entry(head.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()))
        }
        toml::Value::Array(items) => {
            let index: usize = head.parse().map_err(|_| format!("`{head}`: an array is indexed by a number"))?;
            let len = items.len();
            let item = items.get_mut(index).ok_or_else(|| format!("index {index} is past the {len} entries"))?;
            if rest.is_empty() {
                *item = value;
                return Ok(());
            }
            item
        }
        _ => return Err(format!("`{head}`: its parent is neither a table nor an array")),
    };
    set_path(child, rest, value)
}

impl Experiment {
    /// Reads `path`, applies `overrides`, parses and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ExperimentError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Io { path: path.into(), source })?;
        let invalid = |message: String| ExperimentError::Invalid { path: path.into(), message };
        let text = if overrides.is_empty() {
            text
        } else {
            let mut root = toml::Value::Table(toml::from_str(&text).map_err(|e| invalid(e.to_string()))?);
            for raw in overrides {
                apply_override(&mut root, raw)?;
            }
            toml::to_string(&root).expect("a table serialises")
        };
        let experiment: Experiment = toml::from_str(&text).map_err(|e| {
            // With overrides, positions refer to the re-serialised experiment: say so.
            let note = if overrides.is_empty() { String::new() } else { format!(" (with overrides {overrides:?})") };
            invalid(format!("{e}{note}"))
        })?;
        experiment.validate().map_err(invalid)?;
        Ok(experiment)
    }

    /// A stage that trains LoRA adapters needs the experiment to have them.
    fn check_lora(&self) -> Result<(), String> {
        match self.stages.iter().find(|s| s.trainable == Trainable::Lora) {
            Some(s) if self.lora.is_none() => Err(format!(
                "stage `{}` trains LoRA adapters (trainable = \"lora\") but the experiment has none: add a [lora] \
                 section, e.g. `[lora]` with `rank = 8` and `alpha = 16`",
                s.name
            )),
            _ => Ok(()),
        }
    }

    /// Constraints serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.data;
        if d.block_size == 0 || d.batch_size == 0 || d.grad_accumulation == 0 {
            return Err("data.block_size, data.batch_size and data.grad_accumulation must be positive".into());
        }
        if !d.batch_size.is_multiple_of(d.grad_accumulation) {
            return Err(format!(
                "data.batch_size ({}) must be a multiple of data.grad_accumulation ({})",
                d.batch_size, d.grad_accumulation
            ));
        }
        let o = &self.optimizer;
        if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) || o.eps <= 0.0 || o.weight_decay < 0.0 {
            return Err("optimizer: betas must be in [0, 1), eps > 0, weight_decay >= 0".into());
        }
        if self.stages.is_empty() {
            return Err("at least one [[stages]] entry is needed".into());
        }
        self.check_lora()?;
        if self.memory.frozen_dtype != StorageDtype::F32 && !crate::trainable::teacher_is_view(self) {
            return Err(format!(
                "memory.frozen_dtype = {:?} stores the weights no stage trains in half precision, but a stage trains \
                 every weight (trainable = \"all\"): use trainable = \"kernel\" or \"lora\" stages, or \
                 frozen_dtype = \"f32\"",
                self.memory.frozen_dtype
            ));
        }
        d.validate_schedule(self.total_steps())?;
        for (i, s) in self.stages.iter().enumerate() {
            let (shortest, _) = d.block_range(self.stage_steps(i));
            s.validate(self.memory.recompute, shortest).map_err(|m| format!("stages.{i} (`{}`): {m}", s.name))?;
        }
        let dist = &self.distributed;
        let world = dist.world();
        if !d.batch_size.is_multiple_of(d.grad_accumulation * world) {
            return Err(format!(
                "data.batch_size ({}) must be a multiple of data.grad_accumulation ({}) x the devices of the run ({world})",
                d.batch_size, d.grad_accumulation
            ));
        }
        if dist.nodes == 0 || dist.node_rank >= dist.nodes {
            return Err(format!("distributed: node_rank ({}) must be below nodes ({})", dist.node_rank, dist.nodes));
        }
        if dist.nodes > 1 && dist.orchestrator.is_none() {
            return Err("distributed: a multi-node run needs orchestrator = \"HOST:PORT\" (node 0's address)".into());
        }
        if dist.chunk_values == 0 || dist.chunk_values > 128 << 20 {
            return Err(format!(
                "distributed.chunk_values = {}: must be 1 ..= {} (128 Mi values, 512 MiB per message)",
                dist.chunk_values,
                128 << 20
            ));
        }
        if !dist.addresses.is_empty() && dist.addresses.len() != dist.nodes as usize {
            return Err(format!(
                "distributed.addresses has {} entries for {} nodes: give every node's HOST:PORT, in node-rank order",
                dist.addresses.len(),
                dist.nodes
            ));
        }
        // Calibration reads the teacher's attention on a text at conversion (`dijiang convert
        // --calibrate FILE`); the trainer converts without one, so it would silently start from
        // the reference's values.
        let calibrated = self.student.decay == dijiang_model::config::DecayKind::Calibrated
            || self.student.linear_weight == dijiang_model::LinearWeight::Calibrated;
        if calibrated {
            return Err(
                "student: decay = \"calibrated\" and linear_weight = \"calibrated\" are set by `dijiang convert \
                        --calibrate FILE`, not by the trainer's conversion yet; use the reference values here"
                    .into(),
            );
        }
        if !self.eval.tasks.is_empty() {
            dijiang_eval::Task::parse_list(&self.eval.tasks.join(",")).map_err(|e| format!("eval.tasks: {e}"))?;
        }
        if self.checkpoint.keep == 0 {
            return Err("checkpoint.keep must be at least 1".into());
        }
        Ok(())
    }

    /// Total optimizer steps over all stages.
    pub fn total_steps(&self) -> usize {
        self.stages.iter().map(|s| s.steps).sum()
    }

    /// The optimizer steps (0-based, over all stages) of stage `index`.
    pub fn stage_steps(&self, index: usize) -> Range<usize> {
        let start: usize = self.stages[..index].iter().map(|s| s.steps).sum();
        start..start + self.stages[index].steps
    }

    /// The stage that optimizer step `step` (0-based, over all stages) belongs to, and the step
    /// within that stage.
    pub fn stage_at(&self, step: usize) -> (usize, usize) {
        let mut start = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            if step < start + stage.steps {
                return (i, step - start);
            }
            start += stage.steps;
        }
        (self.stages.len() - 1, step - start)
    }

    /// Whether `step` steps complete a stage (the last stage's end is the run's).
    pub fn ends_a_stage(&self, step: usize) -> bool {
        self.stages
            .iter()
            .scan(0, |end, s| {
                *end += s.steps;
                Some(*end)
            })
            .any(|end| end == step)
    }

    /// The student's architecture: the teacher's, with this experiment's DiJiang attention.
    pub fn student_config(&self, teacher: &ModelConfig) -> ModelConfig {
        let student = teacher.clone().with_attention(AttentionKernelConfig::Dijiang(self.student.clone()));
        ModelConfig { lora: self.lora.clone(), ..student }
    }
}
