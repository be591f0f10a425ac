//! Reading prepared data: memory-mapped shards of one split seen as one token stream, cut into
//! non-overlapping windows of `block + 1` tokens (inputs and next-token targets), behind Burn's
//! `Dataset` trait; a seeded shuffled order over windows, epoch by epoch, with a saveable cursor so
//! that a resumed run sees exactly the batches an uninterrupted one would have.

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::prelude::*;
use memmap2::Mmap;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::manifest::{Manifest, TokenType};

/// Which split to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

/// One split's tokens as one stream: its shards memory-mapped, or tokens held in memory (tests,
/// small in-process runs).
#[derive(Debug)]
pub struct TokenStream {
    storage: Storage,
    /// Token offset where each shard starts, plus the total at the end.
    starts: Vec<usize>,
}

#[derive(Debug)]
enum Storage {
    Mapped { shards: Vec<Mmap>, dtype: TokenType },
    Memory(Vec<u32>),
}

#[allow(unsafe_code)]
fn map(path: &Path) -> Result<Mmap, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    // SAFETY: read-only mapping of a shard we do not modify.
    unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(path, e))
}

impl TokenStream {
    pub fn open(dir: &Path, manifest: &Manifest, split: Split) -> Result<Self, DataError> {
        let info = match split {
            Split::Train => &manifest.train,
            Split::Validation => &manifest.validation,
        };
        let (mut shards, mut starts) = (Vec::new(), vec![0]);
        for shard in &info.shards {
            let path = dir.join(&shard.file);
            let mmap = map(&path)?;
            // Checked: `tokens` comes from the manifest, and must not overflow into a match.
            if shard.tokens.checked_mul(manifest.dtype.bytes()) != Some(mmap.len()) {
                return Err(DataError::Invalid(format!(
                    "{}: {} bytes, but the manifest says {} tokens of {:?}: the dataset is damaged, prepare it again",
                    path.display(),
                    mmap.len(),
                    shard.tokens,
                    manifest.dtype
                )));
            }
            starts.push(starts.last().expect("nonempty") + shard.tokens);
            shards.push(mmap);
        }
        Ok(Self { storage: Storage::Mapped { shards, dtype: manifest.dtype }, starts })
    }

    /// A stream of `tokens` held in memory.
    pub fn from_tokens(tokens: Vec<u32>) -> Self {
        Self { starts: vec![0, tokens.len()], storage: Storage::Memory(tokens) }
    }

    pub fn len(&self) -> usize {
        *self.starts.last().expect("nonempty")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens `[start, start + n)`, across shard boundaries.
    pub fn read(&self, start: usize, n: usize) -> Vec<u32> {
        let (shards, dtype) = match &self.storage {
            Storage::Memory(tokens) => return tokens[start..start + n].to_vec(),
            Storage::Mapped { shards, dtype } => (shards, *dtype),
        };
        let mut out = Vec::with_capacity(n);
        let mut pos = start;
        while out.len() < n {
            let shard = self.starts.partition_point(|s| *s <= pos) - 1;
            let local = pos - self.starts[shard];
            let take = (n - out.len()).min(self.starts[shard + 1] - pos);
            let b = dtype.bytes();
            let slice = &shards[shard][local * b..(local + take) * b];
            match dtype {
                TokenType::U16 => out.extend(slice.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
                TokenType::U32 => {
                    out.extend(slice.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                }
            }
            pos += take;
        }
        out
    }
}

/// Non-overlapping windows of `block + 1` tokens: window `i` starts at token `i * block`.
#[derive(Debug, Clone)]
pub struct Windows {
    stream: Arc<TokenStream>,
    block: usize,
}

impl Windows {
    pub fn new(stream: Arc<TokenStream>, block: usize) -> Self {
        assert!(block > 0, "block size must be positive");
        Self { stream, block }
    }

    /// Opens `split` of the prepared dataset in `dir`.
    pub fn open(dir: &Path, split: Split, block: usize) -> Result<Self, DataError> {
        let manifest = Manifest::read(dir)?;
        Ok(Self::new(Arc::new(TokenStream::open(dir, &manifest, split)?), block))
    }

    pub fn block(&self) -> usize {
        self.block
    }

    /// The same tokens in windows of `block` (the stream is shared, not copied).
    pub fn with_block(&self, block: usize) -> Self {
        Self::new(self.stream.clone(), block)
    }
}

impl Dataset<Vec<u32>> for Windows {
    fn get(&self, index: usize) -> Option<Vec<u32>> {
        (index < self.len()).then(|| self.stream.read(index * self.block, self.block + 1))
    }

    fn len(&self) -> usize {
        self.stream.len().saturating_sub(1) / self.block
    }
}

/// Where a reader is: the epoch and the number of windows already taken in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: usize,
}

/// A seeded shuffled order over `n` windows, reshuffled every epoch, read in batches.
#[derive(Debug, Clone)]
pub struct BatchOrder {
    seed: u64,
    n: usize,
    cursor: Cursor,
    order: Vec<u32>,
}

impl BatchOrder {
    pub fn new(n: usize, seed: u64, cursor: Cursor) -> Self {
        let order = Self::permutation(n, seed, cursor.epoch);
        Self { seed, n, cursor, order }
    }

    fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e3779b97f4a7c15));
        order.shuffle(&mut rng);
        order
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The next `batch` window indices; an epoch's leftover windows (fewer than a batch) are
    /// skipped and a new epoch starts with a new order.
    ///
    /// # Panics
    /// If there are fewer windows than one batch.
    pub fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        assert!(batch > 0 && batch <= self.n, "{} windows cannot fill a batch of {batch}", self.n);
        if self.cursor.position + batch > self.n {
            self.cursor = Cursor { epoch: self.cursor.epoch + 1, position: 0 };
            self.order = Self::permutation(self.n, self.seed, self.cursor.epoch);
        }
        let start = self.cursor.position;
        self.cursor.position += batch;
        self.order[start..start + batch].iter().map(|&i| i as usize).collect()
    }
}

/// Inputs and next-token targets.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// `[batch, block]`
    pub inputs: Tensor<B, 2, Int>,
    /// `[batch, block]`
    pub targets: Tensor<B, 2, Int>,
}

/// Windows of `block + 1` tokens -> (first `block`, last `block`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LmBatcher;

impl<B: Backend> Batcher<B, Vec<u32>, LmBatch<B>> for LmBatcher {
    fn batch(&self, items: Vec<Vec<u32>>, device: &B::Device) -> LmBatch<B> {
        let b = items.len();
        let block = items[0].len() - 1;
        let mut inputs = Vec::with_capacity(b * block);
        let mut targets = Vec::with_capacity(b * block);
        for w in &items {
            inputs.extend(w[..block].iter().map(|&t| t as i64));
            targets.extend(w[1..].iter().map(|&t| t as i64));
        }
        LmBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [b, block]), device),
            targets: Tensor::from_data(TensorData::new(targets, [b, block]), device),
        }
    }
}
