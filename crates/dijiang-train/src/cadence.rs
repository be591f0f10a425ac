//! When a run evaluates, checkpoints and reports: every `eval.every` / `checkpoint.every` steps, at
//! the end of every stage (so that each stage's student is a result of its own), and a checkpoint
//! whenever the run is asked to stop.

use crate::experiment::Experiment;

/// What is due after a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    pub evaluate: bool,
    pub checkpoint: bool,
    /// A progress line in the log (when no progress bar is shown): about 50 per run, and the last.
    pub report: bool,
}

/// What is due after `step` steps (1-based: the number taken so far); `stopping` when the run stops
/// after this step.
pub fn due(experiment: &Experiment, step: usize, stopping: bool) -> Due {
    let every = |n: usize| n > 0 && step.is_multiple_of(n);
    let stage_end = experiment.ends_a_stage(step);
    let total = experiment.total_steps();
    Due {
        evaluate: every(experiment.eval.every) || stage_end,
        checkpoint: every(experiment.checkpoint.every) || stage_end || stopping,
        report: every((total / 50).max(1)) || step == total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_ends_and_stops_are_always_due() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments/default.toml"))
            .expect("the default experiment");
        let mut e: Experiment = toml::from_str(&text).expect("parses");
        e.stages[0].steps = 7;
        e.stages[1].steps = 5;
        e.eval.every = 4;
        e.checkpoint.every = 0;
        let evaluated: Vec<usize> = (1..=12).filter(|&s| due(&e, s, false).evaluate).collect();
        assert_eq!(evaluated, [4, 7, 8, 12]);
        let saved: Vec<usize> = (1..=12).filter(|&s| due(&e, s, false).checkpoint).collect();
        assert_eq!(saved, [7, 12]);
        assert!(due(&e, 3, true).checkpoint && !due(&e, 3, true).evaluate);
        assert!((1..=12).all(|s| due(&e, s, false).report), "short runs report every step");
    }
}
