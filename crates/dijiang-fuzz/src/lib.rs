//! Seeded mutation fuzzing, on stable Rust and without libFuzzer, of every parser of a file a user
//! hands dijiang: GGUF, HF directories (config.json, safetensors, shard indexes), llama2.c
//! checkpoints and `tok*.bin` tokenizers, `tokenizer.json`, our own model format, data manifests
//! and shards, the text / JSON Lines / `.jsonl.zst` inputs of `prepare`, `trainer.json` and
//! experiment TOML (issue 21).
//!
//! Every input must end in `Ok` or in errors that name the input's file: no panic, no hang, no
//! allocation beyond what the input's size justifies.
//!
//! - [`mutate`]: the mutations, from a seeded generator (a campaign is reproducible from its seed);
//!   [`tree`]: mutations of JSON / TOML documents that keep their syntax; [`structure`]: repairs
//!   that keep a mutated container consistent with its mutated header.
//! - [`alloc`]: the global allocator of the fuzz test binary, which accounts each input's memory.
//! - [`runner`]: one input on a worker thread, with a watchdog and panics caught.
//! - [`campaign`]: the loop over seeds and mutants, the judgement of each input, minimisation.
//! - [`targets`]: each parser's entry point as a user's command reaches it; [`seeds`]: their inputs.
//!
//! `just fuzz PARSER N` runs a campaign at length; the test suite runs a few seconds per target
//! and every saved regression (`tests/fuzz-regressions/<target>/<case>/`).

pub mod alloc;
pub mod campaign;
pub mod input;
pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod structure;
pub mod targets;
pub mod tree;

pub use campaign::{Report, Settings};
pub use input::Input;
pub use targets::Target;
