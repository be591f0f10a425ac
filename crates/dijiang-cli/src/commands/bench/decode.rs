//! Decoding speed and state memory against context length, for one model shape with softmax
//! attention (a KV cache) and with DiJiang attention (a recurrent state), and prefill speed.
//!
//! Each context is also timed for block 0's attention alone, the part of a step that grows with the
//! context.
//!
//! Decoding at context `L` starts from a state as a prefill of `L` tokens would leave it (a KV
//! cache of `L` positions; a recurrent state, whose size does not depend on `L`), filled with random
//! values: the cost of a decoding step does not depend on them, and no `L`-token prefill has to run
//! first. Then `--tokens` steps are timed, each feeding the previous step's greedy token.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::Distribution;
use dijiang_kernel::linear_attention::WindowState;
use dijiang_model::attention::{LayerState, ShiftState};
use dijiang_model::rope::Rope;
use dijiang_model::{AttentionKernelConfig, DecodeState, DiJiangConfig, ModelConfig, Transformer};
use dijiang_train::experiment::Experiment;
use serde_json::{Value, json};

use super::{OnBackend, Run, machine, median_time, sync, write_json};

#[derive(clap::Args)]
pub struct Args {
    /// Model shapes (presets).
    #[arg(long, value_delimiter = ',', default_value = "pythia-70m,smollm2-135m")]
    pub models: Vec<String>,
    /// Context lengths.
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096,8192")]
    pub contexts: Vec<usize>,
    /// Prefill lengths.
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    pub prefill: Vec<usize>,
    /// Decoding steps timed per context.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// The DiJiang model takes this experiment's `[student]` options (e.g. the default's hybrid
    /// without gate) instead of the reference's (swish gate, GroupNorm, no window).
    #[arg(long)]
    pub experiment: Option<PathBuf>,
    /// Only the binary's backend (by default a Flex build also measures NdArray, side by side).
    #[arg(long)]
    pub no_peer: bool,
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

impl Args {
    /// The DiJiang options measured: the experiment's student, or the reference's.
    fn student(&self) -> Result<DiJiangConfig> {
        let Some(path) = &self.experiment else { return Ok(DiJiangConfig::default()) };
        let experiment = Experiment::load(path, &[])
            .with_context(|| format!("reading {} (run from the repository root)", path.display()))?;
        Ok(experiment.student)
    }
}

/// A decoding state at position `context`, as a prefill would leave it (random contents).
fn state_at<B: Backend>(model: &Transformer<B>, context: usize, device: &B::Device) -> DecodeState<B> {
    let c = model.config();
    let random = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let mut state = DecodeState::new(c.num_layers);
    state.position = context;
    for layer in state.layers.iter_mut() {
        *layer = Some(match &c.attention {
            AttentionKernelConfig::Softmax => LayerState::Kv {
                k: random([1, c.num_kv_heads, context, c.head_dim]),
                v: random([1, c.num_kv_heads, context, c.head_dim]),
            },
            AttentionKernelConfig::Dijiang(dj) => {
                // phi rows are distributions over the features: a non-negative state, with the
                // normaliser's sums `z` as one more column in the normalised forms.
                let (m, d) = (dj.num_features(c.head_dim), c.head_dim);
                let linear = random([1, c.num_heads, m, d + usize::from(dj.normalize)]).abs();
                if dj.window == 0 && dj.token_shift {
                    // The token shift's last raw key and value.
                    let (key, value) = (random([1, c.num_kv_heads, 1, d]), random([1, c.num_kv_heads, 1, d]));
                    LayerState::Shifted { linear, last: ShiftState { key, value } }
                } else if dj.window == 0 {
                    LayerState::Recurrent(linear)
                } else {
                    // The hybrid's ring buffer holds the last `window` keys, features and values.
                    let w = dj.window;
                    LayerState::Window(WindowState {
                        linear,
                        keys: random([1, c.num_kv_heads, w, d]),
                        features: random([1, c.num_kv_heads, w, m]).abs(),
                        values: random([1, c.num_kv_heads, w, d]),
                        seen: context,
                    })
                }
            }
        });
    }
    state
}

/// Seconds per decoding step of block 0's attention alone (projections, cache or state update,
/// attention, output projection) from `state`'s layer 0: the part of a decoding step that depends
/// on the context, without the MLPs and the output head, which cost the same for both kernels.
fn attention_step<B: Backend>(model: &Transformer<B>, state: DecodeState<B>, steps: usize, device: &B::Device) -> f64 {
    let c = model.config();
    let attention = &model.layers[0].attn;
    let mut layer = state.layers.into_iter().next().flatten();
    let x = Tensor::<B, 3>::random([1, 1, c.hidden_size], Distribution::Normal(0.0, 1.0), device);
    let mut position = state.position;
    let mut step = |layer: &mut Option<LayerState<B>>| {
        let rope = Rope::new(c, position, 1, device);
        position += 1;
        attention.forward_cached(x.clone(), &rope, layer)
    };
    let _ = step(&mut layer);
    sync::<B>(device);
    let start = Instant::now();
    for _ in 0..steps {
        let _ = step(&mut layer);
    }
    sync::<B>(device);
    start.elapsed().as_secs_f64() / steps as f64
}

/// Tokens per second of `steps` greedy decoding steps from `state`.
fn decode_speed<B: Backend>(
    model: &Transformer<B>,
    mut state: DecodeState<B>,
    steps: usize,
    device: &B::Device,
) -> f64 {
    let mut token = Tensor::<B, 2, Int>::zeros([1, 1], device);
    // One untimed step (allocations, kernel compilation on GPUs).
    let logits = model.forward_cached(token, &mut state);
    token = logits.argmax(2).reshape([1, 1]);
    sync::<B>(device);
    let start = Instant::now();
    for _ in 0..steps {
        let logits = model.forward_cached(token, &mut state);
        token = logits.argmax(2).reshape([1, 1]);
    }
    sync::<B>(device);
    steps as f64 / start.elapsed().as_secs_f64()
}

/// One model shape with softmax and with DiJiang attention.
struct Pair<B: Backend> {
    name: String,
    config: ModelConfig,
    softmax: Transformer<B>,
    dijiang: Transformer<B>,
}

impl<B: Backend> Pair<B> {
    fn new(name: &str, args: &Args, device: &B::Device) -> Result<Self> {
        let mut config = ModelConfig::preset(name).with_context(|| format!("`{name}` is not a model preset"))?;
        config.max_seq_len = config.max_seq_len.max(args.contexts.iter().max().copied().unwrap_or(0) + args.tokens + 2);
        let softmax = Transformer::<B>::init(&config, 0, device)?;
        let dijiang = config.clone().with_attention(AttentionKernelConfig::Dijiang(args.student()?));
        let dijiang = Transformer::<B>::init(&dijiang, 0, device)?;
        Ok(Self { name: name.to_string(), config, softmax, dijiang })
    }

