//! Conversion (softmax teacher -> DiJiang student), the native checkpoint format's round trip, and
//! parameter counting.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::fixture;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use dijiang_model::config::{Architecture, FeatureMapKind};
use dijiang_model::convert::{convert, is_kernel_param};
use dijiang_model::cpu::Cpu;
use dijiang_model::import::native::{Manifest, save};
use dijiang_model::import::safetensors::SafetensorsFiles;
use dijiang_model::import::{Format, load};
use dijiang_model::{AttentionKernelConfig, DiJiangConfig, ModelConfig, Transformer};

type B = Cpu;

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dijiang-convert-{tag}-{}", std::process::id()))
}

fn logits(model: &Transformer<B>) -> Vec<f32> {
    let ids: Vec<i64> = (0..40).map(|i| (i * 37 % 300) as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 20]), &Default::default());
    model.forward(tokens).into_data().to_vec::<f32>().unwrap()
}

/// Every tensor of a saved model, by name.
fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let files = SafetensorsFiles::open(&dir.join("model.safetensors")).unwrap();
    files.names().map(|n| (n.clone(), files.read(n).unwrap().data)).collect()
}

#[test]
fn student_copies_every_teacher_weight_and_adds_only_kernel_parameters() {
    let device = Default::default();
    for teacher in ["gpt-neox-tiny", "llama-gqa-tiny"] {
        let student = convert::<B>(&fixture(teacher), DiJiangConfig::default(), &device).expect("convert");
        let layers = student.model.config().num_layers;
        let mut want: Vec<String> = (0..layers)
            .flat_map(|i| {
                ["proj", "log_decay", "gate", "group_norm.gamma", "group_norm.beta"]
                    .map(|p| format!("layers.{i}.attn.kernel.{p}"))
            })
            .collect();
        let mut got = student.initialised.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{teacher}: new parameters");

        // Teacher weights are copied: saved side by side, every non-kernel tensor is identical.
        let (t_dir, s_dir) = (scratch(&format!("{teacher}-t")), scratch(&format!("{teacher}-s")));
        let original = load::<B>(&fixture(teacher), &device).unwrap();
        save(&original.model, &Manifest::new(original.model.config().clone()), &t_dir).unwrap();
        save(&student.model, &Manifest::new(student.model.config().clone()), &s_dir).unwrap();
        let (t, s) = (tensors(&t_dir), tensors(&s_dir));
        let copied: Vec<_> = s.iter().filter(|(n, _)| !is_kernel_param(n)).cloned().collect();
        assert_eq!(copied, t, "{teacher}: copied weights");
        std::fs::remove_dir_all(&t_dir).ok();
        std::fs::remove_dir_all(&s_dir).ok();
        assert!(logits(&student.model).iter().all(|x| x.is_finite()));
    }
}

#[test]
fn conversion_is_seeded() {
    let device = Default::default();
    let make = |seed| {
        let config = DiJiangConfig { seed, ..Default::default() };
        logits(&convert::<B>(&fixture("gpt-neox-tiny"), config, &device).unwrap().model)
    };
    assert_eq!(make(1), make(1));
    assert_ne!(make(1), make(2));
}

