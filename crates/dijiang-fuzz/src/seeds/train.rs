//! Training seeds: the repository's experiment files (with and without overrides) and the
//! `trainer.json` a checkpoint of each would hold.

use anyhow::Result;
use dijiang_data::dataset::Cursor;
use dijiang_train::Experiment;
use dijiang_train::checkpoint::{self, FileDigest, TrainerState};

use super::repo;
use crate::input::Input;

/// Overrides as `just train experiment=NAME key=value ...` passes them, one per line.
const OVERRIDES: [&str; 4] = [
    "",
    "stages.0.steps=5\ndata.batch_size=8",
    "student.feature_training=mlp\nseed=3\neval.every=0",
    "distributed.devices=[\"cpu\", \"cpu\"]\ndata.grad_accumulation=2",
];

/// `experiments/*.toml`, sorted.
fn experiment_files() -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("experiments"))?
        .map(|e| Ok(e?.path()))
        .filter(|p: &Result<std::path::PathBuf>| {
            p.as_ref().map_or(true, |p| p.extension().is_some_and(|e| e == "toml"))
        })
        .collect::<Result<_>>()?;
    files.sort();
    Ok(files)
}

pub fn experiment_seeds() -> Result<Vec<Input>> {
    experiment_files()?
        .iter()
        .enumerate()
        .map(|(i, file)| {
            Ok(Input::new(vec![
                ("experiment.toml".into(), std::fs::read(file)?),
                ("overrides.txt".into(), OVERRIDES[i % OVERRIDES.len()].into()),
            ]))
        })
        .collect()
}

/// SHA-256 of no bytes.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub fn trainer_state_seeds() -> Result<Vec<Input>> {
    experiment_files()?
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let state = TrainerState {
                step: 120 * i,
                tokens_seen: 123_456 * i as u64,
                cursor: Cursor { epoch: i as u64, position: 40 },
                skipped: i % 2,
                train_seconds: 12.5 * i as f64,
                experiment: Experiment::load(file, &[])?,
                teacher_loss: (i % 2 == 1).then_some(3.25),
                // The target writes an empty optimizer file: its digest matches, the model's
                // (a directory) does not, so both verification outcomes are reached.
                files: vec![
                    FileDigest { path: checkpoint::OPTIMIZER.into(), bytes: 0, sha256: EMPTY_SHA256.into() },
                    FileDigest {
                        path: format!("{}/weights.safetensors", checkpoint::MODEL),
                        bytes: 8,
                        sha256: EMPTY_SHA256.into(),
                    },
                ][..i % 3]
                    .to_vec(),
            };
            Ok(Input::single("trainer.json", serde_json::to_vec_pretty(&state)?))
        })
        .collect()
}
