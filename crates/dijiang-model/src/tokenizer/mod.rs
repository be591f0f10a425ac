//! Tokenizers behind one interface, found from the model they belong to:
//!
//! - an HF `tokenizer.json` beside the weights (LLaMA-2, Pythia, saved DiJiang models), through the
//!   `tokenizers` crate;
//! - the tokenizer embedded in a GGUF file (`tokenizer.ggml.model = gpt2`: byte-level BPE), rebuilt
//!   with the `tokenizers` crate from its vocabulary and merges;
//! - llama2.c's `tok<vocab>.bin` beside a llama2.c checkpoint ([`llama2c`]).

pub mod llama2c;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper};

use crate::error::ModelError;
use crate::import::gguf::{Gguf, Value};
use crate::import::native;
use llama2c::Llama2cTokenizer;

/// A tokenizer and its model's conventions for BOS / EOS.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    kind: Kind,
    /// Prepend BOS when encoding a prompt.
    pub add_bos: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Where it came from, e.g. `gguf:SmolLM2-135M-Instruct.Q4_1.gguf` (data manifests record it).
    pub identity: String,
}

#[derive(Debug, Clone)]
enum Kind {
    Hf(Box<tokenizers::Tokenizer>),
    Llama2c(Llama2cTokenizer),
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Format { path: path.into(), format: "tokenizer", reason: e.to_string() }
}

/// Runs a call into the `tokenizers` library, turning a panic into an error naming `path`. The
/// library panics on some malformed `tokenizer.json` files instead of returning an error (found by
/// fuzzing: a `decoder` matching no variant, `expect("Helper")` in `decoders/mod.rs`; a template
/// post-processor naming a special token it does not define, an unchecked map lookup at encode
/// time; upstream huggingface/tokenizers#2152), and a user's bad file must not crash a command.
fn contained<T>(path: &Path, call: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(tokenizer_error(path, format!("the tokenizers library failed on this file ({message})")))
    })
}

