//! `dijiang generate`: prefill a prompt, then decode token by token, streaming the text; softmax
//! models carry a KV cache, DiJiang models their constant-size recurrent state. `--prompts FILE`
//! continues each prompt of a file and scores the continuations' repetition (distinct word
//! 3-grams), the greedy-loop measure of docs/conversion-start.md.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dijiang_model::Transformer;
use dijiang_model::generate::{GenerationStats, Sampler, Sampling, generate};
use dijiang_model::tokenizer::Tokenizer;
use serde_json::json;

use super::inference::ModelOptions;
use crate::backend::Backend;

#[derive(clap::Args)]
pub struct Args {
    /// The model: an HF directory, a GGUF file, a llama2.c .bin or a saved model.
    #[arg(long)]
    model: String,
    /// The prompt (empty: start from BOS alone).
    #[arg(long, default_value = "")]
    prompt: String,
    /// A file of prompts, one per line (blank lines and lines starting with `#` skipped), each
    /// continued from a fresh state: one JSON object per line (`--json`'s fields, the prompt and
    /// the continuation's distinct word 3-grams), then their mean on stderr.
    #[arg(long, conflicts_with = "prompt")]
    prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the smallest set of tokens with probability >= p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Divide (or, when negative, multiply) the logits of recent tokens by this (1: off; HF's
    /// `repetition_penalty`, llama.cpp's `--repeat-penalty`). Greedy output with a penalty is no
    /// longer the model's greedy continuation.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many of the latest tokens the penalty looks at (0: all of them).
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    options: ModelOptions,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.temperature >= 0.0, "--temperature must be >= 0, got {}", args.temperature);
    anyhow::ensure!(args.top_p > 0.0 && args.top_p <= 1.0, "--top-p must be in (0, 1], got {}", args.top_p);
    anyhow::ensure!(
        args.repeat_penalty.is_finite() && args.repeat_penalty > 0.0,
        "--repeat-penalty must be a positive number (1 is off), got {}",
        args.repeat_penalty
    );
    let prompts = match &args.prompts {
        Some(file) => read_prompts(file)?,
        None => vec![args.prompt.clone()],
    };
    let path = Path::new(&args.model);
    let tokenizer = Tokenizer::for_model(path).with_context(|| format!("finding the tokenizer of {}", args.model))?;
    let device = Default::default();
    let model = args.options.load(path, &args.model, &device)?;
    let kind = match model.config().attention {
        dijiang_model::AttentionKernelConfig::Softmax => "KV cache",
        dijiang_model::AttentionKernelConfig::Dijiang(_) => "recurrent state",
    };
    let stream = !args.json && args.prompts.is_none();
    let mut scores = Vec::new();
    for prompt_text in &prompts {
        let mut prompt = tokenizer.encode(prompt_text)?;
        if prompt.is_empty() {
            let bos = tokenizer.bos.context("an empty prompt needs a BOS token, and this tokenizer has none")?;
            prompt.push(bos);
        }
        let (generated, stats) = continue_prompt(&model, &tokenizer, &args, &prompt, stream);
        if stream {
            eprintln!(
                "prompt {} tokens at {:.1} tok/s; generated {} tokens at {:.1} tok/s; peak {kind} {:.1} KiB",
                stats.prompt_tokens,
                stats.prefill_tokens_per_s(),
                stats.new_tokens,
                stats.decode_tokens_per_s(),
                stats.peak_state_bytes as f64 / 1024.0
            );
            continue;
        }
        let prompt_decoded = tokenizer.decode(&prompt);
        let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let text = tokenizer.decode(&all);
        let continuation = text.strip_prefix(prompt_decoded.as_str()).unwrap_or(&text);
        let distinct = distinct_word_trigrams(continuation);
        scores.push(distinct);
        let mut out = json!({
            "ids": all,
            "text": continuation,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
            "peak_state_bytes": stats.peak_state_bytes,
            "model_change": args.options.change(),
        });
        if args.prompts.is_some() {
            out["prompt"] = json!(prompt_text);
            out["distinct_3grams"] = json!(distinct);
        }
        println!("{out}");
    }
    if args.prompts.is_some() {
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let looping = scores.iter().filter(|d| **d < LOOPING).count();
        eprintln!(
            "{} prompts: distinct word 3-grams mean {mean:.3}, {looping} under {LOOPING} (mostly repeated phrases)",
            scores.len()
        );
    }
    Ok(())
}

