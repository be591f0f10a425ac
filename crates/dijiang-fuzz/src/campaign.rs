//! A fuzz campaign over one target: every seed as it is, then mutants of them, each judged:
//! it must end in `Ok` or in errors that name the input, without a panic, a hang, or an
//! allocation beyond its budget ([`budget`]). Each distinct failure is minimised (chunks deleted
//! while it still fails the same way) and saved, so that it can become a regression test.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::input::{Input, Scratch};
use crate::mutate::{Rng, mutate};
use crate::runner::{Ending, Run, Runner};
use crate::targets::Target;

/// What an input may allocate: 64 bytes per input byte, and never less than 64 MiB. Parsing needs
/// a small multiple of the input (a dequantised Q4 tensor is 7x its bytes as f32, a JSON value
/// tree a few times its text); a count or shape read from a header must not buy more.
pub fn budget(input_bytes: usize) -> usize {
    (64usize << 20).max(input_bytes.saturating_mul(64))
}

/// How long and how far a campaign goes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seed of the mutation generator (mixed with the target's name).
    pub seed: u64,
    /// At most this many inputs (the seeds included).
    pub iterations: u64,
    /// And at most this long.
    pub time_limit: Duration,
    /// One input running longer than this is a hang.
    pub timeout: Duration,
    /// Where minimised failures are written (`DIR/<target>/<n>-<kind>/`), if anywhere.
    pub save_to: Option<PathBuf>,
    /// Deletion attempts spent minimising each failure.
    pub minimise_tries: usize,
}

impl Settings {
    /// The bounded slice run by the test suite: a fixed seed, `seconds` per target.
    pub fn slice(seconds: f64) -> Self {
        Self {
            seed: 0x5eed,
            iterations: u64::MAX,
            time_limit: Duration::from_secs_f64(seconds),
            timeout: Duration::from_secs(10),
            save_to: None,
            minimise_tries: 500,
        }
    }

    /// A long run of `iterations` inputs.
    pub fn at_length(iterations: u64, seed: u64, save_to: PathBuf) -> Self {
        Self {
            seed,
            iterations,
            time_limit: Duration::MAX,
            timeout: Duration::from_secs(10),
            save_to: Some(save_to),
            minimise_tries: 3000,
        }
    }
}

/// A distinct way of failing, with the (minimised) input that shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What makes two failures the same: the kind and, for a panic, where it happened.
    pub signature: String,
    pub detail: String,
    /// The campaign's input number that first showed it.
    pub iteration: u64,
    pub input: Input,
    pub saved: Option<PathBuf>,
}

/// What a campaign did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    /// Inputs every step of which returned `Ok`.
    pub clean: u64,
    /// Inputs that ended in errors naming the input (the rest of the inputs failed).
    pub named_errors: u64,
    /// Inputs that failed (each distinct failure is listed once in `failures`).
    pub failing: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
    /// The largest peak of live bytes of one input.
    pub peak_bytes: usize,
    pub failures: Vec<Failure>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} inputs in {:.1} s ({} ok, {} named errors, {} failing), slowest {:.3} s, peak {:.1} MiB, \
             {} distinct failure(s)",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.clean,
            self.named_errors,
            self.failing,
            self.slowest.as_secs_f64(),
            self.peak_bytes as f64 / (1 << 20) as f64,
            self.failures.len()
        )?;
        for failure in &self.failures {
            let saved = failure.saved.as_ref().map(|p| format!(", saved in {}", p.display())).unwrap_or_default();
            writeln!(
                f,
                "  - {} (input #{}: {}{saved})",
                failure.signature,
                failure.iteration,
                failure.input.describe()
            )?;
            writeln!(f, "    {}", failure.detail)?;
        }
        Ok(())
    }
}

/// Why an input failed, if it did: `(signature, detail)`.
pub fn judge(run: &Run, dir: &Path, input_bytes: usize) -> Option<(String, String)> {
    let budget = budget(input_bytes);
    let dir_name = dir.display().to_string();
    match &run.ending {
        Ending::Hung => return Some(("hang".into(), format!("still running after {:?}", run.elapsed))),
        Ending::Panicked(message) => {
            let at = message.rsplit_once(" at ").map_or("unknown location", |(_, at)| at);
            return Some((format!("panic at {at}"), message.clone()));
        }
        Ending::Returned(errors) => {
            if run.usage.largest > budget {
                let detail = format!(
                    "one allocation of {} bytes, over the budget of {budget} for {input_bytes} input bytes",
                    run.usage.largest
                );
                return Some(("allocation over budget".into(), detail));
            }
            if run.usage.peak > budget {
                let detail =
                    format!("{} bytes live, over the budget of {budget} for {input_bytes} input bytes", run.usage.peak);
                return Some(("memory over budget".into(), detail));
            }
            for (message, names) in errors {
                if !names.iter().any(|n| message.contains(n.as_str())) {
                    // Numbers and the scratch path vary between inputs failing the same way.
                    let shape: String = message
                        .replace(&dir_name, "DIR")
                        .chars()
                        .map(|c| if c.is_ascii_digit() { '#' } else { c })
                        .take(80)
                        .collect();
                    return Some((format!("error naming no input file: {shape}"), message.clone()));
                }
            }
        }
    }
    None
}

