//! `dijiang bench <what>`: measurements written as JSON under `runs/bench/`.
//!
//! - `data`: the training data loader's throughput (windows -> shuffled batches -> input/target
//!   tensors), in tokens per second.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use dijiang_data::dataset::{BatchOrder, Cursor, LmBatch, LmBatcher, Split, Windows};
use serde_json::json;

use crate::backend::Backend;

#[derive(clap::Subcommand)]
pub enum What {
    /// Data loader throughput on a prepared dataset.
    Data {
        /// A directory written by `dijiang prepare`.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 512)]
        block: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 2000)]
        batches: usize,
        #[arg(long, default_value = "runs/bench")]
        out: PathBuf,
    },
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Data { data, block, batch, batches, out } => {
            let windows = Windows::open(&data, Split::Train, block)?;
            anyhow::ensure!(
                windows.len() >= batch,
                "{} has {} windows of {block}: fewer than one batch",
                data.display(),
                windows.len()
            );
            let mut order = BatchOrder::new(windows.len(), 0, Cursor::default());
            let device = Default::default();
            let start = Instant::now();
            let mut checksum = 0i64;
            for _ in 0..batches {
                let items = order.next_batch(batch).into_iter().map(|i| windows.get(i).expect("window")).collect();
                let b: LmBatch<Backend> = LmBatcher.batch(items, &device);
                checksum += b.targets.dims()[1] as i64;
            }
            let seconds = start.elapsed().as_secs_f64();
            let tokens = (batches * batch * block) as f64;
            let result = json!({
                "bench": "data-loader",
                "data": data.display().to_string(),
                "block": block,
                "batch": batch,
                "batches": batches,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "checksum": checksum,
            });
            let path = write_json(&out, "data-loader.json", &result)?;
            println!(
                "data loader: {:.0} tokens/s ({batches} batches of {batch} x {block}) -> {}",
                tokens / seconds,
                path.display()
            );
            Ok(())
        }
    }
}
