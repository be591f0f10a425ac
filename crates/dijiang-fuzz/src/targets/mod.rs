//! The fuzz targets: every parser of a file a user hands us, driven through the entry point the
//! user's command goes through (`Checkpoint::open` and the model build behind `import::load`,
//! `Tokenizer::for_model`, `Manifest::read` and the shard reader, `sources::read_file`,
//! `checkpoint::read`, `Experiment::load`), each with its seeds.

mod data;
mod model;
mod tokenizer;
mod train;

use std::fmt::Display;
use std::path::Path;

use crate::input::Input;

/// One parser under test.
#[derive(Debug)]
pub struct Target {
    /// The name `just fuzz NAME` takes.
    pub name: &'static str,
    /// What is parsed, through which entry point.
    pub about: &'static str,
    /// Runs the input written in a directory; a step's error goes to [`Errors`], and a failing
    /// step does not stop the independent ones after it.
    pub run: fn(&Path, &mut Errors),
    /// Well-formed inputs to mutate (some generated at test time from ../shared and models/).
    pub seeds: fn() -> anyhow::Result<Vec<Input>>,
}

/// The errors an input's steps returned, each with what its message must mention (the input's
/// directory, or a file in it: every error a user sees must say which file is at fault).
#[derive(Debug, Default)]
pub struct Errors(Vec<(String, Vec<String>)>);

impl Errors {
    /// The step's value, or `None` after recording its error, which must name `dir`.
    pub fn check<T, E: Display>(&mut self, dir: &Path, result: Result<T, E>) -> Option<T> {
        self.check_naming(result, &[&dir.display().to_string()])
    }

    /// The step's value, or `None` after recording its error, which must mention one of `names`.
    pub fn check_naming<T, E: Display>(&mut self, result: Result<T, E>, names: &[&str]) -> Option<T> {
        result.map_err(|e| self.0.push((format!("{e:#}"), names.iter().map(|n| n.to_string()).collect()))).ok()
    }

    pub fn into_inner(self) -> Vec<(String, Vec<String>)> {
        self.0
    }
}

static TARGETS: [Target; 12] = [
    model::GGUF,
    model::LLAMA2C,
    model::HF,
    model::NATIVE,
    tokenizer::TOK_BIN,
    tokenizer::TOKENIZER_JSON,
    data::MANIFEST,
    data::JSONL,
    data::ZST,
    data::TEXT,
    train::TRAINER_STATE,
    train::EXPERIMENT,
];

/// Every target.
pub fn all() -> &'static [Target] {
    &TARGETS
}

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
