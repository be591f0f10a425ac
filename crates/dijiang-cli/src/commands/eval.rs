//! `dijiang eval --model <model> --text <file> | --data <prepared dir>`: mean next-token NLL and
//! perplexity on a text or a prepared dataset's validation split, as one sequence or as
//! consecutive windows of `--window` tokens, each read from an empty context (so that windows of
//! 1,024 and 4,096 tokens show how the model uses long contexts); `--positions N` adds the mean
//! NLL of every N positions of the windows (where in a long window the loss rises).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dijiang_data::dataset::{Split, TokenStream};
use dijiang_data::manifest::Manifest;
use dijiang_model::eval::{mean_nll, token_nll};
use dijiang_model::tokenizer::Tokenizer;
use indicatif::ProgressBar;
use serde_json::json;

use super::inference::ModelOptions;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// A UTF-8 text file, tokenised as one prompt (BOS first where the model uses one).
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    text: Option<String>,
    /// A dataset made by `dijiang prepare` with the model's tokenizer: its validation split.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keep the first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Consecutive windows of this many tokens, each from an empty context (a last, shorter
    /// window is dropped); default: all tokens as one sequence.
    #[arg(long)]
    window: Option<usize>,
    /// Also report the mean NLL of positions 0..N, N..2N, ... of the windows (averaged over
    /// windows; a window of W tokens predicts from positions 0..W-1): how the loss changes with
    /// the context a position has.
    #[arg(long)]
    positions: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    options: ModelOptions,
}

/// Sums of per-token losses in consecutive buckets of positions.
struct ByPosition {
    width: usize,
    predicted: usize,
    sums: Vec<f64>,
    counts: Vec<usize>,
}

impl ByPosition {
    fn new(width: usize, predicted: usize) -> Self {
        let buckets = predicted.div_ceil(width);
        Self { width, predicted, sums: vec![0.0; buckets], counts: vec![0; buckets] }
    }

    fn add(&mut self, losses: &[f64]) {
        for (i, loss) in losses.iter().enumerate() {
            self.sums[i / self.width] += loss;
            self.counts[i / self.width] += 1;
        }
    }

    /// `(first position, last position, mean NLL)` of every bucket.
    fn means(&self) -> Vec<(usize, usize, f64)> {
        (self.sums.iter().zip(&self.counts).enumerate())
            .map(|(b, (sum, &n))| (b * self.width, ((b + 1) * self.width).min(self.predicted) - 1, sum / n as f64))
            .collect()
    }
}

/// The first `max` tokens of `text`, tokenising only as much of it as needed: a prefix of at least
/// 8 characters per wanted token, doubled until it yields more tokens than kept (so that the cut
/// cannot change the kept tokens) or the text ends.
pub(crate) fn tokens(tokenizer: &Tokenizer, text: &str, max: Option<usize>) -> Result<Vec<u32>> {
    let Some(max) = max else { return Ok(tokenizer.encode(text)?) };
    let mut chars = 8 * (max + 16);
    loop {
        let end = text.char_indices().nth(chars).map_or(text.len(), |(i, _)| i);
        let mut ids = tokenizer.encode(&text[..end])?;
        if end == text.len() || ids.len() > max + 16 {
            ids.truncate(max);
            return Ok(ids);
        }
        chars *= 2;
    }
}

/// The tokens to evaluate: the text's, or the dataset's validation split (checked against the
/// model's tokenizer).
fn input_tokens(args: &Args, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    if let Some(dir) = &args.data {
        let manifest = Manifest::read(dir)?;
        manifest.check_tokenizer(&tokenizer.fingerprint(), dir)?;
        let stream = TokenStream::open(dir, &manifest, Split::Validation)?;
        return Ok(stream.read(0, args.max_tokens.unwrap_or(usize::MAX).min(stream.len())));
    }
    let path = args.text.as_deref().expect("clap: --text or --data");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    tokens(tokenizer, &text, args.max_tokens)
}

pub fn run(args: Args) -> Result<()> {
    let path = Path::new(&args.model);
    let tokenizer = Tokenizer::for_model(path).with_context(|| format!("finding the tokenizer of {}", args.model))?;
    let ids = input_tokens(&args, &tokenizer)?;
    let window = args.window.unwrap_or(ids.len()).max(2);
    let windows: Vec<&[u32]> = ids.chunks_exact(window).collect();
    anyhow::ensure!(
        !windows.is_empty(),
        "{} token(s): not one window of {window}; perplexity needs at least 2",
        ids.len()
    );
    anyhow::ensure!(args.positions != Some(0), "--positions 0: a bucket must hold at least one position");
    let model = args.options.load(path, &args.model, &Default::default())?;
    let bar = ProgressBar::new(windows.len() as u64);
    let mut total = 0.0;
    let mut by_position = args.positions.map(|width| ByPosition::new(width, window - 1));
    for w in &windows {
        total += match &mut by_position {
            Some(buckets) => {
                let losses = token_nll(&model, w);
                buckets.add(&losses);
                losses.iter().sum::<f64>() / losses.len() as f64
            }
            None => mean_nll(&model, w),
        };
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Every window predicts `window - 1` tokens: the mean over windows is the mean over tokens.
    let nll = total / windows.len() as f64;
    let tokens = windows.len() * window;
    let buckets = by_position.map(|b| b.means()).unwrap_or_default();
    if args.json {
        let by_position: Vec<_> =
            buckets.iter().map(|&(from, to, nll)| json!({"from": from, "to": to, "nll": nll})).collect();
        let mut report =
            json!({"nll": nll, "perplexity": nll.exp(), "tokens": tokens, "window": window, "windows": windows.len()});
        if !by_position.is_empty() {
            report["by_position"] = by_position.into();
        }
        if let Some(change) = args.options.change() {
            report["model_change"] = change.into();
        }
        println!("{report}");
    } else {
        println!("tokens      {tokens} ({} window(s) of {window})", windows.len());
        println!("nll         {nll:.4} nats/token");
        println!("perplexity  {:.4}", nll.exp());
        for (from, to, nll) in buckets {
            println!("positions   {from}-{to}: nll {nll:.4}, perplexity {:.4}", nll.exp());
        }
    }
    Ok(())
}
