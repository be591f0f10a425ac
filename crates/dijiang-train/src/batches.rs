//! A worker's training batches: each step's global batch is `grad_accumulation` micro-batches in
//! the run's seeded window order; every micro-batch is split evenly across all devices of all
//! nodes, and a worker takes its rank's share. Every worker draws the same order, so the shares are
//! disjoint and the cursor (saved in checkpoints) is the same everywhere. Where the block length
//! changes (`data.block_schedule`), a new order over the new windows goes on from the cursor:
//! from the same position of another seeded permutation, so its windows may overlap text read
//! before (as much as the fraction of an epoch read so far).

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use dijiang_data::dataset::{BatchOrder, Cursor, LmBatch, LmBatcher, Windows};

use crate::distributed::Rank;
use crate::experiment::DataConfig;

pub struct Batches {
    data: DataConfig,
    seed: u64,
    /// The run's training windows at `data.block_size`, and those of the current length.
    base: Windows,
    windows: Windows,
    order: BatchOrder,
    /// Windows per micro-batch (all devices together).
    micro: usize,
    rank: Rank,
}

impl Batches {
    /// Batches of `train` for `rank`, for optimizer step `step` on, continuing from `cursor`.
    pub fn new(train: &Windows, data: &DataConfig, seed: u64, rank: Rank, step: usize, cursor: Cursor) -> Self {
        let windows = train.with_block(data.block_size_at(step));
        let order = BatchOrder::new(windows.len(), seed, cursor);
        let micro = data.batch_size / data.grad_accumulation;
        Self { data: data.clone(), seed, base: train.clone(), windows, order, micro, rank }
    }

    /// This worker's share of the micro-batches of optimizer step `step` (the steps in order).
    pub fn next_step<B: Backend>(&mut self, step: usize, device: &B::Device) -> Vec<LmBatch<B>> {
        let block = self.data.block_size_at(step);
        if block != self.windows.block() {
            *self = Self::new(&self.base, &self.data, self.seed, self.rank, step, self.cursor());
        }
        let share = self.micro / self.rank.world;
        let mine = self.rank.global * share..(self.rank.global + 1) * share;
        (0..self.data.grad_accumulation)
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
