//! Corrupt or mismatched checkpoints give errors that name the file and the tensor.

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::{fixture, shared, smollm2_gguf};

use std::path::{Path, PathBuf};

use dijiang_model::cpu::Cpu;
use dijiang_model::import::load;

type B = Cpu;

/// A scratch copy of a fixture directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(name: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dijiang-import-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn load_error(path: &Path) -> String {
    match load::<B>(path, &Default::default()) {
        Ok(_) => panic!("{} loaded, but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "error `{err}` does not mention `{part}`");
    }
}

#[test]
fn truncated_safetensors() {
    let dir = Scratch::copy_of("gpt-neox-tiny", "truncated");
    let file = dir.0.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    assert_mentions(&load_error(&dir.0), &["model.safetensors", "truncated"]);
}

#[test]
fn wrong_header() {
    let dir = Scratch::copy_of("gpt-neox-tiny", "header");
    let file = dir.0.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8] = b'#'; // the JSON header no longer starts with '{'
    std::fs::write(&file, &bytes).unwrap();
    assert_mentions(&load_error(&dir.0), &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn shape_mismatch_names_the_tensor() {
    // A config that disagrees with the weights: the intermediate size.
    let dir = Scratch::copy_of("gpt-neox-tiny", "shape");
    let config = dir.0.join("config.json");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("\"intermediate_size\": 256", "\"intermediate_size\": 128");
    std::fs::write(&config, text).unwrap();
    assert_mentions(&load_error(&dir.0), &["model.safetensors", "mlp.dense_h_to_4h.weight", "[256, 64]"]);
}

#[test]
fn missing_shard() {
    let dir = Scratch::copy_of("llama-gqa-tiny", "shard");
    std::fs::remove_file(dir.0.join("model-00002-of-00002.safetensors")).unwrap();
    assert_mentions(&load_error(&dir.0), &["model-00002-of-00002.safetensors", "missing"]);
}

#[test]
fn missing_and_unknown_tensors_are_listed() {
    // Fewer layers in the config than in the file: tensors of layer 1 are unknown.
    let dir = Scratch::copy_of("gpt-neox-tiny", "unknown");
    let config = dir.0.join("config.json");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    std::fs::write(&config, text).unwrap();
    assert_mentions(&load_error(&dir.0), &["not used by the model", "gpt_neox.layers.1."]);
    // More layers than the file has: layer 2's tensors are missing.
    let text =
        std::fs::read_to_string(&config).unwrap().replace("\"num_hidden_layers\": 1", "\"num_hidden_layers\": 3");
    std::fs::write(&config, text).unwrap();
    assert_mentions(&load_error(&dir.0), &["missing", "gpt_neox.layers.2.input_layernorm.weight"]);
}

#[test]
fn truncated_llama2c_checkpoint() {
    let Some(bin) = shared("models/stories260K/stories260K.bin") else { return };
    let dir = std::env::temp_dir().join(format!("dijiang-import-l2c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stories.bin");
    let bytes = std::fs::read(bin).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&file);
    std::fs::remove_dir_all(&dir).ok();
    assert_mentions(&err, &["stories.bin", "truncated"]);
}

#[test]
fn truncated_gguf() {
    let Some(gguf) = smollm2_gguf() else { return };
    let dir = std::env::temp_dir().join(format!("dijiang-import-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    // Cut inside the tensor data, then inside the metadata.
    for (cut, expect) in [(bytes.len() - 1000, "past the end of the file"), (2000, "unexpected end of file")] {
        let file = dir.join("model.gguf");
        std::fs::write(&file, &bytes[..cut]).unwrap();
        assert_mentions(&load_error(&file), &["model.gguf", "GGUF", expect, "truncated"]);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The fuzz regression of issue 21: 566 bytes whose header claims 11,993,093 layers. It used to be
/// laid out tensor by tensor (a minute, 9 GB); it must fail at once, naming the field.
#[test]
fn llama2c_header_claiming_millions_of_layers_fails_at_once() {
    let file = support::repo().join("tests/fuzz-regressions/llama2c/header-claims-12-million-layers/model.bin");
    let start = std::time::Instant::now();
    let err = load_error(&file);
    assert!(start.elapsed().as_secs_f64() < 1.0, "took {:?}", start.elapsed());
    assert_mentions(&err, &["model.bin", "`n_layers` = 11993093", "566 bytes"]);
}

#[test]
fn a_config_larger_than_its_weights_is_refused_before_allocating() {
    // A vocabulary of 2^40 in config.json: building would allocate a 2^46-byte embedding first.
    let dir = Scratch::copy_of("gpt-neox-tiny", "huge-vocab");
    let config = dir.0.join("config.json");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("\"vocab_size\": 512", "\"vocab_size\": 1099511627776");
    std::fs::write(&config, text).unwrap();
    assert_mentions(
        &load_error(&dir.0),
        &["model.safetensors", "does not match the weights", "vocabulary 1099511627776"],
    );
}