/// Runs a campaign of `target` from `seeds`.
pub fn run(target: &'static Target, seeds: &[Input], settings: &Settings) -> Report {
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    let scratch = Scratch::new(target.name).expect("a scratch directory");
    let dir = scratch.path.join("input");
    // The allocator names this directory if it has to abort; it lives as long as the process.
    let label: &'static str = Box::leak(dir.display().to_string().into_boxed_str());
    let mut runner = Runner::new(target, label, settings.timeout);
    let mut rng =
        Rng::new(settings.seed ^ target.name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut report = Report { target: target.name, ..Report::default() };
    let mut seen = BTreeSet::new();
    let mut previous: Option<Input> = None;
    let start = Instant::now();
    for i in 0..settings.iterations {
        if start.elapsed() > settings.time_limit {
            break;
        }
        let input = match seeds.get(i as usize) {
            Some(seed) => seed.clone(),
            None => mutate(&seeds[rng.below(seeds.len())], seeds, &mut rng),
        };
        input.write(&dir, previous.as_ref()).expect("write the input");
        let result = runner.run(&dir);
        report.inputs += 1;
        report.slowest = report.slowest.max(result.elapsed);
        report.peak_bytes = report.peak_bytes.max(result.usage.peak);
        previous = Some(input.clone());
        let Some((signature, detail)) = judge(&result, &dir, input.total_bytes()) else {
            match &result.ending {
                Ending::Returned(errors) if errors.is_empty() => report.clean += 1,
                _ => report.named_errors += 1,
            }
            continue;
        };
        report.failing += 1;
        if seen.insert(signature.clone()) {
            let input = if result.ending == Ending::Hung {
                input
            } else {
                previous = None;
                minimise(&mut runner, &dir, input, &signature, settings.minimise_tries)
            };
            let saved =
                settings.save_to.as_ref().map(|to| save(to, target.name, report.failures.len(), &input, &detail));
            report.failures.push(Failure { signature, detail, iteration: i, input, saved });
        }
        if result.ending == Ending::Hung {
            break;
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// Deletes chunks of the input's files (halves, quarters, ... single bytes) while it keeps failing
/// with the same signature, within `tries` runs.
fn minimise(runner: &mut Runner, dir: &Path, input: Input, signature: &str, mut tries: usize) -> Input {
    let mut best = input;
    for f in 0..best.files.len() {
        let mut chunk = best.files[f].1.len().div_ceil(2);
        while chunk > 0 && tries > 0 {
            let mut pos = 0;
            while pos < best.files[f].1.len() && tries > 0 {
                tries -= 1;
                let mut candidate = best.clone();
                let bytes = &mut candidate.files[f].1;
                bytes.drain(pos..(pos + chunk).min(bytes.len()));
                if candidate.write(dir, None).is_err() {
                    break;
                }
                let result = runner.run(dir);
                if judge(&result, dir, candidate.total_bytes()).is_some_and(|(s, _)| s == signature) {
                    best = candidate;
                } else {
                    pos += chunk;
                }
                if result.ending == Ending::Hung {
                    return best;
                }
            }
            chunk /= 2;
        }
    }
    best
}

/// Writes a failing input to `to/<target>/<n>-<kind>/` and its description beside it.
fn save(to: &Path, target: &str, n: usize, input: &Input, detail: &str) -> PathBuf {
    let kind = detail.split_whitespace().take(3).collect::<Vec<_>>().join("-");
    let kind: String = kind.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let dir = to.join(target).join(format!("{n:02}-{kind}"));
    input.write(&dir, None).expect("save a failing input");
    std::fs::write(dir.with_extension("txt"), detail).expect("save a failure's description");
    dir
}

/// Runs one input (a saved regression) and judges it: why it fails, if it does.
pub fn check(target: &'static Target, input: &Input, timeout: Duration) -> Option<(String, String)> {
    let scratch = Scratch::new(&format!("check-{}", target.name)).expect("a scratch directory");
    let dir = scratch.path.join("input");
    let label: &'static str = Box::leak(dir.display().to_string().into_boxed_str());
    let mut runner = Runner::new(target, label, timeout);
    input.write(&dir, None).expect("write the input");
    let result = runner.run(&dir);
    judge(&result, &dir, input.total_bytes())
}
