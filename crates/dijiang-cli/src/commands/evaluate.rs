//! `dijiang evaluate --model M --tasks piqa,hellaswag,...`: zero-shot accuracy as lm-evaluation-
//! harness 0.4.13 computes it (`dijiang-eval`), as a table and JSON, with a progress bar; each
//! task's per-document results are appended to `OUT/TASK.jsonl`, so that rerunning the same
//! command after an interruption resumes where it stopped.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dijiang_eval::{BatchLimits, BosPolicy, EvalOptions, Progress, Task, TaskResult, evaluate_task};
use dijiang_model::tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::inference::ModelOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The model: an HF directory, a GGUF file, a llama2.c .bin or a saved model.
    #[arg(long)]
    model: String,
    /// Comma-separated lm-eval task names, or `all`: piqa, hellaswag, winogrande, arc_easy,
    /// arc_challenge, boolq, openbookqa, sciq, copa, mmlu, lambada_openai.
    #[arg(long, default_value = "all")]
    tasks: String,
    /// Only the first N documents of each task (MMLU: of each subject, as lm-eval's --limit).
    #[arg(long)]
    limit: Option<usize>,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Also write the results as JSON to FILE (`-`: standard output, instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The evaluation data (default: datasets/evals, else ../shared/evaldata).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the per-document results go, one TASK.jsonl per task, resumed when present
    /// (default: runs/evaluate/<model name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start over: discard the per-document results of an earlier run.
    #[arg(long)]
    restart: bool,
    /// BOS before every text: as the tokenizer does (lm-eval's default), always, never.
    #[arg(long, value_enum, default_value = "tokenizer")]
    bos: Bos,
    /// Bootstrap resamples for LAMBADA's perplexity standard error (lm-eval: 100000; 0: none).
    #[arg(long, default_value_t = dijiang_eval::evaluate::BOOTSTRAP_ITERS)]
    bootstrap_iters: usize,
    #[command(flatten)]
    options: ModelOptions,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bos {
    Tokenizer,
    Always,
    Never,
}

/// The data directory: `--data`, else `datasets/evals` (what `just evaldata` writes), else the
/// shared folder beside the checkout. A missing one is reported by the library, with the recipe.
fn data_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| {
        let shared = PathBuf::from("../shared/evaldata");
        if !Path::new("datasets/evals").is_dir() && shared.is_dir() { shared } else { PathBuf::from("datasets/evals") }
    })
}

fn options(args: &Args, model: &Path) -> Result<EvalOptions> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let name = model.file_stem().unwrap_or_default().to_string_lossy().to_string();
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/evaluate").join(name));
    // The records of one model only: a changed model (another window) is another model.
    let mut model_id = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf()).display().to_string();
    if let Some(change) = args.options.change() {
        model_id = format!("{model_id} ({change})");
    }
    let bos = match args.bos {
        Bos::Tokenizer => BosPolicy::Tokenizer,
        Bos::Always => BosPolicy::Always,
        Bos::Never => BosPolicy::Never,
    };
    Ok(EvalOptions {
        data_dir: data_dir(args.data.clone()),
        limit: args.limit,
        batch: BatchLimits { units: args.batch_size, ..BatchLimits::default() },
        bos,
        records_dir: Some(out),
        model_id,
        bootstrap_iters: args.bootstrap_iters,
    })
}

pub fn run(args: Args) -> Result<()> {
    let tasks = Task::parse_list(&args.tasks)?;
    anyhow::ensure!(!tasks.is_empty(), "--tasks names no task");
    let path = Path::new(&args.model);
    let options = options(&args, path)?;
    // Check every task's data before the model is loaded: a missing split fails at once.
    for task in &tasks {
        dijiang_eval::task::data_path(&options.data_dir, task.data_file())?;
    }
    let records = options.records_dir.clone().expect("the CLI keeps records");
    if args.restart {
        for task in &tasks {
            let file = records.join(format!("{}.jsonl", task.name()));
            if file.exists() {
                std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            }
        }
    }
    let tokenizer = Tokenizer::for_model(path).with_context(|| format!("finding the tokenizer of {}", args.model))?;
    let model = args.options.load(path, &args.model, &Default::default())?;
    eprintln!("per-document results: {}/TASK.jsonl (rerun the same command to resume)", records.display());
    let mut results = Vec::new();
    for task in tasks {
        let mut bar = Bar::new(task);
        let result = evaluate_task(&model, &tokenizer, task, &options, &mut |p| bar.update(p))?;
        bar.finish(&result);
        results.push(result);
    }
    report(&args, &options, &results)
}

