//! `dijiang bench <what>`: speed and memory measurements, written as JSON (and PNG plots) under
//! `runs/bench/`, on the backend the binary was built for (`--features cuda` for the GPU).
//!
//! - `attention`: one attention layer's forward + backward time against sequence length, for
//!   softmax attention, DiJiang in the reference's quadratic form, DiJiang chunked and the
//!   sliding-window hybrid chunked (every chunk length tried; the best one reported).
//! - `decode`: decoding tokens/s and state memory against context length, softmax (KV cache) and
//!   DiJiang (recurrent state), for the pythia-70m and smollm2-135m shapes; prefill tokens/s.
//! - `train`: training-step throughput (pythia-70m-DiJiang at blocks 512 and 2048, the default
//!   experiment's two stages) with model FLOPs and achieved FLOP/s against the backend's matmul peak.
//! - `report`: the table (`runs/bench/summary.md`, with ratios to `runs/bench/pytorch.json` when
//!   `just bench-pytorch` wrote it) and the plots.
//! - `all`: the three measurements, then the report.
//! - `data`: the training data loader's throughput.
//!
//! Models have random weights: speed does not depend on the values. Every time is the median of
//! several runs after a warm-up run, with the device synchronised around each.

mod attention;
mod data;
mod decode;
mod recipes;
mod report;
mod train;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;

#[derive(clap::Subcommand)]
pub enum What {
    /// Attention layer forward + backward time against sequence length.
    Attention(attention::Args),
    /// Decoding speed and state memory against context length; prefill speed.
    Decode(decode::Args),
    /// Training-step throughput and achieved FLOP/s.
    Train(train::Args),
    /// A few trainer steps of every stage of experiments on random weights of their presets
    /// (the prepared GPU check, bench/gpu-check.sh).
    Recipes(recipes::Args),
    /// The summary table and plots from the JSON files in --out.
    Report {
        #[arg(long, default_value = "runs/bench")]
        out: PathBuf,
    },
    /// attention, decode and train with their default settings, then report.
    All {
        #[arg(long, default_value = "runs/bench")]
        out: PathBuf,
    },
    /// Data loader throughput on a prepared dataset.
    Data {
        /// A directory written by `dijiang prepare`.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 512)]
        block: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 2000)]
        batches: usize,
        #[arg(long, default_value = "runs/bench")]
        out: PathBuf,
    },
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Attention(args) => attention::run(&args),
        What::Decode(args) => on_each_backend(&args),
        What::Train(args) => on_each_backend(&args),
        What::Recipes(args) => recipes::run(&args),
        What::Report { out } => report::run(&out),
        What::All { out } => {
            attention::run(&defaults(&out))?;
            on_each_backend(&defaults::<decode::Args>(&out))?;
            on_each_backend(&defaults::<train::Args>(&out))?;
            report::run(&out)
        }
        What::Data { data, block, batch, batches, out } => data::run(&data, block, batch, batches, &out),
    }
}

/// A measurement's arguments as its command line defaults them (one source of defaults), with `--out`.
fn defaults<A: clap::Args + clap::FromArgMatches>(out: &Path) -> A {
    let command = A::augment_args(clap::Command::new("bench"));
    let matches = command.get_matches_from([std::ffi::OsStr::new("bench"), "--out".as_ref(), out.as_os_str()]);
    A::from_arg_matches(&matches).expect("every argument has a default")
}

/// Writes `value` as pretty JSON to `dir/name`, atomically.
pub(crate) fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let path = dir.join(name);
    dijiang_train::checkpoint::write_atomic(&path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Waits for the device's queued work (GPU backends run asynchronously).
fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device synchronisation");
}

/// Median seconds of `f` over `reps` timed runs after one warm-up run; fewer timed runs when one
/// takes longer than `budget_s` (a slow case is not repeated for minutes).
fn median_time<B: Backend>(device: &B::Device, reps: usize, budget_s: f64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    sync::<B>(device);
    let warm = start.elapsed().as_secs_f64();
    let reps = if warm > budget_s { 1 } else { reps.max(1) };
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            sync::<B>(device);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Where a measurement runs: the binary's backend, or the CPU peer measured beside it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Run {
    /// The backend the binary was built for; its results go to `NAME.json`.
    Primary,
    /// `crate::backend::CpuPeer`, measured in the same run; its results go to `NAME-PEER.json`.
    Peer,
}

impl Run {
    /// The runs of a measurement: the binary's backend, then its CPU peer unless `no_peer`.
    fn all(no_peer: bool) -> Vec<Run> {
        let peer = crate::backend::CPU_PEER.is_some() && !no_peer;
        [Some(Run::Primary), peer.then_some(Run::Peer)].into_iter().flatten().collect()
    }

    /// The backend's name as the JSON files and the report show it.
    pub(crate) fn backend(self) -> &'static str {
        match self {
            Run::Primary => crate::backend::NAME,
            Run::Peer => crate::backend::CPU_PEER.unwrap_or("none"),
        }
    }

    /// `bench.json` for the binary's backend, `bench-PEER.json` for its peer.
    pub(crate) fn file(self, bench: &str) -> String {
        match self {
            Run::Primary => format!("{bench}.json"),
            Run::Peer => format!("{bench}-{}.json", self.backend()),
        }
    }
}

/// A measurement that runs on any backend (the binary's and its CPU peer).
pub(crate) trait OnBackend {
    /// Only the binary's backend (`--no-peer`).
    fn no_peer(&self) -> bool;
    /// Measures on `B`, writing `run`'s file.
    fn run_on<B: Backend>(&self, run: Run) -> Result<()>;
}

/// `measurement` on the binary's backend, then on its CPU peer (unless `--no-peer`).
pub(crate) fn on_each_backend(measurement: &impl OnBackend) -> Result<()> {
    for run in Run::all(measurement.no_peer()) {
        match run {
            Run::Primary => measurement.run_on::<crate::backend::Backend>(run)?,
            Run::Peer => measurement.run_on::<crate::backend::CpuPeer>(run)?,
        }
    }
    Ok(())
}

/// The backend and machine, for the JSON files.
fn machine<B: Backend>(run: Run) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "backend": format!("backend: {} (device {:?})", run.backend(), B::Device::default()),
        "backend_name": run.backend(),
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_all_uses_the_command_line_defaults() {
        let out = Path::new("some/dir");
        let a: attention::Args = defaults(out);
        assert_eq!((a.lens.len(), a.lens[5], a.reps, a.out.as_path()), (6, 8192, 3, out));
        let d: decode::Args = defaults(out);
        assert_eq!((d.models.len(), d.contexts[5], d.tokens), (2, 8192, 16));
        let t: train::Args = defaults(out);
        assert_eq!((t.model.as_str(), t.shapes.len(), t.out.as_path()), ("pythia-70m", 2, out));
    }
}
