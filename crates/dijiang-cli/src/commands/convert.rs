//! `dijiang convert --teacher <model> --out <dir>`: the DiJiang student of a softmax model, saved in
//! the project's format, with a report of the parameters that are new. `--calibrate FILE` sets each
//! head's decay from the teacher's attention on the first tokens of a text.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Module;
use dijiang_kernel::qmc::ScaleSampling;
use dijiang_model::DiJiangConfig;
use dijiang_model::config::{
    DecayKind, FeatureInput, FeatureMapKind, FeatureTraining, GateKind, LinearWeight, OutputNorm,
};
use dijiang_model::convert::{convert, convert_calibrated, is_calibrated};
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
    /// What the feature map reads: rotated (queries and keys after RoPE, the reference) or
    /// unrotated (before it: the linear part is position-free apart from its decay).
    #[arg(long, default_value = "rotated")]
    feature_input: String,
    /// Draw the scales by Monte Carlo (the reference code) instead of quasi-Monte Carlo.
    #[arg(long)]
    mc: bool,
    /// Learnable per-feature weights D.
    #[arg(long)]
    feature_weights: bool,
    /// Decay: reference (gamma from 1 - 1/32 to 1 - 1/512 across heads), none (gamma = 1), or
    /// calibrated (per head, from the teacher's mean attention distance on --calibrate's text).
    #[arg(long, default_value = "reference")]
    decay: String,
    /// The longest horizon a head's decay may keep, in tokens (gamma <= 1 - 1/N however training
    /// moves it); without it gamma <= 1.
    #[arg(long)]
    max_horizon: Option<usize>,
    /// Seed for the new parameters.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// What training may change of the feature map: frozen (the reference), scales (T and D),
    /// projection (the whole DCT x T matrix), mlp (a residual MLP before the map).
    #[arg(long, default_value = "frozen")]
    feature_training: String,
    /// Divide each attention row by its sum (the standard linear-attention normaliser).
    #[arg(long)]
    normalize: bool,
    /// Sliding-window hybrid: exact softmax over the last N keys beside the linear attention
    /// (needs --normalize); 0: pure DiJiang.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Output gate: reference (random silu(x W_G)), none, identity (2 sigmoid(x W_G), W_G = 0).
    #[arg(long, default_value = "reference")]
    gate: String,
    /// Output normalisation: group-norm (the reference's) or none.
    #[arg(long, default_value = "group-norm")]
    output_norm: String,
    /// The hybrid's initial linear-part weight per head: one, or calibrated (the teacher's share of
    /// attention beyond the window on --calibrate's text).
    #[arg(long, default_value = "one")]
    linear_weight: String,
    /// The text whose first --calibrate-tokens tokens calibrate what --decay / --linear-weight
    /// mark calibrated.
    #[arg(long)]
    calibrate: Option<String>,
    #[arg(long, default_value_t = 512)]
    calibrate_tokens: usize,
}

/// The decay and linear weight named on the command line.
fn calibratable(args: &Args) -> Result<(DecayKind, LinearWeight)> {
    let decay = match args.decay.as_str() {
        "reference" => DecayKind::Reference,
        "none" => DecayKind::None,
        "calibrated" => DecayKind::Calibrated,
        other => anyhow::bail!("--decay `{other}`: expected reference, none or calibrated"),
    };
    let weight = match args.linear_weight.as_str() {
        "one" => LinearWeight::One,
        "calibrated" => LinearWeight::Calibrated,
        other => anyhow::bail!("--linear-weight `{other}`: expected one or calibrated"),
    };
    Ok((decay, weight))
}

/// The gate and output norm named on the command line.
fn output_options(args: &Args) -> Result<(GateKind, OutputNorm)> {
    let gate = match args.gate.as_str() {
        "reference" => GateKind::Reference,
        "none" => GateKind::None,
        "identity" => GateKind::Identity,
        other => anyhow::bail!("--gate `{other}`: expected reference, none or identity"),
    };
    let norm = match args.output_norm.as_str() {
        "group-norm" => OutputNorm::GroupNorm,
        "none" => OutputNorm::None,
        other => anyhow::bail!("--output-norm `{other}`: expected group-norm or none"),
    };
    Ok((gate, norm))
}

/// The calibration tokens of `--calibrate`, if the config needs them.
fn calibration(args: &Args, dijiang: &DiJiangConfig) -> Result<Option<Vec<u32>>> {
    let needed = is_calibrated(dijiang);
    let path = match (&args.calibrate, needed) {
        (Some(path), true) => path,
        (None, false) => return Ok(None),
        (None, true) => anyhow::bail!("--decay calibrated / --linear-weight calibrated need --calibrate FILE"),
        (Some(_), false) => anyhow::bail!("--calibrate: nothing to calibrate (--decay / --linear-weight calibrated)"),
    };
    let tokenizer = Tokenizer::for_model(Path::new(&args.teacher))
        .with_context(|| format!("finding the tokenizer of {}", args.teacher))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let ids = crate::commands::eval::tokens(&tokenizer, &text, Some(args.calibrate_tokens))?;
    anyhow::ensure!(
        ids.len() > args.window + 1,
        "{path} gives {} tokens; calibration needs more than --window + 1",
        ids.len()
    );
    Ok(Some(ids))
}

/// The student's DiJiang options from the command line.
fn dijiang_config(args: &Args) -> Result<DiJiangConfig> {
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
    let feature_input = match args.feature_input.as_str() {
        "rotated" => FeatureInput::Rotated,
        "unrotated" => FeatureInput::Unrotated,
        other => anyhow::bail!("--feature-input `{other}`: expected rotated or unrotated"),
    };
    let (gate, output_norm) = output_options(args)?;
    let (decay, linear_weight) = calibratable(args)?;
    Ok(DiJiangConfig {
        feature_training,
        feature_map,
        feature_input,
        sampling: if args.mc { ScaleSampling::Mc { seed: args.seed } } else { ScaleSampling::Qmc { shift_seed: None } },
        feature_weights: args.feature_weights,
        decay,
        max_horizon: args.max_horizon,
        seed: args.seed,
        normalize: args.normalize,
        window: args.window,
        linear_weight,
        gate,
        output_norm,
        ..Default::default()
    })
}

pub fn run(args: Args) -> Result<()> {
    let dijiang = dijiang_config(&args)?;
    let calibration = calibration(&args, &dijiang)?;
    let device = Default::default();
    let teacher = Path::new(&args.teacher);
    let student = match &calibration {
        Some(ids) => convert_calibrated::<Backend>(teacher, dijiang, ids, &device),
        None => convert::<Backend>(teacher, dijiang, &device),
    }
    .with_context(|| format!("converting {}", args.teacher))?;
    let config = student.model.config().clone();
    let mut manifest = Manifest::new(config.clone());
    manifest.source = Some(args.teacher.clone());
    manifest.new_parameters = student.initialised.clone();
    let out = Path::new(&args.out);
    save(&student.model, &manifest, out).with_context(|| format!("saving {}", args.out))?;
    // The tokenizer travels with the model, so that the student is self-contained.
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
    if let (Some(ids), Some(path)) = (&calibration, &args.calibrate) {
        println!("calibrated    on the teacher's attention to {} tokens of {path}", ids.len());
    }
    Ok(())
}
