//! One attention layer's forward + backward time against sequence length: softmax attention,
//! DiJiang's quadratic form (the reference's masked `(phi(Q) phi(K)^T * G) V`), DiJiang chunked
//! and the sliding-window hybrid chunked (`--window` keys of exact softmax beside the normalised
//! linear part; each chunk length of `--chunks`, the fastest being the form's time).
//!
//! Inputs are `q, k, v` of shape `[1, heads, t, d]` (gradients w.r.t. all three); the loss is the
//! sum of the outputs. The feature map is the reference's (softmax over `x C T`), with the
//! reference's decays.

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use dijiang_kernel::feature_map::{projection_tensor, reference_projection, softmax_features};
use dijiang_kernel::linear_attention::{HybridInputs, WindowState, chunked, hybrid_chunked, parallel};
use dijiang_kernel::qmc::ScaleSampling;
use dijiang_model::attention::{SoftmaxKernel, reference_log_decay};
use serde_json::json;

use super::{Run, machine, median_time, write_json};
use crate::backend::Backend;

type AB = Autodiff<Backend>;

#[derive(clap::Args)]
pub struct Args {
    /// Sequence lengths.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096,8192")]
    pub lens: Vec<usize>,
    /// Chunk lengths tried for the chunked form.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    pub chunks: Vec<usize>,
    /// Heads and head size (pythia-70m's: 8 x 64).
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// The quadratic forms (softmax, DiJiang quadratic) only up to this length (their `t x t`
    /// scores need `heads * t^2 * 4` bytes each, several at once for the backward pass).
    #[arg(long, default_value_t = 8192)]
    pub max_quadratic: usize,
    /// The hybrid's window (0: no hybrid timings).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

#[derive(Clone, Copy)]
enum Form {
    Softmax,
    Quadratic,
    Chunked(usize),
    Hybrid(usize),
}

/// Forward + backward seconds of one form at length `t`.
fn time_form(form: Form, t: usize, args: &Args, device: &burn::tensor::Device<Backend>) -> f64 {
    let (h, d) = (args.heads, args.head_dim);
    let input = || Tensor::<AB, 4>::random([1, h, t, d], Distribution::Normal(0.0, 1.0), device).require_grad();
    let (q, k, v) = (input(), input(), input());
    let proj = projection_tensor::<AB>(reference_projection(d, d, ScaleSampling::default()), d, d, device);
    let log_decay = Tensor::<AB, 1>::from_data(
        TensorData::new(reference_log_decay(h).into_iter().map(|x| x as f32).collect::<Vec<_>>(), [h]),
        device,
    );
    let softmax = SoftmaxKernel::new(d);
    median_time::<Backend>(device, args.reps, 20.0, || {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        let loss = match form {
            Form::Softmax => softmax.forward(q, k, v).sum(),
            Form::Quadratic => {
                let (fq, fk) = (softmax_features(q, proj.clone()), softmax_features(k, proj.clone()));
                parallel(fq, fk, v, log_decay.clone()).sum()
            }
            Form::Chunked(c) => {
                let (fq, fk) = (softmax_features(q, proj.clone()), softmax_features(k, proj.clone()));
                let state = Tensor::zeros([1, h, d, d], device);
                chunked(fq, fk, v, log_decay.clone(), c, state).0.sum()
            }
            Form::Hybrid(c) => {
                let (phi_q, phi_k) =
                    (softmax_features(q.clone(), proj.clone()), softmax_features(k.clone(), proj.clone()));
                let x = HybridInputs { q, k, phi_q, phi_k, v, log_decay: log_decay.clone() };
                let state = WindowState::empty(&x, args.window);
                hybrid_chunked(x, c, state).0.sum()
            }
        };
        let grads = loss.backward();
        drop(grads);
    })
}

pub fn run(args: &Args) -> Result<()> {
    anyhow::ensure!(!args.lens.is_empty() && !args.chunks.is_empty(), "--lens and --chunks need values");
    let device = Default::default();
    let mut rows = Vec::new();
    for &t in &args.lens {
        let quadratic = t <= args.max_quadratic;
        let softmax_s = quadratic.then(|| time_form(Form::Softmax, t, args, &device));
        let quadratic_s = quadratic.then(|| time_form(Form::Quadratic, t, args, &device));
        let by_chunk: Vec<(usize, f64)> = args
            .chunks
            .iter()
            .filter(|&&c| c <= t)
            .map(|&c| (c, time_form(Form::Chunked(c), t, args, &device)))
            .collect();
        let (best_chunk, chunked_s) =
            by_chunk.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).expect("a chunk <= t");
        let hybrid_by_chunk: Vec<(usize, f64)> = if args.window > 0 {
            args.chunks
                .iter()
                .filter(|&&c| c <= t)
                .map(|&c| (c, time_form(Form::Hybrid(c), t, args, &device)))
                .collect()
        } else {
            Vec::new()
        };
        let hybrid = hybrid_by_chunk.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
        let show = |s: Option<f64>| s.map_or_else(|| "skipped".to_string(), |s| format!("{:.4} s", s));
        println!(
            "attention t={t:5}: softmax {}, dijiang quadratic {}, chunked {chunked_s:.4} s (chunk {best_chunk}), \
             hybrid W={} {}",
            show(softmax_s),
            show(quadratic_s),
            args.window,
            show(hybrid.map(|h| h.1))
        );
        rows.push(json!({
            "len": t,
            "softmax_s": softmax_s,
            "quadratic_s": quadratic_s,
            "chunked_s": chunked_s,
            "best_chunk": best_chunk,
            "chunked_by_chunk": by_chunk.iter().map(|(c, s)| json!({"chunk": c, "seconds": s})).collect::<Vec<_>>(),
            "hybrid_s": hybrid.map(|h| h.1),
            "hybrid_best_chunk": hybrid.map(|h| h.0),
        }));
    }
    let result = json!({
        "bench": "attention forward+backward",
        "machine": machine::<Backend>(Run::Primary),
        "heads": args.heads,
        "head_dim": args.head_dim,
        "features": args.head_dim,
        "window": args.window,
        "batch": 1,
        "rows": rows,
    });
    let path = write_json(&args.out, "attention.json", &result)?;
    println!("attention -> {}", path.display());
    Ok(())
}
