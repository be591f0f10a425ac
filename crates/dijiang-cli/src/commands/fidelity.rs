//! `dijiang fidelity --teacher <model> --student <model> --text <file>`: per layer and head, how
//! far the student's attention rows are from the teacher's (total variation), and the attention
//! block's output error, as JSON.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::*;
use dijiang_model::fidelity::measure;
use dijiang_model::import::load;
use dijiang_model::tokenizer::Tokenizer;
use serde_json::json;

use crate::backend::Backend as B;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    teacher: String,
    /// A DiJiang model with the teacher's architecture (e.g. `dijiang convert` output).
    #[arg(long)]
    student: String,
    #[arg(long)]
    text: String,
    /// Keep the first N tokens of the text.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Layers to measure (0-based, comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Tokenise without BOS even where the model uses one.
    #[arg(long)]
    no_bos: bool,
}

pub fn run(args: Args) -> Result<()> {
    let device = Default::default();
    let teacher_path = Path::new(&args.teacher);
    let tokenizer =
        Tokenizer::for_model(teacher_path).with_context(|| format!("finding the tokenizer of {}", args.teacher))?;
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text))?;
    let mut ids = tokenizer.encode_with(&text, tokenizer.add_bos && !args.no_bos)?;
    ids.truncate(args.max_tokens);
    anyhow::ensure!(ids.len() >= 2, "{} gives fewer than 2 tokens", args.text);
    let teacher = load::<B>(teacher_path, &device).with_context(|| format!("loading {}", args.teacher))?.model;
    let student =
        load::<B>(Path::new(&args.student), &device).with_context(|| format!("loading {}", args.student))?.model;
    anyhow::ensure!(
        matches!(student.config().attention, dijiang_model::AttentionKernelConfig::Dijiang(_)),
        "{} is not a DiJiang model",
        args.student
    );
    let layers = if args.layers.is_empty() { (0..teacher.layers.len()).collect() } else { args.layers.clone() };
    if let Some(bad) = layers.iter().find(|l| **l >= teacher.layers.len()) {
        anyhow::bail!("layer {bad} does not exist: the model has {} layers", teacher.layers.len());
    }
    let t = ids.len();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
    let results = measure(&teacher, &student, tokens, &layers);
    let mean = |f: fn(&dijiang_model::fidelity::LayerFidelity) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len() as f64
    };
    let out = json!({
        "tokens": t,
        "layers": results,
        "tv_mean": mean(|r| r.tv_mean),
        "tv_uniform_mean": mean(|r| r.tv_uniform),
        "output_relative_error_mean": mean(|r| r.output_relative_error),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
