//! `dijiang checkpoint verify RUN_DIR`: checks every checkpoint of a run against the sizes and
//! SHA-256 digests recorded in its `trainer.json`, without training; says which one a resume would
//! start from.

use std::path::PathBuf;

use anyhow::{Result, bail};
use dijiang_train::checkpoint::verify_run;

#[derive(clap::Subcommand)]
pub enum What {
    /// Verify every checkpoint of a run directory (`runs/NAME`).
    Verify {
        /// The run directory.
        run: PathBuf,
    },
}

pub fn run(what: What) -> Result<()> {
    let What::Verify { run } = what;
    let checked = verify_run(&run);
    if checked.is_empty() {
        bail!("{}: no checkpoints (expected {}/checkpoints/step-N/)", run.display(), run.display());
    }
    let mut resume_from = None;
    let mut damaged = 0;
    for (dir, result) in &checked {
        match result {
            Ok(state) => {
                println!("ok       {} (step {})", dir.display(), state.step);
                resume_from = resume_from.or(Some(dir));
            }
            Err(e) => {
                println!("damaged  {}: {e}", dir.display());
                damaged += 1;
            }
        }
    }
    match resume_from {
        Some(dir) => println!("resume   from {}", dir.display()),
        None => println!("resume   impossible: no intact checkpoint"),
    }
    if damaged > 0 {
        bail!("{damaged} of {} checkpoints are damaged", checked.len());
    }
    Ok(())
}
