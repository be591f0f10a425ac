//! HF directory seeds (the repository's fixtures: GPT-NeoX, the reference DiJiang fork, a sharded
//! LLaMA with an index; stories260K's HF form from ../shared; a tiny LLaMA in f16/bf16/f32 written
//! here) and seeds of our own format, converted and saved at test time.

use std::path::Path;

use anyhow::Result;
use dijiang_model::DiJiangConfig;
use dijiang_model::cpu::Cpu;
use dijiang_model::import::{self, native};
use safetensors::{Dtype, tensor::TensorView};

use super::{repo, shared, values};
use crate::input::Input;

type B = Cpu;

const TINY_CONFIG: &str = r#"{"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
"num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
"rms_norm_eps": 1e-6, "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
"rope_theta": 10000.0}"#;

/// `values` as `dtype` bytes.
fn bytes_of(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// A tiny LLaMA (hidden 16, 4 heads of 4, 2 KV heads, MLP 24, vocab 40), mixed data types, with a
/// RoPE buffer HF checkpoints carry and the importer ignores.
fn tiny_llama() -> Result<Input> {
    let p = "model.layers.0";
    let specs: Vec<(String, Vec<usize>, Dtype)> = vec![
        ("model.embed_tokens.weight".into(), vec![40, 16], Dtype::F16),
        (format!("{p}.input_layernorm.weight"), vec![16], Dtype::F32),
        (format!("{p}.self_attn.q_proj.weight"), vec![16, 16], Dtype::BF16),
        (format!("{p}.self_attn.k_proj.weight"), vec![8, 16], Dtype::BF16),
        (format!("{p}.self_attn.v_proj.weight"), vec![8, 16], Dtype::F32),
        (format!("{p}.self_attn.o_proj.weight"), vec![16, 16], Dtype::F16),
        (format!("{p}.self_attn.rotary_emb.inv_freq"), vec![2], Dtype::F32),
        (format!("{p}.post_attention_layernorm.weight"), vec![16], Dtype::F32),
        (format!("{p}.mlp.gate_proj.weight"), vec![24, 16], Dtype::F32),
        (format!("{p}.mlp.up_proj.weight"), vec![24, 16], Dtype::F16),
        (format!("{p}.mlp.down_proj.weight"), vec![16, 24], Dtype::BF16),
        ("model.norm.weight".into(), vec![16], Dtype::F32),
        ("lm_head.weight".into(), vec![40, 16], Dtype::F32),
    ];
    let data: Vec<Vec<u8>> =
        specs.iter().enumerate().map(|(i, (_, s, d))| bytes_of(*d, &values(s.iter().product(), i as u32))).collect();
    let views = specs
        .iter()
        .zip(&data)
        .map(|((name, shape, dtype), bytes)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    let weights = safetensors::serialize(views, None)?;
    Ok(Input::new(vec![("config.json".into(), TINY_CONFIG.into()), ("model.safetensors".into(), weights)]))
}

/// A fixture directory's config and weights (its README and reference outputs left out).
fn fixture(name: &str) -> Result<Input> {
    let dir = repo().join("tests/fixtures").join(name);
    let mut input = Input::read_dir(&dir)?;
    input.files.retain(|(n, _)| n == "config.json" || (n.starts_with("model") && !n.ends_with(".md")));
    Ok(input)
}

/// The HF directory seeds.
pub fn hf_seeds() -> Result<Vec<Input>> {
    let mut seeds = vec![tiny_llama()?];
    for name in ["gpt-neox-tiny", "gpt-neox-dijiang-tiny", "llama-gqa-tiny"] {
        seeds.push(fixture(name)?);
    }
    if let Some(dir) = shared("fixtures/stories260k") {
        let names = [("hf-config.json", "config.json"), ("hf-model.safetensors", "model.safetensors")];
        seeds.push(Input::read_named(&dir, &names)?);
    }
    Ok(seeds)
}

/// The model at `source` saved in our format (converted to DiJiang if `dijiang`) with `tokenizer`
/// beside it, read back as an input.
fn saved_native(source: &Path, dijiang: bool, tokenizer: &[u8], out: &Path) -> Result<Input> {
    let device = Default::default();
    let loaded = if dijiang {
        dijiang_model::convert::convert::<B>(source, DiJiangConfig::default(), &device)?
    } else {
        import::load::<B>(source, &device)?
    };
    let manifest =
        native::Manifest { new_parameters: loaded.initialised, ..native::Manifest::new(loaded.model.config().clone()) };
    native::save(&loaded.model, &manifest, out)?;
    let mut input = Input::read_dir(out)?;
    input.files.push(("tokenizer.json".into(), tokenizer.to_vec()));
    Ok(input)
}

/// Our format's seeds: the tiny LLaMA as it is and converted, and the GPT-NeoX fixture converted.
pub fn native_seeds() -> Result<Vec<Input>> {
    let scratch = super::scratch("native")?;
    let tiny = scratch.path.join("tiny");
    tiny_llama()?.write(&tiny, None)?;
    let tokenizer = super::tokenizer::seeds()?.remove(0).files.remove(0).1;
    let neox = repo().join("tests/fixtures/gpt-neox-tiny");
    let sources = [(&tiny, false), (&tiny, true), (&neox, true)];
    sources
        .iter()
        .enumerate()
        .map(|(i, (source, dijiang))| saved_native(source, *dijiang, &tokenizer, &scratch.path.join(format!("out{i}"))))
        .collect()
}
