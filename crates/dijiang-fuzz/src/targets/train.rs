//! Training files: a checkpoint's `trainer.json` (read as resume does, `checkpoint::read`) and
//! experiment TOML with `key=value` overrides (`Experiment::load`, as `just train` does).

use std::path::Path;

use dijiang_train::{Experiment, checkpoint};

use super::{Errors, Target};
use crate::seeds;

fn trainer_state(dir: &Path, errors: &mut Errors) {
    // The other files of a checkpoint only need to exist for `read`.
    std::fs::create_dir_all(dir.join(checkpoint::MODEL)).expect("scratch directory");
    std::fs::write(dir.join(checkpoint::OPTIMIZER), b"").expect("scratch directory");
    errors.check(dir, checkpoint::read(dir));
}

fn experiment(dir: &Path, errors: &mut Errors) {
    let overrides = std::fs::read(dir.join("overrides.txt")).unwrap_or_default();
    let overrides: Vec<String> =
        String::from_utf8_lossy(&overrides).lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    let path = dir.join("experiment.toml");
    // A bad override is the command line's fault, not the file's: its error names the override.
    errors.check_naming(Experiment::load(&path, &overrides), &[&dir.display().to_string(), "override `"]);
}

pub const TRAINER_STATE: Target = Target {
    name: "trainer-state",
    about: "a checkpoint's trainer.json (step, cursor, the resolved experiment): checkpoint::read",
    run: trainer_state,
    seeds: seeds::train::trainer_state_seeds,
};

pub const EXPERIMENT: Target = Target {
    name: "experiment",
    about: "experiment TOML and key=value overrides: Experiment::load",
    run: experiment,
    seeds: seeds::train::experiment_seeds,
};
