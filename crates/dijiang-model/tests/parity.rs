//! Parity with the PyTorch references (`tests/fixtures`, `../shared/fixtures`): logits and hidden
//! states of our models, loaded from the same checkpoints, within 1e-4 absolute.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixture, shared, smollm2_gguf};

use std::path::Path;

use burn::prelude::*;
use dijiang_model::Transformer;
use dijiang_model::cpu::Cpu;
use dijiang_model::import::safetensors::SafetensorsFiles;
use dijiang_model::import::{Format, load};

type B = Cpu;
const TOLERANCE: f32 = 1e-4;

struct Expected {
    input_ids: Tensor<B, 2, Int>,
    logits: Vec<f32>,
    hidden: Vec<Vec<f32>>,
}

fn expected(path: &Path) -> Expected {
    let file = SafetensorsFiles::open(path).expect("fixture");
    let (shape, ids) = file.read_ints("input_ids").expect("input_ids");
    let device = Default::default();
    let input_ids = Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), &device);
    let mut hidden = Vec::new();
    while let Ok(h) = file.read(&format!("hidden_states.{}", hidden.len())) {
        hidden.push(h.data);
    }
    Expected { input_ids, logits: file.read("logits").expect("logits").data, hidden }
}

fn values(x: Tensor<B, 3>) -> Vec<f32> {
    x.into_data().to_vec::<f32>().expect("f32")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Runs the model on the fixture's input and checks logits and every hidden state.
fn check(model: &Transformer<B>, expected: &Expected, what: &str) {
    let out = model.forward_with_hidden(expected.input_ids.clone(), true);
    for (i, (ours, theirs)) in out.hidden_states.into_iter().zip(&expected.hidden).enumerate() {
        let diff = max_abs_diff(&values(ours), theirs);
        assert!(diff < TOLERANCE, "{what}: hidden_states.{i} differ by {diff:e}");
    }
    let diff = max_abs_diff(&values(out.logits), &expected.logits);
    assert!(diff < TOLERANCE, "{what}: logits differ by {diff:e}");
    eprintln!("{what}: logits within {diff:.2e}");
}

#[test]
fn gpt_neox_tiny_matches_hf_transformers() {
    let loaded = load::<B>(&fixture("gpt-neox-tiny"), &Default::default()).expect("load");
    assert_eq!(loaded.format, Format::HfSafetensors);
    check(&loaded.model, &expected(&fixture("gpt-neox-tiny/expected.safetensors")), "gpt-neox-tiny");
}

#[test]
fn gpt_neox_dijiang_tiny_matches_the_reference_code() {
    let loaded = load::<B>(&fixture("gpt-neox-dijiang-tiny"), &Default::default()).expect("load");
    assert!(matches!(loaded.model.config().attention, dijiang_model::AttentionKernelConfig::Dijiang(_)));
    check(&loaded.model, &expected(&fixture("gpt-neox-dijiang-tiny/expected.safetensors")), "gpt-neox-dijiang-tiny");
}

#[test]
fn llama_gqa_tiny_loads_sharded_and_matches_hf_transformers() {
    let loaded = load::<B>(&fixture("llama-gqa-tiny"), &Default::default()).expect("load");
    assert_eq!(loaded.model.config().num_kv_heads, 2);
    check(&loaded.model, &expected(&fixture("llama-gqa-tiny/expected.safetensors")), "llama-gqa-tiny");
}

/// Mean next-token NLL of `logits` [1, t, v] for `ids`.
fn perplexity(logits: Tensor<B, 3>, ids: &Tensor<B, 2, Int>) -> f64 {
    let [_, t, v] = logits.dims();
    let logp = burn::tensor::activation::log_softmax(logits.reshape([t, v]), 1).narrow(0, 0, t - 1);
    let targets = ids.clone().reshape([t]).narrow(0, 1, t - 1).reshape([t - 1, 1]);
    let nll = -logp.gather(1, targets).mean().into_scalar();
    (nll as f64).exp()
}

#[test]
fn stories260k_llama2c_and_hf_checkpoints_match_the_reference() {
    let (Some(bin), Some(hf)) = (shared("models/stories260K/stories260K.bin"), shared("fixtures/stories260k")) else {
        return;
    };
    // The HF copy has its config under another name: present it as an HF directory.
    let dir = std::env::temp_dir().join(format!("dijiang-stories260k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(hf.join("hf-config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(hf.join("hf-model.safetensors"), dir.join("model.safetensors")).unwrap();
    let expected = expected(&hf.join("expected.safetensors"));
    let device = Default::default();

    let from_bin = load::<B>(&bin, &device).expect("llama2.c");
    assert_eq!(from_bin.format, Format::Llama2c);
    check(&from_bin.model, &expected, "stories260K (llama2.c)");
    let from_hf = load::<B>(&dir, &device).expect("hf");
    check(&from_hf.model, &expected, "stories260K (HF)");
    std::fs::remove_dir_all(&dir).ok();

    let ppl = perplexity(from_bin.model.forward(expected.input_ids.clone()), &expected.input_ids);
    eprintln!("stories260K perplexity on the fixture tokens: {ppl:.4}");
    assert!((ppl - 4.66).abs() < 0.01, "perplexity {ppl}");
}

#[test]
fn smollm2_135m_q4_1_gguf_matches_hf_transformers() {
    let Some(path) = smollm2_gguf() else { return };
    let loaded = load::<B>(&path, &Default::default()).expect("load gguf");
    assert_eq!(loaded.format, Format::Gguf);
    let config = loaded.model.config();
    assert_eq!((config.num_layers, config.num_heads, config.num_kv_heads, config.rope_theta), (30, 9, 3, 100000.0));
    assert!(config.tie_embeddings);

    let file = SafetensorsFiles::open(&fixture("smollm2-135m/expected.safetensors")).expect("fixture");
    let (shape, ids) = file.read_ints("input_ids").unwrap();
    let (_, top5) = file.read_ints("top5_ids").unwrap();
    let last = file.read("last_logits").unwrap().data;
    let t = shape[1];
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &Default::default());
    let logits = loaded.model.forward(input);
    let v = config.vocab_size;
    let all = values(logits);
    let diff = max_abs_diff(&all[(t - 1) * v..], &last);
    eprintln!("smollm2-135m: last-position logits within {diff:.3e}");
    assert!(diff < 2e-2, "last-position logits differ by {diff}");
    for pos in 0..t {
        let row = &all[pos * v..(pos + 1) * v];
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
        let ours: Vec<i64> = order[..5].iter().map(|i| *i as i64).collect();
        assert_eq!(ours, top5[pos * 5..pos * 5 + 5], "top-5 ids at position {pos}");
    }
}
