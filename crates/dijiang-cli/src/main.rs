//! `dijiang`: the command-line front end (train, convert, generate, eval, evaluate, bench).
//!
//! The tensor backend is chosen at compile time by cargo features: `flex` (CPU, the default),
//! `ndarray` (the earlier CPU backend), `wgpu` (Vulkan / Metal / DX12), `cuda`. With several
//! enabled, the fastest wins (cuda > wgpu > flex > ndarray).

mod backend;
mod commands;
mod heap;
mod plot;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dijiang",
    version,
    about = "Convert softmax Transformers to DiJiang linear attention, distill and run them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an experiment: `dijiang train [experiment=NAME] [resume=false] [key=value ...] [--dry-run]`.
    Train(commands::train::Args),
    /// Architecture, parameter counts and storage of a model (a path or a preset name).
    Inspect {
        /// A model path (HF directory, .gguf, llama2.c .bin, saved model) or a preset (llama2-7b, ...).
        model: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build the DiJiang student of a softmax model and save it.
    Convert(commands::convert::Args),
    /// Generate text: prefill, then decode token by token (KV cache or recurrent state).
    Generate(commands::generate::Args),
    /// Mean next-token NLL and perplexity of a model on a text file.
    Eval(commands::eval::Args),
    /// Zero-shot accuracy on lm-evaluation-harness tasks (PIQA, HellaSwag, ..., MMLU, LAMBADA).
    Evaluate(commands::evaluate::Args),
    /// Attention fidelity of a DiJiang student against its softmax teacher, per layer and head.
    Fidelity(commands::fidelity::Args),
    /// One Markdown table row per training run (variant, attention fidelity, perplexity, tokens, time).
    Compare(commands::compare::Args),
    /// Tokenise corpora into packed shards with a train/validation split.
    Prepare(commands::prepare::Args),
    /// Measure and write the numbers to runs/bench/*.json.
    #[command(subcommand)]
    Bench(commands::bench::What),
    /// Check a run's checkpoints against their recorded digests.
    #[command(subcommand)]
    Checkpoint(commands::checkpoint::What),
    /// Print the compiled-in backend and its device.
    Backend,
}

fn main() -> Result<()> {
    heap::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Train(args) => commands::train::run(args),
        Command::Inspect { model, json } => commands::inspect::run(&model, json),
        Command::Convert(args) => commands::convert::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Evaluate(args) => commands::evaluate::run(args),
        Command::Prepare(args) => commands::prepare::run(args),
        Command::Fidelity(args) => commands::fidelity::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Bench(what) => commands::bench::run(what),
        Command::Checkpoint(what) => commands::checkpoint::run(what),
        Command::Backend => {
            println!("{}", backend::describe());
            Ok(())
        }
    }
}