#[test]
fn saved_models_load_back_bit_identically() {
    let device = Default::default();
    let config = DiJiangConfig { feature_map: FeatureMapKind::WeightedExp, ..Default::default() };
    let student = convert::<B>(&fixture("llama-gqa-tiny"), config, &device).unwrap();
    let dir = scratch("roundtrip");
    let mut manifest = Manifest::new(student.model.config().clone());
    manifest.new_parameters = student.initialised.clone();
    save(&student.model, &manifest, &dir).unwrap();
    // Saving again over it is atomic and leaves one complete model.
    save(&student.model, &manifest, &dir).unwrap();
    let back = load::<B>(&dir, &device).expect("load native");
    assert_eq!(back.format, Format::Native);
    assert_eq!(back.model.config(), student.model.config());
    let (a, b) = (logits(&student.model), logits(&back.model));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "logits differ after the round trip");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn parameter_count_matches_the_built_model() {
    let device = Default::default();
    let tiny_neox = ModelConfig::tiny(Architecture::GptNeox);
    let tiny_llama =
        ModelConfig { num_kv_heads: 2, tie_embeddings: false, arch: Architecture::Llama, ..ModelConfig::stories260k() };
    let performer = DiJiangConfig {
        feature_map: FeatureMapKind::Performer,
        performer_features: Some(24),
        feature_weights: true,
        ..Default::default()
    };
    for base in [tiny_neox, tiny_llama, ModelConfig::stories260k()] {
        for attention in [
            AttentionKernelConfig::Softmax,
            AttentionKernelConfig::Dijiang(DiJiangConfig::default()),
            AttentionKernelConfig::Dijiang(performer.clone()),
        ] {
            let config = base.clone().with_attention(attention);
            let model = Transformer::<B>::init(&config, 0, &device).unwrap();
            assert_eq!(model.num_params(), config.num_params(), "{config:?}");
        }
    }
}

#[test]
fn fidelity_distances_are_sane() {
    use dijiang_model::fidelity::measure;
    let device = Default::default();
    let teacher = load::<B>(&fixture("llama-gqa-tiny"), &device).unwrap().model;
    let student = convert::<B>(&fixture("llama-gqa-tiny"), DiJiangConfig::default(), &device).unwrap().model;
    let tokens = |t: usize| {
        let ids: Vec<i64> = (0..t as i64).map(|i| (i * 7) % 300).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device)
    };
    // One token: every attention row is [1], so the distances are exactly 0.
    for r in measure(&teacher, &student, tokens(1), &[0, 2]) {
        assert!(r.tv_mean.abs() < 1e-6 && r.tv_uniform.abs() < 1e-6, "{r:?}");
    }
    let results = measure(&teacher, &student, tokens(40), &[0, 1, 2]);
    assert_eq!(results.len(), 3);
    for r in results {
        assert_eq!(r.tv_per_head.len(), 6);
        assert!(r.tv_per_head.iter().all(|tv| *tv > 0.0 && *tv < 1.0), "{r:?}");
        assert!(r.tv_uniform > 0.0 && r.tv_uniform < 1.0 && r.output_relative_error > 0.0, "{r:?}");
    }
}

#[test]
fn feature_map_variants_start_as_the_frozen_map_and_decode_like_the_full_pass() {
    use dijiang_model::{DecodeState, FeatureTraining};
    let device = Default::default();
    let student = |training| {
        let config = DiJiangConfig { feature_training: training, chunk_len: 8, ..Default::default() };
        convert::<B>(&fixture("llama-gqa-tiny"), config, &device).unwrap()
    };
    let frozen = logits(&student(FeatureTraining::Frozen).model);
    for (training, extra) in [
        (FeatureTraining::Scales, vec!["scale", "feature_weights"]),
        (FeatureTraining::Projection, vec![]),
        (FeatureTraining::Mlp, vec!["mlp_in", "mlp_out"]),
    ] {
        let converted = student(training);
        for name in extra {
            assert!(
                converted.initialised.iter().any(|n| n.ends_with(&format!("kernel.{name}"))),
                "{training:?}: has {name}"
            );
        }
        let model = &converted.model;
        assert_eq!(model.num_params(), model.config().num_params(), "{training:?}: parameter count");
        // At initialisation every variant is the frozen map.
        let got = logits(model);
        let err = got.iter().zip(&frozen).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-5, "{training:?}: differs from the frozen map at init by {err}");
        // Chunked full pass (20 tokens > chunk 8) == token-by-token recurrent decoding.
        let ids: Vec<i64> = (0..20).map(|i| (i * 37 % 300) as i64).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, 20]), &device);
        let full = model.forward(tokens).into_data().to_vec::<f32>().unwrap();
        let mut state = DecodeState::new(model.layers.len());
        let mut steps = Vec::new();
        for id in ids {
            let token = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![id], [1, 1]), &device);
            steps.extend(model.forward_cached(token, &mut state).into_data().to_vec::<f32>().unwrap());
        }
        let err = full.iter().zip(&steps).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{training:?}: decoding differs by {err}");
    }
}

