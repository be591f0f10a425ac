//! `dijiang train [experiment=NAME] [resume=false] [key=value ...] [--dry-run]`: runs
//! `experiments/NAME.toml` (default: `default`) in `runs/NAME/`, fetching and preparing its inputs
//! first with the experiment's own commands; the same command resumes after an interruption.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use dijiang_train::{Experiment, Outcome, Plan, RunOptions};

use crate::backend::Backend;

#[derive(clap::Args)]
pub struct Args {
    /// `experiment=NAME`, `run=DIR` (the run's directory under `--runs`; default: the experiment's
    /// name), `resume=false`, `devices=cuda:0,cuda:1`, and dotted-key overrides (`stages.0.steps=10`).
    args: Vec<String>,
    /// Check everything and print the plan (parameters, tokens, steps, memory), then exit.
    #[arg(long)]
    dry_run: bool,
    /// Directory of the experiment files.
    #[arg(long, default_value = "experiments")]
    experiments: PathBuf,
    /// Directory the runs go to (`RUNS/NAME`).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
}

/// Runs a fetch / prepare command of an experiment through the shell.
fn run_shell(command: &str) -> Result<()> {
    eprintln!("running `{command}`");
    let status = Command::new("sh").arg("-c").arg(command).status().with_context(|| format!("starting `{command}`"))?;
    if !status.success() {
        bail!("`{command}` failed ({status})");
    }
    Ok(())
}

/// The command line's words: the experiment's name, the run's, whether to resume, and overrides.
struct Words {
    name: String,
    run: Option<String>,
    resume: bool,
    overrides: Vec<String>,
}

impl Words {
    fn parse(args: Vec<String>) -> Result<Self> {
        let mut words = Self { name: "default".into(), run: None, resume: true, overrides: Vec::new() };
        for arg in args {
            if let Some(n) = arg.strip_prefix("experiment=") {
                words.name = n.to_string();
            } else if let Some(d) = arg.strip_prefix("devices=") {
                // Shorthand: `devices=cuda:0,cuda:1` or `devices=["cuda:0","cuda:1"]`.
                let list = if d.starts_with('[') {
                    d.to_string()
                } else {
                    let names: Vec<String> = d.split(',').map(|n| format!("\"{}\"", n.trim())).collect();
                    format!("[{}]", names.join(", "))
                };
                words.overrides.push(format!("distributed.devices={list}"));
            } else if let Some(r) = arg.strip_prefix("run=") {
                words.run = Some(r.to_string());
            } else if let Some(r) = arg.strip_prefix("resume=") {
                words.resume = r.parse().with_context(|| format!("`{arg}`: resume is true or false"))?;
            } else {
                words.overrides.push(arg);
            }
        }
        Ok(words)
    }
}

/// `DIR/NAME.toml` with `overrides`, or an error listing the experiments there.
fn load_experiment(dir: &Path, name: &str, overrides: &[String]) -> Result<Experiment> {
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        let known: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".toml").map(String::from))
            .collect();
        bail!("no experiment `{name}` ({} does not exist); experiments: {}", path.display(), known.join(", "));
    }
    Ok(Experiment::load(&path, overrides)?)
}

/// A flag set by the first Ctrl-C (checkpoint and stop after this step); the second exits at once.
fn ctrl_c_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: checkpointing after this step (Ctrl-C again to exit at once)");
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

pub fn run(args: Args) -> Result<()> {
    let words = Words::parse(args.args)?;
    let experiment = load_experiment(&args.experiments, &words.name, &words.overrides)?;
    crate::backend::devices(&experiment.distributed.devices)?;
    let plan = Plan::check(&experiment)?;
    print!("{}", plan.describe(&experiment));
    let run_dir = args.runs.join(words.run.as_deref().unwrap_or(&words.name));
    println!("run         {}", run_dir.display());
    if !plan.errors.is_empty() {
        bail!("cannot start:\n{}", plan.errors.join("\n"));
    }
    if args.dry_run {
        return Ok(());
    }
    for missing in &plan.missing {
        run_shell(&missing.command).with_context(|| format!("getting the {}", missing.what))?;
    }
    let devices = crate::backend::devices(&experiment.distributed.devices)?;
    let options = RunOptions { experiment, run_dir, resume: words.resume, stop: ctrl_c_flag()? };
    let outcome = dijiang_train::train::<Autodiff<Backend>>(options, &devices)?;
    print_outcome(&outcome);
    Ok(())
}

fn print_outcome(outcome: &Outcome) {
    if let (Some((first_step, first)), Some((step, last))) = (outcome.evaluations.first(), outcome.evaluations.last()) {
        println!("teacher     perplexity {:.3}", last.teacher_perplexity);
        println!(
            "student     perplexity {:.3} at step {first_step}, {:.3} at step {step}",
            first.perplexity, last.perplexity
        );
    }
    println!(
        "trained     {} steps, {} tokens, {:.0} s of training{}",
        outcome.step,
        outcome.tokens_seen,
        outcome.train_seconds,
        if outcome.interrupted { " (interrupted: run the same command to resume)" } else { "" }
    );
    if let Some(model) = &outcome.model {
        println!("model       {}", model.display());
    }
}
