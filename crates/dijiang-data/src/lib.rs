//! Real corpora to packed token shards, and back as deterministic, resumable batches.
//!
//! - [`prepare`]: text / JSON Lines / `.jsonl.zst` -> u16/u32 shards + [`manifest::Manifest`].
//! - [`dataset`]: memory-mapped shards as Burn `Dataset` windows, a seeded batch order with a
//!   saveable [`dataset::Cursor`], and a batcher producing input / target tensors.
//! - [`sources`]: how inputs are read into documents.
//! - [`fault`]: failing writes on purpose, for the tests of full disks and write errors.

pub mod dataset;
pub mod error;
pub mod fault;
pub mod manifest;
pub mod prepare;
pub mod sources;

pub use error::DataError;
