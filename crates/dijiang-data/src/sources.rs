//! Reading documents from the inputs of `prepare`: plain text files (documents are separated by
//! blank lines), JSON Lines with a `text` field (the Pile's format), and zstd-compressed JSON
//! Lines (`.jsonl.zst`); directories are walked in sorted order.
//!
//! Bad records (invalid JSON, a missing `text`, invalid UTF-8, a truncated compressed stream) are
//! returned as [`Record::Bad`] with their file and line, so the caller can count and report them
//! or, with `--strict`, stop.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// What reading yields, in input order.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Doc(String),
    Bad { path: PathBuf, line: usize, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Jsonl,
    JsonlZst,
}

fn kind(path: &Path) -> Kind {
    let name = path.file_name().unwrap_or_default().to_string_lossy().to_lowercase();
    if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
        Kind::JsonlZst
    } else if name.ends_with(".jsonl") {
        Kind::Jsonl
    } else {
        Kind::Text
    }
}

/// Every input file, directories expanded (sorted, hidden files skipped). Fails before any work
/// when a path does not exist or cannot be read.
pub fn input_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| DataError::io(input, e))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| DataError::io(input, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            entries.sort();
            files.extend(input_files(&entries)?);
        } else {
            File::open(input).map_err(|e| DataError::io(input, e))?;
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Reads the records of one file, calling `emit` for each, in order.
pub fn read_file(path: &Path, mut emit: impl FnMut(Record)) -> Result<(), DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    match kind(path) {
        Kind::Text => read_text(path, BufReader::new(file), &mut emit),
        Kind::Jsonl => read_jsonl(path, BufReader::new(file), &mut emit),
        Kind::JsonlZst => {
            let decoder = zstd::Decoder::new(file).map_err(|e| DataError::io(path, e))?;
            read_jsonl(path, BufReader::new(decoder), &mut emit)
        }
    }
}

/// Lines longer than this (some 4 million tokens) are bad records, skipped without being held in
/// memory: a 3 KB `.jsonl.zst` expands to a single 100 MB line (a hand-made decompression bomb,
/// which made one allocation of 128 MiB), and a larger one to gigabytes. 16 MiB keeps the line
/// buffer, which doubles as it grows, within the fuzz budget of 64 MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Calls `each(line_number, bytes)` for every line; a read error (e.g. a truncated zstd frame)
/// ends the file with a bad record, and a line over [`MAX_LINE_BYTES`] is one.
fn for_each_line(
    path: &Path,
    mut reader: impl BufRead,
    emit: &mut impl FnMut(Record),
    mut each: impl FnMut(usize, Vec<u8>, &mut dyn FnMut(Record)),
) {
    let read_error = |line: usize, e: std::io::Error| Record::Bad {
        path: path.into(),
        line,
        reason: format!("read error: {e} (truncated file?)"),
    };
    let mut line = 0;
    loop {
        let mut buf = Vec::new();
        match (&mut reader).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(n) if n > MAX_LINE_BYTES && buf.last() != Some(&b'\n') => {
                line += 1;
                let reason = format!("a line longer than {} MiB, skipped", MAX_LINE_BYTES >> 20);
                emit(Record::Bad { path: path.into(), line, reason });
                drop(buf);
                if let Err(e) = reader.skip_until(b'\n') {
                    return emit(read_error(line + 1, e));
                }
            }
            Ok(_) => {
                line += 1;
                each(line, buf, emit);
            }
            Err(e) => return emit(read_error(line + 1, e)),
        }
    }
}

fn read_text(path: &Path, reader: impl BufRead, emit: &mut impl FnMut(Record)) -> Result<(), DataError> {
    // Paragraphs (separated by blank lines) are the documents of a plain text file.
    let mut doc = String::new();
    for_each_line(path, reader, emit, |line, bytes, emit| match String::from_utf8(bytes) {
        Ok(text) if text.trim().is_empty() => {
            if !doc.trim().is_empty() {
                emit(Record::Doc(doc.trim_end().to_string()));
            }
            doc.clear();
        }
        Ok(text) => doc.push_str(&text),
        Err(_) => emit(Record::Bad { path: path.into(), line, reason: "invalid UTF-8".into() }),
    });
    if !doc.trim().is_empty() {
        emit(Record::Doc(doc.trim_end().to_string()));
    }
    Ok(())
}

fn read_jsonl(path: &Path, reader: impl BufRead, emit: &mut impl FnMut(Record)) -> Result<(), DataError> {
    for_each_line(path, reader, emit, |line, bytes, emit| {
        let bad = |reason: String| Record::Bad { path: path.into(), line, reason };
        match String::from_utf8(bytes) {
            Err(_) => emit(bad("invalid UTF-8".into())),
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Err(e) => emit(bad(format!("invalid JSON: {e}"))),
                Ok(v) => match v.get("text").and_then(|t| t.as_str()) {
                    Some(t) => emit(Record::Doc(t.to_string())),
                    None => emit(bad("no string field `text`".into())),
                },
            },
        }
    });
    Ok(())
}

/// The size of a file in bytes (for progress), 0 if unknown.
pub fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
