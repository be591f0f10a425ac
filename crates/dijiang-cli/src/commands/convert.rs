//! `dijiang convert --teacher <model> --out <dir>`: the DiJiang student of a softmax model, saved in
//! the project's format, with a report of the parameters that are new.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Module;
use dijiang_kernel::qmc::ScaleSampling;
use dijiang_model::DiJiangConfig;
use dijiang_model::config::{DecayKind, FeatureMapKind, FeatureTraining};
use dijiang_model::convert::convert;
use dijiang_model::import::native::{Manifest, save};
use dijiang_model::tokenizer::Tokenizer;

use crate::backend::Backend;
use crate::commands::inspect::thousands;

#[derive(clap::Args)]
pub struct Args {
    /// The softmax teacher: an HF directory, a GGUF file, a llama2.c .bin or a saved model.
    #[arg(long)]
    teacher: String,
    /// Directory to write the student to (replaced atomically).
    #[arg(long)]
    out: String,
    /// Feature map: reference (softmax of x C T), weighted-exp (the paper's D * exp(T C x)), performer.
    #[arg(long, default_value = "reference")]
    feature_map: String,
    /// Draw the scales by Monte Carlo (the reference code) instead of quasi-Monte Carlo.
    #[arg(long)]
    mc: bool,
    /// Learnable per-feature weights D.
    #[arg(long)]
    feature_weights: bool,
    /// No decay (gamma = 1).
    #[arg(long)]
    no_decay: bool,
    /// Seed for the new parameters.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What training may change of the feature map: frozen (the reference), scales (T and D),
    /// projection (the whole DCT x T matrix), mlp (a residual MLP before the map).
    #[arg(long, default_value = "frozen")]
    feature_training: String,
}

pub fn run(args: Args) -> Result<()> {
    let feature_map = match args.feature_map.as_str() {
        "reference" => FeatureMapKind::Reference,
        "weighted-exp" => FeatureMapKind::WeightedExp,
        "performer" => FeatureMapKind::Performer,
        other => {
            anyhow::bail!("--feature-map `{other}`: expected reference, weighted-exp or performer")
        }
    };
    let feature_training = match args.feature_training.as_str() {
        "frozen" => FeatureTraining::Frozen,
        "scales" => FeatureTraining::Scales,
        "projection" => FeatureTraining::Projection,
        "mlp" => FeatureTraining::Mlp,
        other => anyhow::bail!("--feature-training `{other}`: expected frozen, scales, projection or mlp"),
    };
    let dijiang = DiJiangConfig {
        feature_training,
        feature_map,
        sampling: if args.mc { ScaleSampling::Mc { seed: args.seed } } else { ScaleSampling::Qmc { shift_seed: None } },
        feature_weights: args.feature_weights,
        decay: if args.no_decay { DecayKind::None } else { DecayKind::Reference },
        seed: args.seed,
        ..Default::default()
    };
    let device = Default::default();
    let student = convert::<Backend>(Path::new(&args.teacher), dijiang, &device)
        .with_context(|| format!("converting {}", args.teacher))?;
    let config = student.model.config().clone();
    let mut manifest = Manifest::new(config.clone());
    manifest.source = Some(args.teacher.clone());
    manifest.new_parameters = student.initialised.clone();
    let out = Path::new(&args.out);
    save(&student.model, &manifest, out).with_context(|| format!("saving {}", args.out))?;
    // The tokenizer travels with the model, so that the student is self-contained.
    let teacher = Path::new(&args.teacher);
    let tokenizer = match Tokenizer::for_model(teacher) {
        Ok(tokenizer) => Some(tokenizer.save_beside(out, teacher).context("saving the tokenizer")?),
        Err(e) => {
            tracing::warn!("no tokenizer saved with the student: {e}");
            None
        }
    };

    let total = student.model.num_params();
    let new = total - config.clone().with_attention(dijiang_model::AttentionKernelConfig::Softmax).num_params();
    println!("teacher       {} ({:?})", args.teacher, student.format);
    println!("student       {} parameters, {} of them new", thousands(total), thousands(new));
    println!("new tensors   {}:", student.initialised.len());
    for name in &student.initialised {
        println!("  {name}");
    }
    println!("saved         {}", args.out);
    if let Some(tokenizer) = tokenizer {
        println!("tokenizer     {}", tokenizer.display());
    }
    Ok(())
}