impl Tokenizer {
    /// The tokenizer of the model at `path` (or a tokenizer file itself).
    pub fn for_model(path: &Path) -> Result<Self, ModelError> {
        let dir =
            if path.is_dir() { path.to_path_buf() } else { path.parent().map(Path::to_path_buf).unwrap_or_default() };
        let is = |ext: &str| path.is_file() && path.extension().is_some_and(|e| e == ext);
        if path.is_file() && path.file_name().is_some_and(|n| n == "tokenizer.json") {
            return Self::from_tokenizer_json(path, None);
        }
        if is("gguf") {
            return Self::from_gguf(&Gguf::open(path)?, path);
        }
        // A llama2.c tokenizer file itself: `tok<vocab>.bin`.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(vocab) = name.strip_prefix("tok").and_then(|n| n.strip_suffix(".bin")).and_then(|n| n.parse().ok())
        {
            return Self::llama2c(path, vocab);
        }
        if is("bin") {
            let header = crate::import::llama2c::Llama2c::open(path)?.header();
            let tok = dir.join(format!("tok{}.bin", header.vocab_size));
            return Self::llama2c(&tok, header.vocab_size);
        }
        // A saved model of ours: its manifest knows the special tokens and the vocabulary size.
        let config =
            if native::is_native(&dir) { Some(native::NativeCheckpoint::open(&dir)?.manifest.config) } else { None };
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json, config.map(|c| (c.bos_token_id, c.eos_token_id)));
        }
        if let Some(config) = config {
            let tok = dir.join(format!("tok{}.bin", config.vocab_size));
            if tok.is_file() {
                return Self::llama2c(&tok, config.vocab_size);
            }
        }
        Err(ModelError::invalid(
            path,
            "no tokenizer found: expected tokenizer.json beside the model, a GGUF file, or a llama2.c .bin with tok<vocab>.bin beside it",
        ))
    }

    fn from_tokenizer_json(path: &Path, special: Option<(Option<u32>, Option<u32>)>) -> Result<Self, ModelError> {
        let mut tok = contained(path, || tokenizers::Tokenizer::from_file(path).map_err(|e| tokenizer_error(path, e)))?;
        // Documents and prompts are encoded whole: a file's truncation would silently cut every
        // document `prepare` reads, and its padding adds tokens nobody asked for (found by fuzzing:
        // `"padding": {"strategy": {"Fixed": 4294967295}}` made one encode allocate 17 GB).
        tok.with_truncation(None).map_err(|e| tokenizer_error(path, e))?;
        tok.with_padding(None);
        // BOS / EOS: the model's ids if known, else the usual names.
        let find = |names: &[&str]| names.iter().find_map(|n| tok.token_to_id(n));
        let (bos, eos) = special.unwrap_or((
            find(&["<s>", "<|begin_of_text|>", "<|endoftext|>"]),
            find(&["</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"]),
        ));
        Ok(Self {
            kind: Kind::Hf(Box::new(tok)),
            // tokenizer.json's own post-processor decides whether BOS is added.
            add_bos: false,
            bos,
            eos,
            identity: format!("tokenizer.json:{}", path.display()),
        })
    }

    /// The byte-level BPE tokenizer embedded in a GGUF file.
    pub fn from_gguf(gguf: &Gguf, path: &Path) -> Result<Self, ModelError> {
        let meta = &gguf.metadata;
        let model = meta.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::invalid(
                path,
                format!("embedded tokenizer `{model}`: only byte-level BPE (`gpt2`) GGUF tokenizers are supported"),
            ));
        }
        let strings = |key: &str| -> Result<Vec<String>, ModelError> {
            meta.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .ok_or_else(|| ModelError::invalid(path, format!("metadata `{key}` is missing")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| tokenizer_error(path, e))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::default().add_prefix_space(false);
        // llama.cpp's `smollm` pre-tokenizer splits digits one by one before the GPT-2 regex.
        let pre = meta.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
        let pre_tokenizer = if pre == "smollm" {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(byte_level),
            ]))
        } else {
            PreTokenizerWrapper::ByteLevel(byte_level)
        };
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        // Control tokens (type 3) and user-defined ones (type 4) are matched whole, never split.
        if let Some(types) = meta.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t.as_i64(), Some(3) | Some(4)))
                .map(|(_, s)| AddedToken::from(s.clone(), true))
                .collect();
            tok.add_special_tokens(&special);
        }
        let id = |key: &str| meta.get(&format!("tokenizer.ggml.{key}")).and_then(Value::as_i64).map(|v| v as u32);
        let add_bos = matches!(meta.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        Ok(Self {
            kind: Kind::Hf(Box::new(tok)),
            add_bos,
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
            identity: format!("gguf:{}", path.file_name().unwrap_or_default().to_string_lossy()),
        })
    }

    /// A llama2.c tokenizer file with `vocab_size` tokens.
    pub fn llama2c(path: &Path, vocab_size: usize) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::invalid(
                path,
                "llama2.c tokenizer not found beside the checkpoint (tok<vocab>.bin)",
            ));
        }
        Ok(Self {
            kind: Kind::Llama2c(Llama2cTokenizer::open(path, vocab_size)?),
            add_bos: true,
            bos: Some(llama2c::BOS),
            eos: Some(llama2c::EOS),
            identity: format!("llama2c:{}", path.file_name().unwrap_or_default().to_string_lossy()),
        })
    }

    /// A content fingerprint: the kind, the vocabulary size and an FNV-1a hash of every token's
    /// string in id order. Two tokenizers with the same fingerprint map text to the same ids
    /// (data manifests record it; training refuses data tokenised by another tokenizer).
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf29ce484222325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes.iter().chain(&[0xff]) {
                hash = (hash ^ *b as u64).wrapping_mul(0x100000001b3);
            }
        };
        let kind = match &self.kind {
            Kind::Hf(t) => {
                let mut vocab: Vec<(String, u32)> = t.get_vocab(true).into_iter().collect();
                vocab.sort_by_key(|(_, id)| *id);
                vocab.iter().for_each(|(s, _)| feed(s.as_bytes()));
                "bpe"
            }
            Kind::Llama2c(t) => {
                (0..t.vocab_size() as u32).for_each(|id| feed(t.piece_bytes(id)));
                "llama2c"
            }
        };
        format!("{kind}-{}-{hash:016x}", self.vocab_size())
    }

    pub fn vocab_size(&self) -> usize {
        match &self.kind {
            Kind::Hf(t) => t.get_vocab_size(true),
            Kind::Llama2c(t) => t.vocab_size(),
        }
    }

    /// Token ids of a prompt, with BOS first where the model uses one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.encode_with(text, self.add_bos)
    }

    /// Token ids of `text`, with or without BOS (documents in a corpus take none).
    pub fn encode_with(&self, text: &str, bos: bool) -> Result<Vec<u32>, ModelError> {
        match &self.kind {
            Kind::Hf(t) => {
                let identity = Path::new(&self.identity);
                let enc = contained(identity, || t.encode(text, true).map_err(|e| tokenizer_error(identity, e)))?;
                let mut ids = Vec::with_capacity(enc.len() + 1);
                if bos && let Some(b) = self.bos.filter(|b| enc.get_ids().first() != Some(b)) {
                    ids.push(b);
                }
                ids.extend_from_slice(enc.get_ids());
                Ok(ids)
            }
            Kind::Llama2c(t) => Ok(t.encode(text, bos, false)),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.kind {
            Kind::Hf(t) => {
                contained(Path::new(&self.identity), || Ok(t.decode(ids, true).unwrap_or_default())).unwrap_or_default()
            }
            Kind::Llama2c(t) => t.decode(ids),
        }
    }

    /// Saves the tokenizer beside a model saved in our format, so that the model is self-contained.
    pub fn save_beside(&self, dir: &Path, source: &Path) -> Result<PathBuf, ModelError> {
        match &self.kind {
            Kind::Hf(t) => {
                let out = dir.join("tokenizer.json");
                t.save(&out, false).map_err(|e| tokenizer_error(&out, e))?;
                Ok(out)
            }
            Kind::Llama2c(t) => {
                let name = format!("tok{}.bin", t.vocab_size());
                let from = source.parent().unwrap_or(Path::new(".")).join(&name);
                let out = dir.join(name);
                std::fs::copy(&from, &out).map_err(|e| ModelError::io(&from, e))?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs on which the `tokenizers` crate panics (fuzz regressions): each must be an error
    /// naming the file, at load or at the first encode.
    #[test]
    fn panics_of_the_tokenizers_crate_become_errors() {
        let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-regressions/tokenizer-json");
        for case in ["decoder-with-a-syntax-error", "template-naming-an-undefined-token"] {
            let path = cases.join(case).join("tokenizer.json");
            let err = Tokenizer::for_model(&path).and_then(|t| t.encode("once upon")).unwrap_err().to_string();
            assert!(err.contains(case) && err.contains("the tokenizers library failed"), "{case}: {err}");
        }
    }

    /// A file's padding and truncation are ignored: documents are encoded whole, and nothing is
    /// added to them (the fuzz regression asks for padding to 2^32 - 1 tokens).
    #[test]
    fn padding_and_truncation_of_the_file_are_ignored() {
        let case = "../../tests/fuzz-regressions/tokenizer-json/padding-to-4-billion-tokens";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(case).join("tokenizer.json");
        let ids =
            Tokenizer::for_model(&path).unwrap().encode("once upon once upon once upon once upon a time").unwrap();
        assert_eq!(ids, [1, 2, 1, 2, 1, 2, 1, 2, 0, 0]);
    }
}
