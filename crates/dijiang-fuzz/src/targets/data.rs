//! Data files: the manifest of prepared data with its shards (read as training does: windows and
//! a batch order over them), and the text / JSON Lines / `.jsonl.zst` inputs of `prepare`.

use std::path::Path;

use burn::data::dataset::Dataset;
use dijiang_data::dataset::{BatchOrder, Cursor, Split, Windows};
use dijiang_data::manifest::Manifest;
use dijiang_data::sources::read_file;

use super::{Errors, Target};
use crate::seeds;

fn manifest(dir: &Path, errors: &mut Errors) {
    let Some(manifest) = errors.check(dir, Manifest::read(dir)) else { return };
    errors.check(dir, manifest.check_tokenizer(&manifest.tokenizer.fingerprint, dir));
    for split in [Split::Train, Split::Validation] {
        let Some(windows) = errors.check(dir, Windows::open(dir, split, 4)) else { continue };
        let n = windows.len();
        if n > 0 {
            windows.get(0);
            windows.get(n - 1);
            BatchOrder::new(n, 7, Cursor::default()).next_batch(n.min(2));
        }
    }
}

/// Reads every record of the single input file (bad records are counted, not errors).
fn records(dir: &Path, name: &str, errors: &mut Errors) {
    let mut count = 0usize;
    errors.check(dir, read_file(&dir.join(name), |_| count += 1));
}

fn jsonl(dir: &Path, errors: &mut Errors) {
    records(dir, "docs.jsonl", errors);
}

fn zst(dir: &Path, errors: &mut Errors) {
    records(dir, "docs.jsonl.zst", errors);
}

fn text(dir: &Path, errors: &mut Errors) {
    records(dir, "docs.txt", errors);
}

pub const MANIFEST: Target = Target {
    name: "manifest",
    about: "prepared data (manifest.json + u16/u32 shards): Manifest::read, Windows::open, windows, batch order",
    run: manifest,
    seeds: seeds::data::manifest_seeds,
};

pub const JSONL: Target = Target {
    name: "jsonl",
    about: "JSON Lines inputs of prepare: sources::read_file",
    run: jsonl,
    seeds: seeds::data::jsonl_seeds,
};

pub const ZST: Target = Target {
    name: "zst",
    about: "zstd-compressed JSON Lines inputs of prepare: sources::read_file",
    run: zst,
    seeds: seeds::data::zst_seeds,
};

pub const TEXT: Target = Target {
    name: "text",
    about: "plain-text inputs of prepare (documents split at blank lines): sources::read_file",
    run: text,
    seeds: seeds::data::text_seeds,
};
