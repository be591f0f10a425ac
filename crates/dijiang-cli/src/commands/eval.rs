//! `dijiang eval --model <model> --text <file>`: mean next-token NLL and perplexity on a text.

use std::path::Path;

use anyhow::{Context, Result};
use dijiang_model::eval::mean_nll;
use dijiang_model::import::load;
use dijiang_model::tokenizer::Tokenizer;
use serde_json::json;

use crate::backend::Backend;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// A UTF-8 text file, tokenised as one prompt (BOS first where the model uses one).
    #[arg(long)]
    text: String,
    /// Keep the first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long)]
    json: bool,
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

pub fn run(args: Args) -> Result<()> {
    let path = Path::new(&args.model);
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text))?;
    let tokenizer = Tokenizer::for_model(path).with_context(|| format!("finding the tokenizer of {}", args.model))?;
    let ids = tokens(&tokenizer, &text, args.max_tokens)?;
    anyhow::ensure!(ids.len() >= 2, "{} gives {} token(s); perplexity needs at least 2", args.text, ids.len());
    let model = load::<Backend>(path, &Default::default()).with_context(|| format!("loading {}", args.model))?.model;
    let nll = mean_nll(&model, &ids);
    if args.json {
        println!("{}", json!({"nll": nll, "perplexity": nll.exp(), "tokens": ids.len()}));
    } else {
        println!("tokens      {}", ids.len());
        println!("nll         {nll:.4} nats/token");
        println!("perplexity  {:.4}", nll.exp());
    }
    Ok(())
}
