//! Prepared data: exact round trips on real text, deterministic splits and batch orders, a cursor
//! that resumes in another process, and the handling of malformed inputs.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{shared, smollm2_gguf};

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::data::dataset::Dataset;
use dijiang_data::dataset::{BatchOrder, Cursor, Split, TokenStream, Windows};
use dijiang_data::manifest::{Manifest, SplitRule};
use dijiang_data::prepare::{PrepareConfig, prepare};
use dijiang_data::sources::{Record, read_file};
use dijiang_model::tokenizer::Tokenizer;

/// stories260K's llama2.c tokenizer (small, in ../shared).
fn llama2c() -> Option<Tokenizer> {
    shared("models/stories260K/tok512.bin").map(|p| Tokenizer::llama2c(&p, 512).unwrap())
}

/// SmolLM2's byte-level BPE tokenizer, from the GGUF `just fetch-smollm2` brings.
fn smollm2() -> Option<Tokenizer> {
    smollm2_gguf().map(|path| Tokenizer::for_model(&path).unwrap())
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dijiang-data-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first ~100 KB of tinyshakespeare (cut at a paragraph), so that debug-build tests stay fast.
fn shakespeare_part(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(shared("corpora/tinyshakespeare.txt")?).unwrap();
    let cut = text[..100_000].rfind("\n\n").unwrap();
    let path = dir.join("shakespeare-part.txt");
    std::fs::write(&path, &text[..cut]).unwrap();
    Some(path)
}

fn config(inputs: Vec<PathBuf>, out: PathBuf, seed: u64) -> PrepareConfig {
    PrepareConfig {
        inputs,
        out,
        split: SplitRule { validation_fraction: 0.1, seed },
        strict: false,
        shard_tokens: 50_000,
        progress: false,
    }
}

/// Every document of the inputs, in order.
fn documents(inputs: &[PathBuf]) -> Vec<String> {
    let mut docs = Vec::new();
    for input in inputs {
        read_file(input, |r| {
            if let Record::Doc(d) = r {
                docs.push(d)
            }
        })
        .unwrap();
    }
    docs
}

fn stream(dir: &Path, split: Split) -> Vec<u32> {
    let manifest = Manifest::read(dir).unwrap();
    let s = TokenStream::open(dir, &manifest, split).unwrap();
    s.read(0, s.len())
}

#[test]
fn shards_round_trip_real_text_exactly() {
    let (Some(tokenizer), Some(text)) = (smollm2(), shared("corpora/tinyshakespeare.txt")) else { return };
    let dir = scratch("roundtrip");
    let out = dir.join("data");
    let manifest = prepare(&tokenizer, &config(vec![text.clone()], out.clone(), 7)).unwrap();
    assert!(manifest.train.shards.len() > 1, "several shards");
    let eos = tokenizer.eos.unwrap();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, doc) in documents(&[text]).iter().enumerate() {
        let mut ids = tokenizer.encode_with(doc, false).unwrap();
        // Byte-level BPE decodes back to the very text.
        assert_eq!(&tokenizer.decode(&ids), doc);
        ids.push(eos);
        if manifest.split.is_validation(i as u64) { &mut val } else { &mut train }.extend(ids);
    }
    assert_eq!(stream(&out, Split::Train), train);
    assert_eq!(stream(&out, Split::Validation), val);
    assert_eq!(manifest.train.tokens + manifest.validation.tokens, train.len() + val.len());
    assert!(manifest.validation.documents > 0 && manifest.train.documents > 5 * manifest.validation.documents);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn splits_and_batch_orders_follow_the_seed() {
    let dir = scratch("seeds");
    let (Some(tokenizer), Some(text)) = (llama2c(), shakespeare_part(&dir)) else { return };
    let run = |seed: u64, name: &str| prepare(&tokenizer, &config(vec![text.clone()], dir.join(name), seed)).unwrap();
    let (a, b, c) = (run(1, "a"), run(1, "b"), run(2, "c"));
    assert_eq!(a, b, "same seed, same manifest (split, shards, hashes)");
    assert_ne!(a.validation, c.validation, "another seed, another split");

    let windows = Windows::open(&dir.join("a"), Split::Train, 32).unwrap();
    let order = |seed| {
        let mut o = BatchOrder::new(windows.len(), seed, Cursor::default());
        (0..20).map(|_| o.next_batch(4)).collect::<Vec<_>>()
    };
    assert_eq!(order(5), order(5));
    assert_ne!(order(5), order(6));
    std::fs::remove_dir_all(&dir).ok();
}

/// Batches as the child process prints them, one JSON array per line.
fn batches(windows: &Windows, order: &mut BatchOrder, n: usize) -> Vec<Vec<Vec<u32>>> {
    (0..n).map(|_| order.next_batch(3).into_iter().map(|i| windows.get(i).unwrap()).collect()).collect()
}

#[test]
fn a_restored_cursor_resumes_in_a_new_process() {
    let dir = scratch("cursor");
    let (Some(tokenizer), Some(text)) = (llama2c(), shakespeare_part(&dir)) else { return };
    prepare(&tokenizer, &config(vec![text], dir.join("data"), 3)).unwrap();
    let windows = Windows::open(&dir.join("data"), Split::Train, 16).unwrap();
    // Uninterrupted: 60 batches (crossing epoch boundaries).
    let mut order = BatchOrder::new(windows.len(), 11, Cursor::default());
    let all = batches(&windows, &mut order, 60);
    // Interrupted after 25: save the cursor, continue in another process.
    let mut order = BatchOrder::new(windows.len(), 11, Cursor::default());
    batches(&windows, &mut order, 25);
    let cursor = serde_json::to_string(&order.cursor()).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--nocapture", "--test-threads=1"])
        .env("DIJIANG_TEST_DATA", dir.join("data"))
        .env("DIJIANG_TEST_CURSOR", &cursor)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed: Vec<Vec<Vec<u32>>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("BATCH ").map(|(_, json)| json))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(resumed.len(), 35);
    assert_eq!(resumed, all[25..]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Run by `a_restored_cursor_resumes_in_a_new_process` in a child process.
#[test]
fn resume_child() {
    let (Some(data), Some(cursor)) = (std::env::var_os("DIJIANG_TEST_DATA"), std::env::var("DIJIANG_TEST_CURSOR").ok())
    else {
        return; // only meaningful as the child
    };
    let windows = Windows::open(Path::new(&data), Split::Train, 16).unwrap();
    let mut order = BatchOrder::new(windows.len(), 11, serde_json::from_str(&cursor).unwrap());
    for batch in batches(&windows, &mut order, 35) {
        println!("BATCH {}", serde_json::to_string(&batch).unwrap());
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path).unwrap().write_all(bytes).unwrap();
}

#[test]
fn malformed_inputs_are_reported_skipped_or_refused() {
    let Some(tokenizer) = llama2c() else { return };
    let dir = scratch("malformed");
    let good = dir.join("good.jsonl");
    write(&good, b"{\"text\": \"Once upon a time there was a cat.\"}\n{\"text\": \"The end.\"}\n");
    let bad_json = dir.join("bad.jsonl");
    write(&bad_json, b"{\"text\": \"fine\"}\n{\"text\": broken\n{\"other\": 1}\n");
    let bad_utf8 = dir.join("bad.txt");
    write(&bad_utf8, b"a good line\n\xff\xfe not utf-8\n\nanother paragraph\n");
    let empty = dir.join("empty.txt");
    write(&empty, b"");
    let mut zst = zstd::encode_all(&b"{\"text\": \"compressed text\"}\n"[..].repeat(2000)[..], 3).unwrap();
    zst.truncate(zst.len() / 2);
    let truncated = dir.join("cut.jsonl.zst");
    write(&truncated, &zst);

    // Counted and reported with file and line, the rest kept.
    let inputs = vec![good.clone(), bad_json.clone(), bad_utf8.clone(), empty.clone(), truncated.clone()];
    let manifest = prepare(&tokenizer, &config(inputs.clone(), dir.join("out"), 0)).unwrap();
    assert_eq!(manifest.bad_records, 4, "{:?}", manifest.bad_examples);
    let examples = manifest.bad_examples.join("\n");
    for want in [
        "bad.jsonl:2: invalid JSON",
        "bad.jsonl:3: no string field `text`",
        "bad.txt:2: invalid UTF-8",
        "cut.jsonl.zst:",
    ] {
        assert!(examples.contains(want), "missing `{want}` in\n{examples}");
    }
    assert!(manifest.train.documents + manifest.validation.documents >= 5);

    // --strict: the first one is an error naming file and line.
    let strict = PrepareConfig { strict: true, ..config(inputs, dir.join("strict"), 0) };
    let err = prepare(&tokenizer, &strict).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2") && err.contains("--strict"), "{err}");
    assert!(!dir.join("strict").exists(), "nothing written on failure");

    // Inputs that yield no tokens, and unreadable paths, are errors before any output.
    let err = prepare(&tokenizer, &config(vec![empty], dir.join("none"), 0)).unwrap_err().to_string();
    assert!(err.contains("no tokens"), "{err}");
    let err = prepare(&tokenizer, &config(vec![dir.join("missing.txt")], dir.join("none"), 0)).unwrap_err().to_string();
    assert!(err.contains("missing.txt"), "{err}");
    assert!(!dir.join("none").exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn data_from_another_tokenizer_is_refused() {
    let dir = scratch("mismatch");
    let (Some(tokenizer), Some(text)) = (llama2c(), shakespeare_part(&dir)) else { return };
    let manifest = prepare(&tokenizer, &config(vec![text], dir.join("data"), 0)).unwrap();
    manifest.check_tokenizer(&tokenizer.fingerprint(), &dir).unwrap();
    let err = manifest.check_tokenizer("bpe-49152-0123456789abcdef", &dir).unwrap_err().to_string();
    assert!(err.contains("prepare the data with the model's tokenizer"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `prepare` on a disk that fills up (`DIJIANG_FAULT=disk-full:prepare`, in a child process):
/// a clear error naming the file, and nothing left that looks like a dataset, nor any leftover.
#[test]
fn a_full_disk_leaves_no_dataset_behind() {
    let dir = scratch("disk-full");
    let Some(text) = shakespeare_part(&dir) else { return };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "prepare_child", "--nocapture", "--test-threads=1"])
        .env("DIJIANG_FAULT", "disk-full:prepare")
        .env("DIJIANG_TEST_INPUT", &text)
        .env("DIJIANG_TEST_DATA", dir.join("data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PREPARE FAILED") && stdout.contains("No space left on device"), "{stdout}");
    let left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["shakespeare-part.txt"], "no output directory and no staging directory");
    std::fs::remove_dir_all(&dir).ok();
}

/// Run by `a_full_disk_leaves_no_dataset_behind` in a child process.
#[test]
fn prepare_child() {
    let (Some(input), Some(out)) = (std::env::var_os("DIJIANG_TEST_INPUT"), std::env::var_os("DIJIANG_TEST_DATA"))
    else {
        return; // only meaningful as the child
    };
    let Some(tokenizer) = llama2c() else { return };
    match prepare(&tokenizer, &config(vec![input.into()], out.into(), 1)) {
        Ok(_) => println!("PREPARE SUCCEEDED"),
        Err(e) => println!("PREPARE FAILED: {e}"),
    }
}

/// A decompression bomb: a few KB of `.jsonl.zst` holding one line longer than any record; it is
/// a bad record, skipped without being held, and the records after it are read.
#[test]
fn an_overlong_line_is_a_bad_record_and_reading_goes_on() {
    use dijiang_data::sources::MAX_LINE_BYTES;
    let dir = scratch("overlong");
    let mut text = vec![b'a'; MAX_LINE_BYTES + 10];
    text.extend(b"\n{\"text\": \"after the long line\"}\n");
    let path = dir.join("bomb.jsonl.zst");
    write(&path, &zstd::encode_all(&text[..], 3).unwrap());
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
    let mut records = Vec::new();
    read_file(&path, |r| records.push(r)).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(matches!(&records[0], Record::Bad { line: 1, reason, .. } if reason.contains("longer than 16 MiB")));
    assert_eq!(records[1], Record::Doc("after the long line".into()));
}
