//! `dijiang prepare --tokenizer <model> --input <paths...> --out <dir>`: corpora to token shards.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use dijiang_data::manifest::SplitRule;
use dijiang_data::prepare::{PrepareConfig, prepare};
use dijiang_model::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// The model whose tokenizer to use (or a tokenizer.json).
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text files (documents split at blank lines), .jsonl with a `text` field, .jsonl.zst, or
    /// directories of them.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output directory (replaced when preparation succeeds).
    #[arg(long)]
    out: PathBuf,
    /// Fraction of documents held out for validation.
    #[arg(long, default_value_t = 0.01)]
    validation_fraction: f64,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop at the first malformed record instead of counting and skipping it.
    #[arg(long)]
    strict: bool,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 100_000_000)]
    shard_tokens: usize,
}

pub fn run(args: Args) -> Result<()> {
    let tokenizer = Tokenizer::for_model(&args.tokenizer)
        .with_context(|| format!("finding the tokenizer of {}", args.tokenizer.display()))?;
    let config = PrepareConfig {
        inputs: args.input,
        out: args.out.clone(),
        split: SplitRule { validation_fraction: args.validation_fraction, seed: args.seed },
        strict: args.strict,
        shard_tokens: args.shard_tokens,
        progress: true,
    };
    let start = Instant::now();
    let manifest = prepare(&tokenizer, &config)?;
    let seconds = start.elapsed().as_secs_f64();
    let bytes: u64 = manifest.sources.iter().map(|s| s.bytes).sum();
    let tokens = manifest.train.tokens + manifest.validation.tokens;
    println!("tokenizer   {} ({})", manifest.tokenizer.identity, manifest.tokenizer.fingerprint);
    println!(
        "train       {} documents, {} tokens, {} shard(s)",
        manifest.train.documents,
        manifest.train.tokens,
        manifest.train.shards.len()
    );
    println!("validation  {} documents, {} tokens", manifest.validation.documents, manifest.validation.tokens);
    if manifest.bad_records > 0 {
        println!("skipped     {} malformed record(s), e.g. {}", manifest.bad_records, manifest.bad_examples[0]);
    }
    println!(
        "throughput  {:.2} MB/s, {:.0} tokens/s ({:.1} s for {:.1} MB)",
        bytes as f64 / 1e6 / seconds,
        tokens as f64 / seconds,
        seconds,
        bytes as f64 / 1e6
    );
    println!("saved       {}", args.out.display());
    Ok(())
}
