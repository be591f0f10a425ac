//! Fault injection for tests of what a failing disk does to a run: `DIJIANG_FAULT=KIND:POINT[:STEP]`
//! makes the write at `POINT` (at training step `STEP`, where the point has steps) fail as `KIND`:
//!
//! - `abort`: the process aborts there (no unwinding, no cleanup, as SIGKILL would);
//! - `disk-full`: the write fails with ENOSPC ("No space left on device");
//! - `write-error`: the write fails with EIO.
//!
//! Points: `checkpoint` (after the model and optimizer are written, before `trainer.json`),
//! `metrics` (the JSONL and TensorBoard logs), `prepare` (a token shard). Unset, nothing happens.

use std::io;

const VARIABLE: &str = "DIJIANG_FAULT";

/// The injected failure at `point` (and `step`), if `DIJIANG_FAULT` names it; aborts the process
/// for `abort`.
pub fn check(point: &str, step: Option<usize>) -> io::Result<()> {
    let Ok(spec) = std::env::var(VARIABLE) else { return Ok(()) };
    let mut parts = spec.split(':');
    let (kind, at, when) = (parts.next(), parts.next(), parts.next());
    // Without a step in the variable, every write at the point fails.
    let step_matches = when.is_none_or(|s| s.parse::<usize>().ok() == step);
    if at != Some(point) || !step_matches {
        return Ok(());
    }
    match kind {
        Some("abort") => {
            eprintln!("{VARIABLE}: aborting at {point}{}", step.map_or(String::new(), |s| format!(" (step {s})")));
            std::process::abort();
        }
        Some("disk-full") => Err(io::Error::from_raw_os_error(28)), // ENOSPC
        Some("write-error") => Err(io::Error::from_raw_os_error(5)), // EIO
        _ => Ok(()),
    }
}
