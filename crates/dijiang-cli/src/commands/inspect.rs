//! `dijiang inspect <model>`: architecture, parameter counts (softmax teacher and DiJiang student),
//! storage and format, without building the model.

use std::path::Path;

use anyhow::{Context, Result};
use dijiang_model::config::AttentionKernelConfig;
use dijiang_model::import::Checkpoint;
use dijiang_model::{DiJiangConfig, ModelConfig};
use serde_json::json;

pub use dijiang_train::plan::group as thousands;

pub fn run(model: &str, as_json: bool) -> Result<()> {
    let (config, format, storage) = match ModelConfig::preset(model) {
        Some(config) => (config, "preset".to_string(), "none (no weights)".to_string()),
        None => {
            let checkpoint = Checkpoint::open(Path::new(model)).with_context(|| {
                format!("`{model}` is neither a model path nor a preset ({})", ModelConfig::PRESETS.join(", "))
            })?;
            (checkpoint.config.clone(), format!("{:?}", checkpoint.format), checkpoint.storage.clone())
        }
    };
    let teacher = config.clone().with_attention(AttentionKernelConfig::Softmax);
    let student = match &config.attention {
        AttentionKernelConfig::Dijiang(_) => config.clone(),
        AttentionKernelConfig::Softmax => {
            config.clone().with_attention(AttentionKernelConfig::Dijiang(DiJiangConfig::default()))
        }
    };
    let (teacher_params, student_params) = (teacher.num_params(), student.num_params());
    if as_json {
        let out = json!({
            "format": format,
            "storage": storage,
            "config": config,
            "params_softmax": teacher_params,
            "params_dijiang": student_params,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let kernel = match &config.attention {
        AttentionKernelConfig::Softmax => "softmax".to_string(),
        AttentionKernelConfig::Dijiang(dj) => {
            format!("dijiang ({:?} map, {:?} decay)", dj.feature_map, dj.decay)
        }
    };
    println!("model         {model}");
    println!("format        {format} ({storage}); computed in f32");
    println!(
        "architecture  {:?}: {} layers, hidden {}, {} heads ({} kv) of {}, mlp {}, vocab {}, rope theta {} on {} dims",
        config.arch,
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.intermediate_size,
        config.vocab_size,
        config.rope_theta,
        config.rotary_dims()
    );
    println!("attention     {kernel}");
    println!("parameters    softmax teacher {}", thousands(teacher_params));
    println!(
        "              DiJiang student {} (+{} new)",
        thousands(student_params),
        thousands(student_params - teacher_params)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(6_738_415_616), "6,738,415,616");
        assert_eq!(super::thousands(512), "512");
        assert_eq!(super::thousands(1000), "1,000");
    }
}