/// The options beside the reference that change which parameters exist.
fn option_configs() -> Vec<DiJiangConfig> {
    use dijiang_model::{GateKind, OutputNorm};
    let normalized = DiJiangConfig { normalize: true, ..Default::default() };
    vec![
        DiJiangConfig { gate: GateKind::None, output_norm: OutputNorm::None, ..normalized.clone() },
        DiJiangConfig { gate: GateKind::Identity, ..normalized.clone() },
        DiJiangConfig { window: 8, gate: GateKind::None, ..normalized.clone() },
        DiJiangConfig { window: 3, gate: GateKind::Identity, output_norm: OutputNorm::None, ..normalized },
    ]
}

#[test]
fn options_add_exactly_their_parameters_and_count_them() {
    use dijiang_model::{GateKind, OutputNorm};
    let device = Default::default();
    for dijiang in option_configs() {
        let student = convert::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &device).unwrap();
        let mut want = vec!["proj", "log_decay"];
        if dijiang.gate != GateKind::None {
            want.push("gate");
        }
        if dijiang.output_norm == OutputNorm::GroupNorm {
            want.extend(["group_norm.gamma", "group_norm.beta"]);
        }
        if dijiang.window > 0 {
            want.push("log_linear_weight");
        }
        let mut want: Vec<String> =
            (0..3).flat_map(|i| want.iter().map(move |p| format!("layers.{i}.attn.kernel.{p}"))).collect();
        let mut got = student.initialised.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{dijiang:?}");
        let model = &student.model;
        assert_eq!(model.num_params(), model.config().num_params(), "{dijiang:?}: parameter count");
    }
}

#[test]
fn the_identity_gate_is_exactly_no_gate_at_conversion() {
    use dijiang_model::GateKind;
    let device = Default::default();
    let make = |gate| {
        let dijiang = DiJiangConfig { normalize: true, window: 4, gate, ..Default::default() };
        logits(&convert::<B>(&fixture("llama-gqa-tiny"), dijiang, &device).unwrap().model)
    };
    let (identity, none, reference) = (make(GateKind::Identity), make(GateKind::None), make(GateKind::Reference));
    assert!(identity.iter().zip(&none).all(|(a, b)| a.to_bits() == b.to_bits()), "2 sigmoid(0) is not exactly 1");
    assert_ne!(identity, reference);
}

#[test]
fn a_window_covering_the_sequence_without_gate_or_norm_is_the_teacher() {
    // Every key inside the window: exact softmax attention, and no gate or GroupNorm after it, so
    // the student's logits are the teacher's (for sequences up to the window).
    use dijiang_model::{GateKind, OutputNorm};
    let device = Default::default();
    for teacher in ["llama-gqa-tiny", "gpt-neox-tiny"] {
        let dijiang = DiJiangConfig {
            normalize: true,
            window: 20,
            gate: GateKind::None,
            output_norm: OutputNorm::None,
            chunk_len: 8,
            ..Default::default()
        };
        let student = convert::<B>(&fixture(teacher), dijiang, &device).unwrap().model;
        let original = load::<B>(&fixture(teacher), &device).unwrap().model;
        let (s, t) = (logits(&student), logits(&original));
        let err = s.iter().zip(&t).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{teacher}: hybrid with W >= t differs from the teacher by {err}");
    }
}

