//! Tokenizers and decoding: fixture token ids, greedy generations of real models, and incremental
//! decoding (KV cache / recurrent state) equal to the full forward pass.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixture, shared, smollm2_gguf};

use std::path::Path;

use burn::prelude::*;
use dijiang_model::config::{AttentionKernelConfig, DecayKind, FeatureInput, GateKind, LinearWeight, OutputNorm};
use dijiang_model::convert::{convert, convert_calibrated, is_calibrated};
use dijiang_model::cpu::Cpu;
use dijiang_model::generate::{Sampler, Sampling, generate};
use dijiang_model::import::Checkpoint;
use dijiang_model::import::safetensors::SafetensorsFiles;
use dijiang_model::tokenizer::Tokenizer;
use dijiang_model::{DecodeState, DiJiangConfig, Transformer};

type B = Cpu;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A tiny model from a fixture, optionally with its attention swapped (chunk length 16, so that
/// the test sequences span several chunks).
fn tiny<Bk: Backend>(name: &str, dijiang: bool, device: &Bk::Device) -> Transformer<Bk> {
    let checkpoint = Checkpoint::open(&fixture(name)).unwrap();
    let mut config = checkpoint.config.clone();
    let is_dijiang = match &mut config.attention {
        AttentionKernelConfig::Dijiang(dj) => {
            dj.chunk_len = 16;
            true
        }
        AttentionKernelConfig::Softmax => false,
    };
    if dijiang && !is_dijiang {
        config.attention = AttentionKernelConfig::Dijiang(DiJiangConfig { chunk_len: 16, ..Default::default() });
    }
    let is_new = |n: &str| dijiang && !is_dijiang && n.contains(".attn.kernel.");
    checkpoint.build(&config, &is_new, 5, device).unwrap().model
}

fn tokens<Bk: Backend>(ids: &[i64], device: &Bk::Device) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

/// Prefill `k` tokens, then feed the rest one at a time: every position's logits equal the full
/// forward pass's within 1e-4.
fn check_incremental<Bk: Backend>(model: &Transformer<Bk>, what: &str, device: &Bk::Device) {
    let len = 70;
    let vocab = model.config().vocab_size;
    let ids: Vec<i64> = (0..len).map(|i| ((i * 31 + 7) % vocab) as i64).collect();
    let full = model.forward(tokens::<Bk>(&ids, device)).into_data().convert::<f32>().to_vec::<f32>().unwrap();
    for k in [0usize, 1, 5] {
        let mut state = DecodeState::new(model.layers.len());
        let mut got = Vec::new();
        if k > 0 {
            got.extend(
                model
                    .forward_cached(tokens::<Bk>(&ids[..k], device), &mut state)
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .unwrap(),
            );
        }
        for i in k..len {
            let step = model.forward_cached(tokens::<Bk>(&ids[i..i + 1], device), &mut state);
            got.extend(step.into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
        let diff = got.iter().zip(&full).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{what}, prefill {k}: incremental logits differ by {diff:e}");
    }
}

#[test]
fn incremental_decoding_equals_the_full_forward_pass() {
    let device = Default::default();
    check_incremental(&tiny::<B>("gpt-neox-tiny", false, &device), "gpt-neox softmax", &device);
    check_incremental(&tiny::<B>("gpt-neox-dijiang-tiny", true, &device), "gpt-neox reference dijiang", &device);
    check_incremental(&tiny::<B>("llama-gqa-tiny", false, &device), "llama gqa softmax", &device);
    check_incremental(&tiny::<B>("llama-gqa-tiny", true, &device), "llama gqa dijiang", &device);
}

/// The DiJiang options beside the reference, each with a name.
fn options() -> Vec<(String, DiJiangConfig)> {
    let base = DiJiangConfig { chunk_len: 16, ..Default::default() };
    let normalized = DiJiangConfig { normalize: true, ..base.clone() };
    let pass_through = DiJiangConfig { gate: GateKind::None, output_norm: OutputNorm::None, ..normalized.clone() };
    let mut options = vec![
        ("normalised".to_string(), normalized.clone()),
        ("normalised, no gate, no group norm".to_string(), pass_through.clone()),
        ("identity gate".to_string(), DiJiangConfig { gate: GateKind::Identity, ..base.clone() }),
        ("calibrated decay".to_string(), DiJiangConfig { decay: DecayKind::Calibrated, ..pass_through.clone() }),
    ];
    // Windows of one key, inside a chunk, a chunk's length, and longer than the 70-token sequence.
    for window in [1, 5, 16, 100] {
        options.push((format!("hybrid W={window}"), DiJiangConfig { window, ..pass_through.clone() }));
    }
    // Every reference horizon (32 to 512 tokens) is beyond 8: the bound holds for all heads.
    let bounded = DiJiangConfig { window: 5, max_horizon: Some(8), ..pass_through.clone() };
    options.push(("hybrid W=5, decay horizon at most 8 tokens".into(), bounded));
    let calibrated = DiJiangConfig {
        window: 5,
        decay: DecayKind::Calibrated,
        linear_weight: LinearWeight::Calibrated,
        ..pass_through
    };
    options.push(("hybrid W=5, calibrated decay and linear weight".into(), calibrated));
    let unrotated = FeatureInput::Unrotated;
    options.push(("un-rotated features".into(), DiJiangConfig { feature_input: unrotated, ..base }));
    let hybrid = DiJiangConfig { window: 5, feature_input: unrotated, ..normalized.clone() };
    options.push(("hybrid W=5, un-rotated features".into(), hybrid));
    options.push(("hybrid W=5, reference gate and group norm".into(), DiJiangConfig { window: 5, ..normalized }));
    options
}

/// The student of the fixture `teacher` with `dijiang` (calibrated on fixed token ids).
fn student<Bk: Backend>(teacher: &str, dijiang: DiJiangConfig, device: &Bk::Device) -> Transformer<Bk> {
    let path = fixture(teacher);
    if is_calibrated(&dijiang) {
        let ids: Vec<u32> = (0..48).map(|i| (i * 17 + 3) % 300).collect();
        return convert_calibrated::<Bk>(&path, dijiang, &ids, device).unwrap().model;
    }
    convert::<Bk>(&path, dijiang, device).unwrap().model
}

/// One token as a prompt, 19 decoding steps, 33 tokens in one call (chunked, from the state), then
/// one token at a time again: the same logits as the full forward pass within 1e-4.
fn check_mixed_decoding<Bk: Backend>(model: &Transformer<Bk>, what: &str, device: &Bk::Device) {
    let len = 70;
    let vocab = model.config().vocab_size;
    let ids: Vec<i64> = (0..len).map(|i| ((i * 31 + 7) % vocab) as i64).collect();
    let logits = |x: Tensor<Bk, 3>| x.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let full = logits(model.forward(tokens::<Bk>(&ids, device)));
    let mut state = DecodeState::new(model.layers.len());
    let mut got = Vec::new();
    let calls = (0..20).map(|i| i..i + 1).chain(std::iter::once(20..53)).chain((53..len).map(|i| i..i + 1));
    for range in calls {
        got.extend(logits(model.forward_cached(tokens::<Bk>(&ids[range], device), &mut state)));
    }
    let diff = got.iter().zip(&full).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-4, "{what}: decoding, a 33-token call, decoding: logits differ by {diff:e}");
}

#[test]
fn every_dijiang_option_decodes_as_the_full_forward_pass() {
    let device = Default::default();
    // Grouped-query heads for every option; GPT-NeoX (partial rotary) for the hybrid once.
    let last = options().len() - 1;
    for (i, (name, dijiang)) in options().into_iter().enumerate() {
        let teachers: &[&str] = if i == last { &["llama-gqa-tiny", "gpt-neox-tiny"] } else { &["llama-gqa-tiny"] };
        for teacher in teachers {
            let model = student::<B>(teacher, dijiang.clone(), &device);
            let what = format!("{teacher} {name}");
            check_mixed_decoding(&model, &what, &device);
            // And `generate` (prefill, then the recurrent state / ring buffer) runs.
            let (new, _) = generate(&model, &[1, 5, 9], 6, &mut Sampler::new(Sampling::default()), None, |_| {});
            assert_eq!(new.len(), 6, "{what}");
        }
    }
}

/// `model` with every layer's token shift set to fixed mixes in (-0.5, 1.5) (training moves them
/// from 0), so that the shifted keys and values differ from the plain ones.
fn with_shift_mixes<Bk: Backend>(mut model: Transformer<Bk>, device: &Bk::Device) -> Transformer<Bk> {
    use burn::module::Param;
    use dijiang_model::attention::AttentionKernel;
    for (l, layer) in model.layers.iter_mut().enumerate() {
        let AttentionKernel::DiJiang(kernel) = &mut layer.attn.kernel else { panic!("a DiJiang student") };
        let shift = kernel.shift.as_mut().expect("token_shift builds the mixes");
        let [h, d] = shift.keys.dims();
        let mixes = |salt: usize| {
            let values = (0..h * d).map(|i| (((i * 7 + l * 13 + salt) % 11) as f32) / 5.0 - 0.5).collect();
            Param::from_tensor(Tensor::<Bk, 2>::from_data(TensorData::new(values, [h, d]), device))
        };
        (shift.keys, shift.values) = (mixes(0), mixes(3));
    }
    model
}

#[test]
fn the_token_shift_starts_as_without_it_and_decodes_as_the_full_forward_pass() {
    let device = Default::default();
    let pure = DiJiangConfig {
        normalize: true,
        gate: GateKind::None,
        output_norm: OutputNorm::None,
        feature_input: FeatureInput::Unrotated,
        chunk_len: 16,
        ..Default::default()
    };
    let shifted = DiJiangConfig { token_shift: true, ..pure.clone() };
    let ids: Vec<i64> = (0..40).map(|i| ((i * 31 + 7) % 300) as i64).collect();
    let logits = |m: &Transformer<B>| m.forward(tokens::<B>(&ids, &device)).into_data().to_vec::<f32>().unwrap();
    for (features, teacher) in [(FeatureInput::Unrotated, "llama-gqa-tiny"), (FeatureInput::Rotated, "gpt-neox-tiny")] {
        let plain = student::<B>(teacher, DiJiangConfig { feature_input: features, ..pure.clone() }, &device);
        let fresh = student::<B>(teacher, DiJiangConfig { feature_input: features, ..shifted.clone() }, &device);
        // Mixes of 0: the same bits as the student without the shift.
        let (a, b) = (logits(&plain), logits(&fresh));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{teacher}: a fresh shift changed logits");
        let trained = with_shift_mixes(fresh, &device);
        let moved = logits(&trained).iter().zip(&a).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(moved > 1e-3, "{teacher}: the mixes moved logits by only {moved:e}");
        // The chunked form within a call, the recurrent step and the state's last key and value
        // across calls: the full pass's logits.
        check_mixed_decoding(&trained, &format!("{teacher} token shift, {features:?} features"), &device);
        check_incremental(&trained, &format!("{teacher} token shift"), &device);
    }
    let hybrid = DiJiangConfig { window: 4, ..shifted };
    let config = dijiang_model::ModelConfig::stories260k().with_attention(AttentionKernelConfig::Dijiang(hybrid));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("token_shift") && err.contains("window"), "{err}");
}

#[test]
fn hybrid_state_is_constant_in_context_length() {
    let device = Default::default();
    let dijiang = DiJiangConfig { normalize: true, window: 16, chunk_len: 64, ..Default::default() };
    let model = student::<B>("llama-gqa-tiny", dijiang, &device);
    let [short, long] = [100usize, 4096].map(|len| {
        let ids: Vec<i64> = (0..len).map(|i| ((i * 13) % 300) as i64).collect();
        let mut state = DecodeState::new(model.layers.len());
        model.forward_cached(tokens::<B>(&ids, &device), &mut state);
        (state.shapes(), state.num_elements())
    });
    assert_eq!(short, long, "hybrid state changed with context length");
    // Per layer: [S | z], and the ring's keys, features and values of 16 positions.
    assert_eq!(short.0.len(), 3 * 4);
    assert_eq!(short.0[1][2], 16);
}

#[cfg(feature = "wgpu-tests")]
#[test]
fn incremental_dijiang_decoding_equals_the_full_forward_pass_on_wgpu() {
    let device = burn::backend::wgpu::WgpuDevice::default();
    type W = burn::backend::Wgpu;
    check_incremental(&tiny::<W>("gpt-neox-dijiang-tiny", true, &device), "wgpu gpt-neox dijiang", &device);
    check_incremental(&tiny::<W>("llama-gqa-tiny", true, &device), "wgpu llama gqa dijiang", &device);
    let hybrid = DiJiangConfig { normalize: true, window: 5, chunk_len: 16, ..Default::default() };
    check_mixed_decoding(&student::<W>("llama-gqa-tiny", hybrid, &device), "wgpu llama gqa hybrid", &device);
}

#[test]
fn dijiang_state_is_constant_in_context_length_and_a_kv_cache_is_not() {
    let device = Default::default();
    let sizes = |model: &Transformer<B>, lens: [usize; 2]| {
        lens.map(|len| {
            let vocab = model.config().vocab_size;
            let ids: Vec<i64> = (0..len).map(|i| ((i * 13) % vocab) as i64).collect();
            let mut state = DecodeState::new(model.layers.len());
            model.forward_cached(tokens::<B>(&ids, &device), &mut state);
            (state.shapes(), state.num_elements())
        })
    };
    let [short, long] = sizes(&tiny::<B>("llama-gqa-tiny", true, &device), [128, 4096]);
    assert_eq!(short.0, long.0, "DiJiang state shapes changed with context length");
    assert_eq!(short.0.len(), 3, "one state tensor per layer");
    // The same check fails for a KV cache (which is why it is 8x shorter here: quadratic attention).
    let [short, long] = sizes(&tiny::<B>("llama-gqa-tiny", false, &device), [128, 1024]);
    assert_ne!(short.0, long.0);
    assert_eq!(long.1, short.1 * 8, "a KV cache grows with the context");
}

#[test]
fn smollm2_tokenizer_and_greedy_generation_match_the_fixture() {
    let Some(path) = smollm2_gguf() else { return };
    let expected = json(&fixture("smollm2-135m/expected.json"));
    let tokenizer = Tokenizer::for_model(&path).unwrap();
    let ids = tokenizer.encode(expected["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(ids, ids_of(&expected["ids"]));
    // SmolLM2's own tokenizer (and llama.cpp's `smollm`) splits digits one by one before the GPT-2
    // split, so a run of spaces before a digit stays whole: ids from the `tokenizers` library with
    // that pre-tokenizer. transformers' GGUF loader falls back to the plain GPT-2 split here
    // (`"   ", " ", "1"`: 333, 216, 33), the cause of PIQA's differences in docs/evaluation.md.
    assert_eq!(
        tokenizer.encode("greek yoghurt    1 tablespoon,  3/4 cup").unwrap(),
        [87, 8141, 14898, 48347, 289, 33, 31170, 28, 256, 35, 31, 36, 7118]
    );
    let greedy = ids_of(&expected["greedy_ids"]);
    assert_eq!(
        tokenizer.decode(&greedy[ids.len()..]),
        expected["greedy_text"].as_str().unwrap()["The capital of France is".len()..]
    );

    // Saved as tokenizer.json (what `convert` writes beside a student), it encodes the same.
    let dir = std::env::temp_dir().join(format!("dijiang-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = tokenizer.save_beside(&dir, &path).unwrap();
    let reloaded = Tokenizer::for_model(&json_path).unwrap();
    assert_eq!(reloaded.encode(expected["prompt"].as_str().unwrap()).unwrap(), ids);
    assert_eq!(reloaded.decode(&greedy), tokenizer.decode(&greedy));
    std::fs::remove_dir_all(&dir).ok();

    let model = dijiang_model::import::load::<B>(&path, &Default::default()).unwrap().model;
    let mut sampler = Sampler::new(Sampling::default());
    let (new, stats) = generate(&model, &ids, 12, &mut sampler, None, |_| {});
    assert_eq!(new, greedy[ids.len()..]);
    eprintln!(
        "smollm2-135m greedy: prefill {:.1} tok/s, decode {:.1} tok/s",
        stats.prefill_tokens_per_s(),
        stats.decode_tokens_per_s()
    );
}

#[test]
fn stories260k_tokenizer_and_greedy_generation_match_llama2c() {
    let (Some(bin), Some(text), Some(fixture)) = (
        shared("models/stories260K/stories260K.bin"),
        shared("corpora/tinystories-fragment.txt"),
        shared("fixtures/stories260k/expected.safetensors"),
    ) else {
        return;
    };
    let tokenizer = Tokenizer::for_model(&bin).unwrap();
    // The tokenizer file itself is accepted too, and is the same tokenizer.
    let direct = Tokenizer::for_model(&bin.with_file_name("tok512.bin")).unwrap();
    assert_eq!(direct.fingerprint(), tokenizer.fingerprint());
    let text: String = std::fs::read_to_string(text).unwrap().chars().take(1200).collect();
    let ids = tokenizer.encode(&text).unwrap();
    let (_, want) = SafetensorsFiles::open(&fixture).unwrap().read_ints("input_ids").unwrap();
    let want: Vec<u32> = want.iter().map(|&i| i as u32).collect();
    assert_eq!(ids[..256], want[..]);

    let model = dijiang_model::import::load::<B>(&bin, &Default::default()).unwrap().model;
    let mut sampler = Sampler::new(Sampling::default());
    let (new, _) = generate(&model, &[1], 40, &mut sampler, tokenizer.eos, |_| {});
    let story = tokenizer.decode(&[&[1], new.as_slice()].concat());
    eprintln!("stories260K greedy: {story}");
    assert!(story.starts_with("Once upon a time, there was a little girl named Lily."), "{story}");
}