/// Continues `prompt` (token ids) with a fresh sampler, so that each prompt of a file is continued
/// as `--prompt` alone would; when `stream`, prints the prompt and then the new text as it comes.
fn continue_prompt(
    model: &Transformer<Backend>,
    tokenizer: &Tokenizer,
    args: &Args,
    prompt: &[u32],
    stream: bool,
) -> (Vec<u32>, GenerationStats) {
    let mut sampler = Sampler::new(Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
    });
    // Decode the prompt and everything generated so far, and print what is new. Pieces are not
    // printed one by one: multi-byte characters can span tokens, and some tokenizers decode a
    // token differently after BOS.
    let mut printed = tokenizer.decode(prompt);
    let mut all_ids = prompt.to_vec();
    let stdout = std::io::stdout();
    if stream {
        print!("{printed}");
    }
    let result = generate(model, prompt, args.max_new_tokens, &mut sampler, tokenizer.eos, |id| {
        if !stream {
            return;
        }
        all_ids.push(id);
        let text = tokenizer.decode(&all_ids);
        if let Some(delta) = text.strip_prefix(printed.as_str()) {
            let mut out = stdout.lock();
            let _ = out.write_all(delta.as_bytes());
            let _ = out.flush();
            printed = text;
        }
    });
    if stream {
        println!();
    }
    result
}

/// A continuation whose distinct word 3-grams fall under this share repeats most of its phrases:
/// the line docs/conversion-start.md counts greedy loops by.
const LOOPING: f64 = 0.6;

/// The non-empty lines of a prompts file that are not `#` comments; an error names the file when
/// none are left.
fn read_prompts(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the prompts file {}", file.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    anyhow::ensure!(
        !prompts.is_empty(),
        "{} holds no prompt: write one per line (`#` starts a comment)",
        file.display()
    );
    Ok(prompts)
}

/// Distinct word 3-grams over all word 3-grams of `text` (words split on white space); 1 when it
/// has fewer than three words (nothing can repeat).
fn distinct_word_trigrams(text: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 3 {
        return 1.0;
    }
    let all = words.len() - 2;
    let distinct: HashSet<&[&str]> = words.windows(3).collect();
    distinct.len() as f64 / all as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_trigrams_count_repeated_phrases() {
        assert_eq!(distinct_word_trigrams("a b c d"), 1.0);
        // "I was a poet." four times: 4 distinct 3-grams among 14.
        let looped = "I was a poet. I was a poet. I was a poet. I was a poet.";
        assert!((distinct_word_trigrams(looped) - 4.0 / 14.0).abs() < 1e-12, "{}", distinct_word_trigrams(looped));
        assert_eq!(distinct_word_trigrams("too short"), 1.0);
        assert_eq!(distinct_word_trigrams("  spaced\n\nout   words  "), 1.0);
    }

    #[test]
    fn a_prompts_file_skips_comments_and_blank_lines_and_must_hold_one() {
        let dir = std::env::temp_dir().join(format!("dijiang-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prompts.txt");
        std::fs::write(&file, "# greedy prompts\nCall me Ishmael.\n\n  \nOnce upon a time  \n").unwrap();
        assert_eq!(read_prompts(&file).unwrap(), ["Call me Ishmael.", "Once upon a time"]);
        std::fs::write(&file, "# only a comment\n\n").unwrap();
        let err = read_prompts(&file).unwrap_err().to_string();
        assert!(err.contains("holds no prompt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