/// The progress display: a bar on a terminal, else a line a minute (for logs).
struct Bar {
    bar: ProgressBar,
    terminal: bool,
    start: Instant,
    last_line: Instant,
}

impl Bar {
    fn new(task: Task) -> Self {
        let bar = ProgressBar::new(0).with_prefix(task.name());
        let style = "{prefix:>14} [{bar:30}] {pos}/{len} docs, {per_sec}, ETA {eta} ({elapsed})";
        bar.set_style(ProgressStyle::with_template(style).expect("valid template").progress_chars("=> "));
        let now = Instant::now();
        Self { bar, terminal: std::io::stderr().is_terminal(), start: now, last_line: now }
    }

    fn update(&mut self, p: &Progress) {
        if self.bar.length() != Some(p.total as u64) {
            // First call: the resumed documents are not part of the rate.
            self.bar.set_length(p.total as u64);
            self.bar.set_position(p.done as u64);
            self.bar.reset_eta();
            self.start = Instant::now();
        }
        self.bar.set_position(p.done as u64);
        if !self.terminal && (self.last_line.elapsed() > Duration::from_secs(60) || p.done == p.total) {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            let rate = (p.done - p.resumed) as f64 / secs.max(1e-9);
            let eta = (p.total - p.done) as f64 / rate.max(1e-9);
            eprintln!(
                "{}: {}/{} docs ({} resumed), {rate:.2} docs/s, {secs:.0} s, ETA {eta:.0} s",
                p.task.name(),
                p.done,
                p.total,
                p.resumed
            );
        }
    }

    fn finish(&self, result: &TaskResult) {
        self.bar.finish_and_clear();
        let rate = (result.items - result.resumed) as f64 / result.run_seconds.max(1e-9);
        eprintln!(
            "{}: {} docs in {:.1} s ({rate:.2} docs/s, {:.0} tokens/s, {} resumed)",
            result.task.name(),
            result.items,
            result.run_seconds,
            result.tokens as f64 / result.run_seconds.max(1e-9),
            result.resumed
        );
    }
}

/// `1h 02m 03s` / `4m 05s` / `6.1s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m {:02}s", s / 3600, s % 3600 / 60, s % 60),
    }
}

/// The Markdown table: one row per task and metric.
fn table(results: &[TaskResult]) -> String {
    let mut out =
        String::from("| task | metric | value | stderr | items | wall time |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in results {
        for (i, m) in r.metrics.iter().enumerate() {
            let stderr = m.stderr.map_or("N/A".to_string(), |s| format!("{s:.4}"));
            let (task, items, time) = if i == 0 {
                (r.task.name().to_string(), r.items.to_string(), duration(r.seconds))
            } else {
                (String::new(), String::new(), String::new())
            };
            out.push_str(&format!("| {task} | {} | {:.4} | {stderr} | {items} | {time} |\n", m.metric.name(), m.value));
        }
    }
    out
}

fn report(args: &Args, options: &EvalOptions, results: &[TaskResult]) -> Result<()> {
    let summary = json!({
        "model": args.model,
        "data": options.data_dir,
        "limit": options.limit,
        "bos": options.bos,
        "harness": "lm-evaluation-harness 0.4.13 (zero-shot), reproduced by dijiang-eval",
        "results": results,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    match &args.json {
        Some(path) if path.as_os_str() == "-" => println!("{text}"),
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            print!("{}", table(results));
        }
        None => print!("{}", table(results)),
    }
    Ok(())
}