    /// Decoding speed, state size and the attention step's time at `context`.
    fn decode(&self, context: usize, tokens: usize, device: &B::Device) -> Value {
        let name = &self.name;
        let (s_state, d_state) = (state_at(&self.softmax, context, device), state_at(&self.dijiang, context, device));
        // f32 elements; the KV cache at `context` positions (it grows by one per step).
        let (s_bytes, d_bytes) = (s_state.num_elements() * 4, d_state.num_elements() * 4);
        let s_attention = attention_step(&self.softmax, s_state.clone(), tokens, device);
        let d_attention = attention_step(&self.dijiang, d_state.clone(), tokens, device);
        let s_speed = decode_speed(&self.softmax, s_state, tokens, device);
        let d_speed = decode_speed(&self.dijiang, d_state, tokens, device);
        println!(
            "{name} decode at {context:5}: softmax {s_speed:7.2} tok/s ({:.1} MiB KV cache), dijiang {d_speed:7.2} tok/s ({:.2} MiB state): {:.2}x",
            s_bytes as f64 / (1 << 20) as f64,
            d_bytes as f64 / (1 << 20) as f64,
            d_speed / s_speed
        );
        println!(
            "{name} attention step at {context:5}: softmax {:.3} ms, dijiang {:.3} ms: {:.2}x",
            s_attention * 1e3,
            d_attention * 1e3,
            s_attention / d_attention
        );
        json!({
            "context": context,
            "softmax_tokens_per_s": s_speed,
            "dijiang_tokens_per_s": d_speed,
            "softmax_state_bytes": s_bytes,
            "dijiang_state_bytes": d_bytes,
            "softmax_attention_step_s": s_attention,
            "dijiang_attention_step_s": d_attention,
        })
    }

    /// Prefill speed of `len` tokens from an empty state.
    fn prefill(&self, len: usize, device: &B::Device) -> Value {
        let vocab = self.config.vocab_size as i64;
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..len as i64).map(|i| (i * 7919) % vocab).collect::<Vec<_>>(), [1, len]),
            device,
        );
        let time = |model: &Transformer<B>| {
            median_time::<B>(device, 3, 10.0, || {
                let mut state = DecodeState::new(self.config.num_layers);
                let _ = model.forward_cached(tokens.clone(), &mut state);
            })
        };
        let (s, d) = (time(&self.softmax), time(&self.dijiang));
        println!(
            "{} prefill {len:5}: softmax {:.1} tok/s, dijiang {:.1} tok/s",
            self.name,
            len as f64 / s,
            len as f64 / d
        );
        json!({"len": len, "softmax_tokens_per_s": len as f64 / s, "dijiang_tokens_per_s": len as f64 / d})
    }
}

/// Every model shape on backend `B`, written to `run`'s file.
fn run_on<B: Backend>(args: &Args, run: Run) -> Result<()> {
    println!("decode on {}", run.backend());
    let device = B::Device::default();
    let mut models = Vec::new();
    for name in &args.models {
        let pair = Pair::<B>::new(name, args, &device)?;
        let decode: Vec<Value> = args.contexts.iter().map(|&c| pair.decode(c, args.tokens, &device)).collect();
        let prefill: Vec<Value> = args.prefill.iter().map(|&len| pair.prefill(len, &device)).collect();
        models.push(json!({"model": name, "decode": decode, "prefill": prefill}));
    }
    let result = json!({
        "bench": "decode",
        "machine": machine::<B>(run),
        "tokens_per_context": args.tokens,
        "dijiang_options": serde_json::to_value(args.student()?)?,
        "experiment": args.experiment.as_ref().map(|p| p.display().to_string()),
        "models": models,
    });
    let path = write_json(&args.out, &run.file("decode"), &result)?;
    println!("decode -> {}", path.display());
    Ok(())
}

impl OnBackend for Args {
    fn no_peer(&self) -> bool {
        self.no_peer
    }

    fn run_on<B: Backend>(&self, run: Run) -> Result<()> {
        run_on::<B>(self, run)
    }
}
