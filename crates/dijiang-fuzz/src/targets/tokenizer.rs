//! Tokenizer files: llama2.c's `tok*.bin` and HF `tokenizer.json`, loaded through
//! `Tokenizer::for_model` as `generate`, `eval` and `prepare` do, then used: encoding, decoding
//! (ids out of range included) and the content fingerprint data manifests record.

use std::path::Path;

use dijiang_model::tokenizer::Tokenizer;

use super::{Errors, Target};
use crate::seeds;

/// Finds the tokenizer of `path` and uses it.
pub(super) fn use_tokenizer_of(path: &Path, dir: &Path, errors: &mut Errors) {
    let Some(tokenizer) = errors.check(dir, Tokenizer::for_model(path)) else { return };
    for text in ["", "Once upon a time, 123 cats.", " ünïcödé 日本語\n\t<|endoftext|></s>"] {
        if let Some(ids) = errors.check(dir, tokenizer.encode(text)) {
            tokenizer.decode(&ids);
        }
    }
    let vocab = tokenizer.vocab_size() as u32;
    tokenizer.decode(&[0, 1, 2, vocab.saturating_sub(1), vocab, u32::MAX]);
    tokenizer.fingerprint();
}

fn tok_bin(dir: &Path, errors: &mut Errors) {
    use_tokenizer_of(&dir.join("tok512.bin"), dir, errors);
}

fn tokenizer_json(dir: &Path, errors: &mut Errors) {
    use_tokenizer_of(&dir.join("tokenizer.json"), dir, errors);
}

pub const TOK_BIN: Target = Target {
    name: "tokbin",
    about: "llama2.c tokenizers (tok512.bin: scores, lengths, pieces): Tokenizer::for_model, encode, decode",
    run: tok_bin,
    seeds: seeds::llama2c::tokenizer_seeds,
};

pub const TOKENIZER_JSON: Target = Target {
    name: "tokenizer-json",
    about: "HF tokenizer.json (BPE, WordLevel, WordPiece, Unigram; normalizers, pre-tokenizers, templates): \
            Tokenizer::for_model, encode, decode",
    run: tokenizer_json,
    seeds: seeds::tokenizer::seeds,
};
