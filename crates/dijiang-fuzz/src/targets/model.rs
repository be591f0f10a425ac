//! Checkpoint formats: each input is opened and built into a model as `import::load` does (what
//! `dijiang generate`, `eval` and `convert` do first), and where the format carries a tokenizer,
//! that is loaded and used too.

use std::path::Path;

use dijiang_model::cpu::Cpu;
use dijiang_model::import;

use super::tokenizer::use_tokenizer_of;
use super::{Errors, Target};
use crate::seeds;

type B = Cpu;

/// Opens the checkpoint at `path` and builds its model (on the CPU; the seeds are tiny, and a
/// mutant can only make a model as large as the values its file holds).
fn load_model(path: &Path, dir: &Path, errors: &mut Errors) {
    errors.check(dir, import::load::<B>(path, &Default::default()).map(drop));
}

fn gguf(dir: &Path, errors: &mut Errors) {
    let path = dir.join("model.gguf");
    load_model(&path, dir, errors);
    use_tokenizer_of(&path, dir, errors);
}

fn llama2c(dir: &Path, errors: &mut Errors) {
    // The tokenizer of a llama2.c checkpoint is the `tok<vocab>.bin` beside it.
    let path = dir.join("model.bin");
    load_model(&path, dir, errors);
    use_tokenizer_of(&path, dir, errors);
}

fn hf(dir: &Path, errors: &mut Errors) {
    load_model(dir, dir, errors);
}

fn native(dir: &Path, errors: &mut Errors) {
    load_model(dir, dir, errors);
    use_tokenizer_of(dir, dir, errors);
}

pub const GGUF: Target = Target {
    name: "gguf",
    about: "GGUF v3 (header, typed metadata, tensor infos, quantised blocks, embedded BPE tokenizer): \
            import::load + Tokenizer::for_model",
    run: gguf,
    seeds: seeds::gguf::seeds,
};

pub const LLAMA2C: Target = Target {
    name: "llama2c",
    about: "llama2.c checkpoints (7 x i32 header, f32 arrays) with tok512.bin beside: import::load + \
            Tokenizer::for_model",
    run: llama2c,
    seeds: seeds::llama2c::model_seeds,
};

pub const HF: Target = Target {
    name: "hf",
    about: "HF directories: config.json, safetensors headers and data, model.safetensors.index.json \
            shards: import::load",
    run: hf,
    seeds: seeds::hf::hf_seeds,
};

pub const NATIVE: Target = Target {
    name: "native",
    about: "our format (dijiang.json + model.safetensors, tokenizer.json): import::load + \
            Tokenizer::for_model",
    run: native,
    seeds: seeds::hf::native_seeds,
};
