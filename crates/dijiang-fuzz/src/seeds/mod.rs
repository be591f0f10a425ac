//! Seed inputs: small well-formed files written here (GGUF and llama2.c checkpoints, tokenizers,
//! HF directories, data), the repository's own fixtures and experiments, and files generated at
//! test time from `../shared` and `models/` (never copied into the repository). Seeds from those
//! two folders are skipped, with a note, where they are absent.

pub mod data;
pub mod gguf;
pub mod hf;
pub mod llama2c;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/<rel>` beside the checkout, if present.
pub fn shared(rel: &str) -> Option<PathBuf> {
    present(repo().join("../shared").join(rel))
}

/// The SmolLM2 GGUF `just fetch-smollm2` brings, if present.
pub fn smollm2_gguf() -> Option<PathBuf> {
    present(repo().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn present(path: PathBuf) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    eprintln!("fuzz seeds: {} is absent, its seeds are skipped", path.display());
    None
}

/// Deterministic small values for tensor data (not random: seeds must be the same every run).
pub fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(salt) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// A scratch directory for generating seeds, removed on drop.
pub(crate) fn scratch(tag: &str) -> anyhow::Result<crate::input::Scratch> {
    Ok(crate::input::Scratch::new(&format!("seeds-{tag}"))?)
}
