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
use dijiang_model::attention::LayerState;
use dijiang_model::rope::rope_tables;
use dijiang_model::{AttentionKernelConfig, DecodeState, DiJiangConfig, ModelConfig, Transformer};
use serde_json::json;

use super::{machine, median_time, sync, write_json};
use crate::backend::Backend;

type Device = burn::tensor::Device<Backend>;

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
    #[arg(long, default_value = "runs/bench")]
    pub out: PathBuf,
}

/// A decoding state at position `context`, as a prefill would leave it (random contents).
fn state_at(model: &Transformer<Backend>, context: usize, device: &Device) -> DecodeState<Backend> {
    let c = model.config();
    let random = |shape: [usize; 4]| Tensor::<Backend, 4>::random(shape, Distribution::Normal(0.0, 1.0), device);
    let mut state = DecodeState::new(c.num_layers);
    state.position = context;
    for layer in state.layers.iter_mut() {
        *layer = Some(match &c.attention {
            AttentionKernelConfig::Softmax => LayerState::Kv {
                k: random([1, c.num_kv_heads, context, c.head_dim]),
                v: random([1, c.num_kv_heads, context, c.head_dim]),
            },
            AttentionKernelConfig::Dijiang(dj) => {
                // phi rows are distributions over the features: a non-negative state.
                LayerState::Recurrent(random([1, c.num_heads, dj.num_features(c.head_dim), c.head_dim]).abs())
            }
        });
    }
    state
}

/// Seconds per decoding step of block 0's attention alone (projections, cache or state update,
/// attention, output projection) from `state`'s layer 0: the part of a decoding step that depends
/// on the context, without the MLPs and the output head, which cost the same for both kernels.
fn attention_step(model: &Transformer<Backend>, state: DecodeState<Backend>, steps: usize, device: &Device) -> f64 {
    let c = model.config();
    let attention = &model.layers[0].attn;
    let mut layer = state.layers.into_iter().next().flatten();
    let x = Tensor::<Backend, 3>::random([1, 1, c.hidden_size], Distribution::Normal(0.0, 1.0), device);
    let mut position = state.position;
    let mut step = |layer: &mut Option<LayerState<Backend>>| {
        let (cos, sin) = rope_tables(position, 1, c.rotary_dims(), c.rope_theta, device);
        position += 1;
        attention.forward_cached(x.clone(), &cos, &sin, layer)
    };
    let _ = step(&mut layer);
    sync(device);
    let start = Instant::now();
    for _ in 0..steps {
        let _ = step(&mut layer);
    }
    sync(device);
    start.elapsed().as_secs_f64() / steps as f64
}

/// Tokens per second of `steps` greedy decoding steps from `state`.
fn decode_speed(model: &Transformer<Backend>, mut state: DecodeState<Backend>, steps: usize, device: &Device) -> f64 {
    let mut token = Tensor::<Backend, 2, Int>::zeros([1, 1], device);
    // One untimed step (allocations, kernel compilation on GPUs).
    let logits = model.forward_cached(token, &mut state);
    token = logits.argmax(2).reshape([1, 1]);
    sync(device);
    let start = Instant::now();
    for _ in 0..steps {
        let logits = model.forward_cached(token, &mut state);
        token = logits.argmax(2).reshape([1, 1]);
    }
    sync(device);
    steps as f64 / start.elapsed().as_secs_f64()
}

pub fn run(args: &Args) -> Result<()> {
    let device: Device = Default::default();
    let mut models = Vec::new();
    for name in &args.models {
        let mut config = ModelConfig::preset(name).with_context(|| format!("`{name}` is not a model preset"))?;
        config.max_seq_len = config.max_seq_len.max(args.contexts.iter().max().copied().unwrap_or(0) + args.tokens + 2);
        let softmax = Transformer::<Backend>::init(&config, 0, &device)?;
        let dijiang = Transformer::<Backend>::init(
            &config.clone().with_attention(AttentionKernelConfig::Dijiang(DiJiangConfig::default())),
            0,
            &device,
        )?;
        let mut decode = Vec::new();
        for &context in &args.contexts {
            let (s_state, d_state) = (state_at(&softmax, context, &device), state_at(&dijiang, context, &device));
            // f32 elements; the KV cache at `context` positions (it grows by one per step).
            let (s_bytes, d_bytes) = (s_state.num_elements() * 4, d_state.num_elements() * 4);
            let s_attention = attention_step(&softmax, s_state.clone(), args.tokens, &device);
            let d_attention = attention_step(&dijiang, d_state.clone(), args.tokens, &device);
            let s_speed = decode_speed(&softmax, s_state, args.tokens, &device);
            let d_speed = decode_speed(&dijiang, d_state, args.tokens, &device);
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
            decode.push(json!({
                "context": context,
                "softmax_tokens_per_s": s_speed,
                "dijiang_tokens_per_s": d_speed,
                "softmax_state_bytes": s_bytes,
                "dijiang_state_bytes": d_bytes,
                "softmax_attention_step_s": s_attention,
                "dijiang_attention_step_s": d_attention,
            }));
        }
        let mut prefill = Vec::new();
        for &len in &args.prefill {
            let tokens = Tensor::<Backend, 2, Int>::from_data(
                TensorData::new(
                    (0..len as i64).map(|i| (i * 7919) % config.vocab_size as i64).collect::<Vec<_>>(),
                    [1, len],
                ),
                &device,
            );
            let time = |model: &Transformer<Backend>| {
                median_time(&device, 3, 10.0, || {
                    let mut state = DecodeState::new(config.num_layers);
                    let _ = model.forward_cached(tokens.clone(), &mut state);
                })
            };
            let (s, d) = (time(&softmax), time(&dijiang));
            println!(
                "{name} prefill {len:5}: softmax {:.1} tok/s, dijiang {:.1} tok/s",
                len as f64 / s,
                len as f64 / d
            );
            prefill.push(json!({
                "len": len,
                "softmax_tokens_per_s": len as f64 / s,
                "dijiang_tokens_per_s": len as f64 / d,
            }));
        }
        models.push(json!({"model": name, "decode": decode, "prefill": prefill}));
    }
    let result = json!({
        "bench": "decode",
        "machine": machine(),
        "tokens_per_context": args.tokens,
        "models": models,
    });
    let path = write_json(&args.out, "decode.json", &result)?;
    println!("decode -> {}", path.display());
    Ok(())
}
