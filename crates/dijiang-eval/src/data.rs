//! Reading JSON Lines (plain or gzipped): every row is parsed with its line number, so that a
//! malformed row is reported as `file:line: reason`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use serde::de::DeserializeOwned;

use crate::error::EvalError;

/// The lines of a text file, gunzipped if its name ends in `.gz`, with their 1-based numbers.
/// Empty lines are skipped (a file may end with one).
pub fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, EvalError> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let reader: Box<dyn Read> =
        if path.extension().is_some_and(|e| e == "gz") { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) };
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| EvalError::row(path, i + 1, e.to_string()))?;
        if !line.trim().is_empty() {
            lines.push((i + 1, line));
        }
    }
    Ok(lines)
}

/// Every row of a JSON Lines file as `T`, converted by `convert`; a row that does not parse or
/// that `convert` rejects is an error naming the file and the line.
pub fn read_rows<T: DeserializeOwned, U>(
    path: &Path,
    mut convert: impl FnMut(T) -> Result<U, String>,
) -> Result<Vec<U>, EvalError> {
    read_lines(path)?
        .into_iter()
        .map(|(line, text)| {
            let row: T = serde_json::from_str(&text).map_err(|e| EvalError::row(path, line, e.to_string()))?;
            convert(row).map_err(|reason| EvalError::row(path, line, reason))
        })
        .collect()
}
