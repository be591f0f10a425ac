//! The training data loader's throughput (windows -> shuffled batches -> input/target tensors).

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use dijiang_data::dataset::{BatchOrder, Cursor, LmBatch, LmBatcher, Split, Windows};
use serde_json::json;

use super::write_json;
use crate::backend::Backend;

pub fn run(data: &Path, block: usize, batch: usize, batches: usize, out: &Path) -> Result<()> {
    let windows = Windows::open(data, Split::Train, block)?;
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
    let path = write_json(out, "data-loader.json", &result)?;
    println!(
        "data loader: {:.0} tokens/s ({batches} batches of {batch} x {block}) -> {}",
        tokens / seconds,
        path.display()
    );
    Ok(())
}
