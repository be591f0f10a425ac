//! Data seeds: prepared datasets (manifest and shards, u16 and u32 tokens) made at test time by
//! `prepare` with the llama2.c tokenizer seed, and text / JSON Lines / `.jsonl.zst` inputs written
//! here, with the malformed records `prepare` must count rather than choke on.

use anyhow::{Context, Result};
use dijiang_data::manifest::SplitRule;
use dijiang_data::prepare::{PrepareConfig, prepare};
use dijiang_model::tokenizer::Tokenizer;

use crate::input::Input;

const TEXT: &str = "Once upon a time, there was a little girl named Lily.\nShe liked to play.\n\n\
The cat sat on the mat. It was happy.\r\n\r\n\
Café, naïve, 日本語: unicode in a document.\n\n\n\
   \n\
A last paragraph without a final newline, 123 456.";

const JSONL: &str = r#"{"text": "Once upon a time, there was a little girl named Lily.", "meta": {"pile_set_name": "x"}}
{"text": "Escapes: \"quoted\", \\ backslash, \u00e9, \ud83d\ude00, tab\t, newline\n."}

{"text": 5}
{"no_text": "a record without the field"}
not json at all
{"text": ""}
{"text": "the last record, no newline at the end"}"#;

/// `prepare` run on [`TEXT`] with the llama2.c tokenizer seed, in shards of 16 tokens.
fn prepared(dir: &std::path::Path) -> Result<Input> {
    std::fs::create_dir_all(dir)?;
    let tok = dir.join("tok512.bin");
    std::fs::write(&tok, super::llama2c::tokenizer())?;
    let text = dir.join("docs.txt");
    std::fs::write(&text, TEXT.repeat(3))?;
    let out = dir.join("data");
    let config = PrepareConfig {
        inputs: vec![text],
        out: out.clone(),
        split: SplitRule { validation_fraction: 0.3, seed: 1 },
        strict: false,
        shard_tokens: 16,
        progress: false,
    };
    prepare(&Tokenizer::for_model(&tok)?, &config)?;
    Ok(Input::read_dir(&out)?)
}

/// The same dataset with u32 tokens: the manifest's dtype changed and every shard widened.
fn widened(input: &Input) -> Result<Input> {
    let mut out = input.clone();
    for (name, bytes) in &mut out.files {
        if name == "manifest.json" {
            let mut manifest: serde_json::Value = serde_json::from_slice(bytes)?;
            *manifest.get_mut("dtype").context("a dtype")? = "u32".into();
            *bytes = serde_json::to_vec_pretty(&manifest)?;
        } else {
            *bytes =
                bytes.chunks_exact(2).flat_map(|c| (u16::from_le_bytes([c[0], c[1]]) as u32).to_le_bytes()).collect();
        }
    }
    Ok(out)
}

pub fn manifest_seeds() -> Result<Vec<Input>> {
    let scratch = super::scratch("manifest")?;
    let u16 = prepared(&scratch.path)?;
    let u32 = widened(&u16)?;
    Ok(vec![u16, u32])
}

pub fn jsonl_seeds() -> Result<Vec<Input>> {
    Ok(vec![Input::single("docs.jsonl", JSONL.into()), Input::single("docs.jsonl", JSONL.replace('\n', "\r\n").into())])
}

/// Compressed JSON Lines: one frame, and two concatenated frames (what `zstd` writes for appended
/// files).
pub fn zst_seeds() -> Result<Vec<Input>> {
    let one = zstd::encode_all(JSONL.as_bytes(), 3)?;
    let mut two = zstd::encode_all(&JSONL.as_bytes()[..100], 1)?;
    two.extend(zstd::encode_all(&JSONL.as_bytes()[100..], 19)?);
    Ok(vec![Input::single("docs.jsonl.zst", one), Input::single("docs.jsonl.zst", two)])
}

pub fn text_seeds() -> Result<Vec<Input>> {
    Ok(vec![
        Input::single("docs.txt", TEXT.into()),
        Input::single("docs.txt", [b"\xef\xbb\xbf".as_slice(), TEXT.as_bytes(), b"\n\xff\xfe bad utf-8\n"].concat()),
    ])
}
