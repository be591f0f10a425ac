//! LoRA adapters: added to a model they change nothing until they train (`B = 0`); a checkpoint of
//! an adapted model is rebuilt with its adapters; merging folds them into the weights (the same
//! function, no adapter parameters, no `lora` in the config). The teacher view of an adapted
//! student is its teacher. Tiny random LLaMA and GPT-NeoX models,
//! the adapters on every projection kind they have.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use dijiang_model::config::{Architecture, is_lora_param};
use dijiang_model::convert::convert;
use dijiang_model::cpu::Cpu;
use dijiang_model::import::load;
use dijiang_model::import::native::{Manifest, save};
use dijiang_model::layers::{GeluMlp, Mlp, Projection, SwiGlu};
use dijiang_model::{DiJiangConfig, LoraConfig, LoraTarget, ModelConfig, Transformer};

type B = Cpu;

fn logits(model: &Transformer<B>) -> Vec<f32> {
    let vocab = model.config().vocab_size;
    let ids: Vec<i64> = (0..32).map(|i| ((i * 37 + 3) % vocab) as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 16]), &Default::default());
    model.forward(tokens).into_data().to_vec::<f32>().unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn lora() -> LoraConfig {
    use LoraTarget::*;
    LoraConfig { rank: 3, alpha: 6.0, targets: vec![Q, K, V, O, Gate, Up, Down] }
}

/// Every adapter's `B` set to random values (as after training).
fn trained(model: Transformer<B>) -> Transformer<B> {
    let train = |p: Projection<B>| -> Projection<B> {
        let lora = p.lora.map(|mut l| {
            let b = l.b.val();
            l.b = Param::from_tensor(Tensor::random(b.dims(), Distribution::Normal(0.0, 0.05), &b.device()));
            l
        });
        Projection { lora, ..p }
    };
    let mut model = model;
    for layer in &mut model.layers {
        let attn = &mut layer.attn;
        attn.q = train(attn.q.clone());
        attn.k = train(attn.k.clone());
        attn.v = train(attn.v.clone());
        attn.o = train(attn.o.clone());
        layer.mlp = match layer.mlp.clone() {
            Mlp::SwiGlu(m) => Mlp::SwiGlu(SwiGlu { gate: train(m.gate), up: train(m.up), down: train(m.down) }),
            Mlp::Gelu(m) => Mlp::Gelu(GeluMlp { up: train(m.up), down: train(m.down) }),
        };
    }
    model
}

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("dijiang-lora-{tag}-{}", std::process::id()))
}

fn names(dir: &Path) -> Vec<String> {
    let files = dijiang_model::import::safetensors::SafetensorsFiles::open(&dir.join("model.safetensors")).unwrap();
    files.names().cloned().collect()
}

#[test]
fn adapters_start_as_identity_survive_a_checkpoint_and_merge_into_the_weights() {
    let device = Default::default();
    for arch in [Architecture::Llama, Architecture::GptNeox] {
        let config = ModelConfig::tiny(arch);
        let base = Transformer::<B>::init(&config, 11, &device).unwrap();
        let before = logits(&base);

        // Fresh adapters: B = 0, the same logits bit for bit.
        let adapted = base.with_lora(&lora(), 5);
        assert_eq!(adapted.config().lora.as_ref(), Some(&lora()));
        assert_eq!(logits(&adapted), before, "{arch:?}: fresh adapters change nothing");

        // Trained adapters change the function; a checkpoint of the adapted model holds them and
        // is rebuilt with them.
        let adapted = trained(adapted);
        let with_adapters = logits(&adapted);
        assert!(max_rel_diff(&with_adapters, &before) > 1e-3, "{arch:?}: trained adapters matter");
        let dir = scratch(&format!("{arch:?}-adapted"));
        save(&adapted, &Manifest::new(adapted.config().clone()), &dir).unwrap();
        let saved = names(&dir);
        let expected = if arch == Architecture::Llama { 7 } else { 6 } * config.num_layers * 2;
        assert_eq!(saved.iter().filter(|n| is_lora_param(n)).count(), expected, "{arch:?}: A and B of each");
        let reloaded = load::<B>(&dir, &device).unwrap().model;
        assert_eq!(logits(&reloaded), with_adapters, "{arch:?}: the checkpoint keeps the adapters");

        // Merged: the same function, plain weights, no adapter in the saved model or its config.
        let merged = adapted.merged();
        assert!(merged.config().lora.is_none());
        let diff = max_rel_diff(&logits(&merged), &with_adapters);
        assert!(diff < 1e-5, "{arch:?}: merged logits differ by {diff}");
        let plain = scratch(&format!("{arch:?}-merged"));
        save(&merged, &Manifest::new(merged.config().clone()), &plain).unwrap();
        assert!(names(&plain).iter().all(|n| !is_lora_param(n)), "{arch:?}: no adapter saved");
        assert_eq!(names(&plain).len(), saved.len() - expected);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&plain);
    }
}

/// A converted student with trained adapters, viewed as its teacher (softmax kernels, adapters
/// left out): the teacher's logits bit for bit.
#[test]
fn the_teacher_view_of_a_student_is_its_teacher() {
    let device = Default::default();
    for arch in [Architecture::Llama, Architecture::GptNeox] {
        let config = ModelConfig::tiny(arch);
        let teacher = Transformer::<B>::init(&config, 13, &device).unwrap();
        let dir = scratch(&format!("{arch:?}-view"));
        save(&teacher, &Manifest::new(config.clone()), &dir).unwrap();
        let student = convert::<B>(&dir, DiJiangConfig { chunk_len: 4, ..DiJiangConfig::default() }, &device).unwrap();
        let student = trained(student.model.with_lora(&lora(), 1));
        assert!(max_rel_diff(&logits(&student), &logits(&teacher)) > 1e-3, "{arch:?}: the student differs");
        let view = student.teacher_view();
        assert_eq!(view.config(), teacher.config());
        assert_eq!(logits(&view), logits(&teacher), "{arch:?}: the view is the teacher");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_lora_configs_are_refused_naming_the_fields() {
    let config = ModelConfig { lora: Some(LoraConfig { rank: 0, ..lora() }), ..ModelConfig::tiny(Architecture::Llama) };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("rank >= 1") && err.contains("got rank 0"), "{err}");
    let targets: Result<LoraConfig, _> = serde_json::from_str(r#"{"rank": 4, "alpha": 8, "targets": ["q", "qq"]}"#);
    assert!(targets.unwrap_err().to_string().contains("qq"));
}
