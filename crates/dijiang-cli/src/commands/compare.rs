//! `dijiang compare RUN_DIR...`: one Markdown table row per training run, from what the run wrote
//! (`experiment.toml`, `metrics.jsonl`, `outcome.json`) and, where present, `fidelity.json` (the
//! output of `dijiang fidelity` on held-out text, saved in the run directory).
//!
//! Columns: the feature-map variant, the mean attention TV distance on the validation window
//! (all layers) at step 0 and at the end of the first stage, the per-layer TV of `fidelity.json`,
//! held-out perplexity after the first stage and at the end, the zero-shot metrics of `eval.tasks`
//! at the end, tokens trained on and training time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dijiang_train::experiment::Experiment;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (`runs/.../NAME`, as `dijiang train` writes them).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// A `dijiang fidelity` JSON of the converted, untrained student: the table's first row.
    #[arg(long)]
    before: Option<PathBuf>,
    /// Also write the table to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `tag -> step -> value` from a run's metrics.jsonl.
/// Each tag's values by step.
type Metrics = BTreeMap<String, BTreeMap<usize, f64>>;

fn read_metrics(path: &Path) -> Result<Metrics> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut metrics: Metrics = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        // A non-finite value (a skipped step's loss, an overflowing perplexity) is written as null.
        if v["value"].is_null() {
            continue;
        }
        let (Some(step), Some(tag), Some(value)) = (v["step"].as_u64(), v["tag"].as_str(), v["value"].as_f64()) else {
            anyhow::bail!("{}:{}: expected {{step, tag, value}}", path.display(), i + 1);
        };
        metrics.entry(tag.to_string()).or_default().insert(step as usize, value);
    }
    Ok(metrics)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// `mean (l2 / l10 / ...)` of a fidelity JSON's TV distances.
fn fidelity_cell(fidelity: &serde_json::Value) -> String {
    let layers: Vec<String> = fidelity["layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["tv_mean"].as_f64()).map(|v| format!("{v:.3}")).collect())
        .unwrap_or_default();
    match fidelity["tv_mean"].as_f64() {
        Some(mean) => format!("**{mean:.3}** ({})", layers.join(" / ")),
        None => "-".into(),
    }
}

/// The last value of each `eval/zero_shot/TASK/METRIC` (`eval.tasks`), as `TASK METRIC value`.
fn zero_shot_cell(metrics: &Metrics) -> String {
    let scores: Vec<String> = metrics
        .iter()
        .filter_map(|(tag, values)| {
            let name = tag.strip_prefix("eval/zero_shot/")?.replace('/', " ");
            let (_, v) = values.last_key_value()?;
            Some(format!("{name} {v:.3}"))
        })
        .collect();
    if scores.is_empty() { "-".into() } else { scores.join("; ") }
}

fn cell(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

pub fn run(args: Args) -> Result<()> {
    let mut table = String::from(
        "| run | feature training | TV validation: step 0 -> after stage 1 | TV held-out (layers) after stage 1 \
         | perplexity after stage 1 -> end | zero-shot at the end | tokens | training time |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut layers_label = None;
    if let Some(before) = &args.before {
        let fidelity = read_json(before)?;
        layers_label = layers_of(&fidelity);
        writeln!(table, "| converted, untrained | (all) | | {} | | | 0 | 0 s |", fidelity_cell(&fidelity))?;
    }
    for dir in &args.runs {
        let experiment = Experiment::load(&dir.join("experiment.toml"), &[])
            .with_context(|| format!("{} is not a run directory", dir.display()))?;
        let metrics = read_metrics(&dir.join("metrics.jsonl"))?;
        let outcome = read_json(&dir.join("outcome.json"))
            .with_context(|| format!("{} has not finished (no outcome.json)", dir.display()))?;
        let stage1 = experiment.stages[0].steps;
        let at = |tag: &str, step: usize| metrics.get(tag).and_then(|m| m.get(&step)).copied();
        let last = |tag: &str| metrics.get(tag).and_then(|m| m.last_key_value()).map(|(_, v)| *v);
        let fidelity_path = dir.join("fidelity.json");
        let held_out = if fidelity_path.exists() {
            let fidelity = read_json(&fidelity_path)?;
            layers_label = layers_label.or_else(|| layers_of(&fidelity));
            fidelity_cell(&fidelity)
        } else {
            "-".into()
        };
        let student = &experiment.student;
        let mut variant = serde_json::to_value(student.feature_training)?.as_str().unwrap_or("?").to_string();
        if student.feature_weights {
            variant.push_str(" + D");
        }
        if let Some(m) = student.features {
            variant.push_str(&format!(", {m} features"));
        }
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        writeln!(
            table,
            "| {name} | {} | {} -> {} | {held_out} | {} -> {} | {} | {} | {:.0} s |",
            variant,
            cell(at("eval/attention_tv", 0), 3),
            cell(at("eval/attention_tv", stage1), 3),
            cell(at("eval/perplexity", stage1), 1),
            cell(last("eval/perplexity"), 1),
            zero_shot_cell(&metrics),
            dijiang_train::plan::group(outcome["tokens_seen"].as_u64().unwrap_or(0) as usize),
            outcome["train_seconds"].as_f64().unwrap_or(0.0),
        )?;
    }
    if let Some(label) = layers_label {
        writeln!(table, "\nHeld-out TV: mean (per layer) over layers {label}.")?;
    }
    print!("{table}");
    if let Some(out) = &args.out {
        dijiang_train::checkpoint::write_atomic(out, table.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("table       {}", out.display());
    }
    Ok(())
}

fn layers_of(fidelity: &serde_json::Value) -> Option<String> {
    let layers: Vec<String> =
        fidelity["layers"].as_array()?.iter().filter_map(|l| l["layer"].as_u64()).map(|l| l.to_string()).collect();
    Some(layers.join(", "))
}
