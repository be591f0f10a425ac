//! A worker's training batches: each step's global batch is `grad_accumulation` micro-batches in
//! the run's seeded window order; every micro-batch is split evenly across all devices of all
//! nodes, and a worker takes its rank's share. Every worker draws the same order, so the shares are
//! disjoint and the cursor (saved in checkpoints) is the same everywhere.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use dijiang_data::dataset::{BatchOrder, Cursor, LmBatch, LmBatcher, Windows};

use crate::distributed::Rank;
use crate::experiment::DataConfig;

pub struct Batches<'a> {
    windows: &'a Windows,
    order: BatchOrder,
    /// Windows per micro-batch (all devices together).
    micro: usize,
    accumulation: usize,
    rank: Rank,
}

impl<'a> Batches<'a> {
    /// Batches of `windows` for `rank`, continuing from `cursor`.
    pub fn new(windows: &'a Windows, data: &DataConfig, seed: u64, rank: Rank, cursor: Cursor) -> Self {
        let micro = data.batch_size / data.grad_accumulation;
        let order = BatchOrder::new(windows.len(), seed, cursor);
        Self { windows, order, micro, accumulation: data.grad_accumulation, rank }
    }

    /// This worker's share of the next step's micro-batches.
    pub fn next_step<B: Backend>(&mut self, device: &B::Device) -> Vec<LmBatch<B>> {
        let share = self.micro / self.rank.world;
        let mine = self.rank.global * share..(self.rank.global + 1) * share;
        (0..self.accumulation)
            .map(|_| {
                let indices = self.order.next_batch(self.micro);
                let windows: Vec<Vec<u32>> =
                    indices[mine.clone()].iter().map(|&i| self.windows.get(i).expect("index from the order")).collect();
                LmBatcher.batch(windows, device)
            })
            .collect()
    }

    /// Where the order stands (after the batches taken so far).
    pub fn cursor(&self) -> Cursor {
        self.order.cursor()
    }
}
