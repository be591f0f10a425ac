//! `dijiang fidelity --teacher <model> --student <model> --text <file>`: per layer and head, how
//! far the student's attention rows are from the teacher's (total variation), and the attention
//! block's output error, as JSON, and with `--png` a heatmap (layers x heads).

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::*;
use dijiang_model::fidelity::{LayerFidelity, measure};
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
    /// Also draw the per-head TV distances as a heatmap (layers x heads) into this PNG file.
    #[arg(long)]
    png: Option<std::path::PathBuf>,
}

/// The TV distance per layer (rows) and head (columns), white (0) to dark red (1).
fn heatmap(path: &Path, layers: &[LayerFidelity]) -> Result<()> {
    use plotters::prelude::*;
    let labels = crate::plot::register_label_font();
    let heads = layers.iter().map(|l| l.tv_per_head.len()).max().unwrap_or(0);
    let (cell, left, top) = (28i32, 80i32, 56i32);
    let (w, h) = ((left + cell * heads as i32 + 100) as u32, (top + cell * layers.len() as i32 + 16) as u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let color = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        RGBColor(255 - (115.0 * v) as u8, (255.0 * (1.0 - v)) as u8, (255.0 * (1.0 - v)) as u8)
    };
    let style = ("sans-serif", 13).into_font();
    for (row, layer) in layers.iter().enumerate() {
        let y = top + cell * row as i32;
        for (col, tv) in layer.tv_per_head.iter().enumerate() {
            let x = left + cell * col as i32;
            root.draw(&Rectangle::new([(x, y), (x + cell - 1, y + cell - 1)], color(*tv).filled()))
                .map_err(|e| fail(&e))?;
        }
        if labels {
            root.draw_text(&format!("layer {}", layer.layer), &style.color(&BLACK), (8, y + cell / 3))
                .map_err(|e| fail(&e))?;
            let x = left + cell * heads as i32 + 8;
            root.draw_text(&format!("{:.2}", layer.tv_mean), &style.color(&BLACK), (x, y + cell / 3))
                .map_err(|e| fail(&e))?;
        }
    }
    if labels {
        let title = "TV distance to the teacher's attention rows (white 0, red 1); right: layer mean";
        root.draw_text(title, &style.color(&BLACK), (8, 8)).map_err(|e| fail(&e))?;
        for col in 0..heads {
            let x = left + cell * col as i32 + cell / 3;
            root.draw_text(&format!("{col}"), &style.color(&BLACK), (x, top - 18)).map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))
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
    if let Some(png) = &args.png {
        heatmap(png, &results)?;
        eprintln!("heatmap     {}", png.display());
    }
    Ok(())
}
