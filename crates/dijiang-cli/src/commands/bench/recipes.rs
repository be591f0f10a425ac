//! `dijiang bench recipes`: a few real trainer steps of every stage of the given experiments on
//! seeded random weights of their architecture presets (`dijiang_train::recipes`), with tokens/s,
//! the memory model's estimate per stage and the process's peak resident memory, and whether
//! half-precision storage of frozen weights gives the f32 logits on a small model. `bench/gpu-check.sh` runs it on a
//! CUDA machine for the 7B experiments (and samples the device memory beside it); CI runs the same
//! steps on a small preset on Flex and wgpu (`crates/dijiang-train/tests/recipes.rs`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use dijiang_model::ModelConfig;
use dijiang_train::Experiment;
use dijiang_train::recipes::{as_checked, check_stages, half_storage_logits_error};
use serde_json::json;

use super::{Run, machine, write_json};

#[derive(clap::Args)]
pub struct Args {
    /// The experiments whose stages are stepped.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "experiments/dijiang-7b.toml,experiments/dijiang-7b-reference.toml"
    )]
    pub experiments: Vec<PathBuf>,
    /// Another architecture preset than the experiments' `teacher.preset` (a small one for a quick
    /// check of the code path).
    #[arg(long)]
    pub preset: Option<String>,
    /// Another block length than the experiments' `data.block_size`.
    #[arg(long)]
    pub block: Option<usize>,
    /// The small model whose logits with frozen weights stored in f16 are compared with f32
    /// storage (random weights rounded to f16, as an f16 checkpoint's).
    #[arg(long, default_value = "smollm2-135m")]
    pub half_check_preset: String,
    /// Steps per stage (the first includes warm-up).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// The results go to OUT/recipes.json.
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes.
fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

pub fn run(args: &Args) -> Result<()> {
    type B = crate::backend::Backend;
    let device: burn::tensor::Device<B> = Default::default();
    let mut experiments = Vec::new();
    for path in &args.experiments {
        let overrides: Vec<String> = args.block.map(|b| format!("data.block_size={b}")).into_iter().collect();
        let experiment = Experiment::load(path, &overrides)
            .with_context(|| format!("reading {} (run from the repository root)", path.display()))?;
        let preset = args.preset.clone().or(experiment.teacher.preset.clone()).with_context(|| {
            format!("{}: no teacher.preset to take the architecture from (give --preset)", path.display())
        })?;
        let teacher = ModelConfig::preset(&preset).with_context(|| format!("`{preset}` is not a preset"))?;
        let checked = as_checked::<B>(&experiment, &device);
        println!(
            "recipes: {} on {preset} ({} stages, {} steps each)",
            path.display(),
            checked.stages.len(),
            args.steps
        );
        let stages = check_stages::<Autodiff<B>>(&checked, &teacher, args.steps, &device)?;
        for s in &stages {
            let seconds: Vec<String> = s.step_seconds.iter().map(|t| format!("{t:.2}")).collect();
            println!(
                "  {} ({}, {} x {}): {:.0} tokens/s (steps {} s), losses {:?}; model: {}",
                s.stage,
                s.mode,
                s.batch,
                s.block,
                s.tokens_per_s,
                seconds.join(" / "),
                s.losses,
                s.estimate
            );
        }
        experiments.push(json!({
            "experiment": path, "preset": preset, "frozen_dtype": format!("{:?}", checked.memory.frozen_dtype),
            "stages": stages, "peak_resident_bytes_so_far": peak_resident(),
        }));
    }
    let small = &args.half_check_preset;
    let small = ModelConfig::preset(small).with_context(|| format!("`{small}` is not a preset"))?;
    let half = half_storage_logits_error::<Autodiff<B>>(&small, &device)?;
    println!("half-precision storage, largest logit difference against f32 (relative): {half:?}");
    let result = json!({
        "bench": "recipes",
        "machine": machine::<B>(Run::Primary),
        "steps": args.steps,
        "experiments": experiments,
        "half_storage_logits_error": half,
        "peak_resident_bytes": peak_resident(),
    });
    let path = write_json(&args.out, "recipes.json", &result)?;
    println!("recipes -> {}", path.display());
    Ok(())
}