#[test]
fn options_and_calibrated_decays_survive_the_saved_format() {
    use dijiang_model::config::DecayKind;
    use dijiang_model::convert::convert_calibrated;
    let device = Default::default();
    let ids: Vec<u32> = (0..40).map(|i| (i * 29 + 1) % 300).collect();
    let mut configs = option_configs();
    let calibrated = dijiang_model::LinearWeight::Calibrated;
    configs.push(DiJiangConfig {
        decay: DecayKind::Calibrated,
        window: 4,
        linear_weight: calibrated,
        ..configs[0].clone()
    });
    configs.push(DiJiangConfig { feature_input: dijiang_model::FeatureInput::Unrotated, ..Default::default() });
    configs.push(DiJiangConfig { token_shift: true, normalize: true, ..Default::default() });
    for (i, dijiang) in configs.into_iter().enumerate() {
        let student = if dijiang_model::convert::is_calibrated(&dijiang) {
            convert_calibrated::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &ids, &device).unwrap()
        } else {
            convert::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &device).unwrap()
        };
        let dir = scratch(&format!("options-{i}"));
        save(&student.model, &Manifest::new(student.model.config().clone()), &dir).unwrap();
        let manifest = std::fs::read_to_string(dir.join("dijiang.json")).unwrap();
        let back = load::<B>(&dir, &device).expect("load native");
        assert_eq!(back.model.config(), student.model.config(), "{manifest}");
        assert_eq!(back.model.config().attention, AttentionKernelConfig::Dijiang(dijiang.clone()));
        let (a, b) = (logits(&student.model), logits(&back.model));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{dijiang:?}: logits differ");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn calibrated_decays_are_deterministic_in_range_and_need_tokens() {
    use dijiang_model::attention::{AttentionKernel, reference_log_decay};
    use dijiang_model::calibrate::GAMMA_RANGE;
    use dijiang_model::config::DecayKind;
    use dijiang_model::convert::convert_calibrated;
    let device = Default::default();
    let dijiang = DiJiangConfig { decay: DecayKind::Calibrated, ..Default::default() };
    let err = convert::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &device).unwrap_err();
    assert!(err.to_string().contains("calibrat"), "{err}");
    let ids: Vec<u32> = (0..64).map(|i| (i * 37 + 5) % 300).collect();
    let decays = |ids: &[u32]| -> Vec<Vec<f64>> {
        let model = convert_calibrated::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), ids, &device).unwrap().model;
        model
            .layers
            .iter()
            .map(|l| match &l.attn.kernel {
                AttentionKernel::DiJiang(k) => k.log_decay().into_data().convert::<f64>().to_vec::<f64>().unwrap(),
                AttentionKernel::Softmax(_) => panic!("not converted"),
            })
            .collect()
    };
    let first = decays(&ids);
    assert_eq!(first, decays(&ids), "calibration is not deterministic");
    let reference = reference_log_decay(6);
    for layer in &first {
        for &ln_gamma in layer {
            let gamma = ln_gamma.exp();
            assert!(gamma >= GAMMA_RANGE.0 - 1e-6 && gamma <= GAMMA_RANGE.1 + 1e-6, "{gamma}");
        }
        assert!(layer.iter().zip(&reference).any(|(a, b)| (a - b).abs() > 1e-3), "{layer:?} is the reference's");
    }
    assert!(convert_calibrated::<B>(&fixture("llama-gqa-tiny"), dijiang, &ids[..1], &device).is_err());
}

