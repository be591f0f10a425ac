//! `dijiang generate`: prefill a prompt, then decode token by token, streaming the text; softmax
//! models carry a KV cache, DiJiang models their constant-size recurrent state.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use dijiang_model::generate::{Sampler, Sampling, generate};
use dijiang_model::tokenizer::Tokenizer;
use serde_json::json;

use super::inference::ModelOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The model: an HF directory, a GGUF file, a llama2.c .bin or a saved model.
    #[arg(long)]
    model: String,
    /// The prompt (empty: start from BOS alone).
    #[arg(long, default_value = "")]
    prompt: String,
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
    let path = Path::new(&args.model);
    let tokenizer = Tokenizer::for_model(path).with_context(|| format!("finding the tokenizer of {}", args.model))?;
    let mut prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        let bos = tokenizer.bos.context("an empty prompt needs a BOS token, and this tokenizer has none")?;
        prompt.push(bos);
    }
    let device = Default::default();
    let model = args.options.load(path, &args.model, &device)?;
    let mut sampler = Sampler::new(Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
    });

    // Stream: decode the prompt and everything generated so far, and print what is new. Pieces are
    // not printed one by one: multi-byte characters can span tokens, and some tokenizers decode a
    // token differently after BOS.
    let mut printed = tokenizer.decode(&prompt);
    let prompt_text = printed.clone();
    let mut all_ids = prompt.clone();
    let stdout = std::io::stdout();
    if !args.json {
        print!("{printed}");
    }
    let (generated, stats) = generate(&model, &prompt, args.max_new_tokens, &mut sampler, tokenizer.eos, |id| {
        if args.json {
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
    let kind = match model.config().attention {
        dijiang_model::AttentionKernelConfig::Softmax => "KV cache",
        dijiang_model::AttentionKernelConfig::Dijiang(_) => "recurrent state",
    };
    if args.json {
        let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
        let text = tokenizer.decode(&all);
        let out = json!({
            "ids": all,
            "text": text.strip_prefix(prompt_text.as_str()).unwrap_or(&text),
            "prefill_tokens_per_s": stats.prefill_tokens_per_s(),
            "decode_tokens_per_s": stats.decode_tokens_per_s(),
            "peak_state_bytes": stats.peak_state_bytes,
            "model_change": args.options.change(),
        });
        println!("{out}");
    } else {
        println!();
        eprintln!(
            "prompt {} tokens at {:.1} tok/s; generated {} tokens at {:.1} tok/s; peak {kind} {:.1} KiB",
            stats.prompt_tokens,
            stats.prefill_tokens_per_s(),
            stats.new_tokens,
            stats.decode_tokens_per_s(),
            stats.peak_state_bytes as f64 / 1024.0
        );
    }
    Ok(())
}
