//! The prepared GPU check's steps (`dijiang bench recipes`, `bench/gpu-check.sh`) on a small
//! preset: every stage of both 7B experiments runs real trainer steps on Flex and, with the
//! `wgpu-tests` feature, on wgpu (software Vulkan in CI), so the code path the GPU machine runs is
//! exercised here; half-precision storage gives the f32 logits.

#[path = "../../../tests/support/mod.rs"]
mod support;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use dijiang_model::ModelConfig;
use dijiang_train::Experiment;
use dijiang_train::recipes::{as_checked, check_stages, half_storage_logits_error};

fn check<B: AutodiffBackend>(device: &B::Device) {
    let teacher = ModelConfig::preset("stories260k").unwrap();
    for name in ["dijiang-7b", "dijiang-7b-reference"] {
        let path = support::repo().join(format!("experiments/{name}.toml"));
        let e = Experiment::load(&path, &["data.block_size=64".into()]).unwrap();
        let e = as_checked::<B>(&e, device);
        let stages = check_stages::<B>(&e, &teacher, 2, device).unwrap();
        assert_eq!(stages.len(), e.stages.len(), "{name}");
        for s in &stages {
            println!(
                "{name} {} ({}): {:.0} tokens/s, losses {:?}, {}",
                s.stage, s.mode, s.tokens_per_s, s.losses, s.estimate
            );
            assert!(s.losses.iter().all(|l| l.is_finite()) && s.tokens_per_s > 0.0, "{name} {}: {s:?}", s.stage);
        }
    }
    let error = half_storage_logits_error::<B>(&teacher, device).unwrap();
    println!("half-precision storage, logits against f32: {error:?}");
    assert!(error.is_none_or(|e| e == 0.0), "f16 storage changed the logits by {error:?}");
}

#[test]
fn both_7b_recipes_step_on_a_small_preset_on_the_cpu() {
    type B = Autodiff<dijiang_model::cpu::Cpu>;
    check::<B>(&Default::default());
    // Flex has f16: the check compared the logits.
    assert_eq!(
        half_storage_logits_error::<B>(&ModelConfig::preset("stories260k").unwrap(), &Default::default()).unwrap(),
        Some(0.0)
    );
}

#[cfg(feature = "wgpu-tests")]
#[test]
fn both_7b_recipes_step_on_a_small_preset_on_wgpu() {
    type B = Autodiff<burn::backend::Wgpu>;
    check::<B>(&Default::default());
}