#[test]
fn unrotated_features_make_the_linear_part_position_free() {
    use dijiang_model::FeatureInput::{Rotated, Unrotated};
    use dijiang_model::rope::Rope;
    let device = Default::default();
    let normalized = DiJiangConfig { normalize: true, chunk_len: 4, ..Default::default() };
    let hybrid = DiJiangConfig { window: 3, ..normalized.clone() };
    // One block's attention (output and rows) on the same input at positions 0..12 and
    // 1000..1012. RoPE's scores depend on relative positions only, so the hybrid's window is
    // shift-invariant up to rounding; a feature map of rotated vectors is not.
    for (dijiang, free) in [
        (DiJiangConfig { feature_input: Rotated, chunk_len: 4, ..Default::default() }, false),
        (DiJiangConfig { feature_input: Unrotated, chunk_len: 4, ..Default::default() }, true),
        (DiJiangConfig { feature_input: Unrotated, ..normalized }, true),
        (DiJiangConfig { feature_input: Rotated, ..hybrid.clone() }, false),
        (DiJiangConfig { feature_input: Unrotated, ..hybrid }, true),
    ] {
        let model = convert::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &device).unwrap().model;
        let hidden = model.config().hidden_size;
        let values: Vec<f32> = (0..12 * hidden).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::<B, 3>::from_data(TensorData::new(values, [1, 12, hidden]), &device);
        let attn = &model.layers[0].attn;
        let at = |start: usize| {
            let rope = Rope::new(model.config(), start, 12, &device);
            let out = attn.forward(x.clone(), &rope).into_data().to_vec::<f32>().unwrap();
            (out, attn.rows(x.clone(), &rope).into_data().to_vec::<f32>().unwrap())
        };
        let ((o0, r0), (o1, r1)) = (at(0), at(1000));
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let (d_out, d_rows) = (max_diff(&o0, &o1), max_diff(&r0, &r1));
        if free {
            assert!(d_out < 1e-4 && d_rows < 1e-4, "{dijiang:?}: moved by {d_out:e} / {d_rows:e}");
        } else {
            assert!(d_out > 1e-3 && d_rows > 1e-4, "{dijiang:?}: moved by only {d_out:e} / {d_rows:e}");
        }
    }
}

#[test]
fn a_window_needs_the_normaliser() {
    let config = ModelConfig::stories260k()
        .with_attention(AttentionKernelConfig::Dijiang(DiJiangConfig { window: 4, ..Default::default() }));
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("normalize"), "{err}");
}

#[test]
fn the_calibrated_linear_weight_brings_each_heads_output_closer_to_the_teachers() {
    use dijiang_model::attention::AttentionKernel;
    use dijiang_model::calibrate::{WindowParts, output_errors, rows_and_values, teacher_attention};
    use dijiang_model::convert::convert_calibrated;
    use dijiang_model::{GateKind, LinearWeight, OutputNorm};
    let device = Default::default();
    let window = 6;
    let dijiang = DiJiangConfig {
        normalize: true,
        window,
        gate: GateKind::None,
        output_norm: OutputNorm::None,
        ..Default::default()
    };
    let ids: Vec<u32> = (0..48).map(|i| (i * 41 + 2) % 300).collect();
    let at_one = convert::<B>(&fixture("llama-gqa-tiny"), dijiang.clone(), &device).unwrap().model;
    let calibrated = DiJiangConfig { linear_weight: LinearWeight::Calibrated, ..dijiang };
    let student = convert_calibrated::<B>(&fixture("llama-gqa-tiny"), calibrated, &ids, &device).unwrap().model;
    let teacher = load::<B>(&fixture("llama-gqa-tiny"), &device).unwrap().model;
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, 48]), &device);
    let attention = teacher_attention(&teacher, tokens, window).unwrap();
    let (mut before, mut after) = (0.0, 0.0);
    for (layer, (x, target)) in attention.layer_inputs.iter().zip(&attention.outputs).enumerate() {
        let (rows, v) = rows_and_values(&at_one, &at_one.layers[layer], x.clone());
        let parts = WindowParts::new(rows, v, window);
        let AttentionKernel::DiJiang(kernel) = &student.layers[layer].attn.kernel else { panic!("converted") };
        let chosen = kernel.log_linear_weight.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
        for (head, &w) in chosen.iter().enumerate() {
            let error = |w: f64| output_errors(&parts, target.clone(), w)[head];
            let best = error(w as f64);
            for other in [0.0, -3.0, -1.0, 1.0] {
                assert!(best <= error(other) + 1e-9, "layer {layer} head {head}: {w} is not better than {other}");
            }
            before += error(0.0);
            after += best;
        }
    }
    assert!(after < before, "calibration changed nothing: {after} vs {before}");
}
