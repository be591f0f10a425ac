//! ZeRO-1 (`distributed.optimizer = "sharded"`): each worker owns a share of the parameters a stage
//! trains and keeps AdamW's moments for those only. After the gradients are averaged (as in a
//! replicated run), a worker updates the parameters it owns; then every updated parameter goes
//! from its owner to all workers (a sum of the owner's values with the others' zeros, which is
//! exact: `x + 0 = x`). The arithmetic of each parameter's update is the replicated run's,
//! executed once by its owner, so a sharded run trains as the replicated one does; only the
//! moments' memory is divided by the number of workers.
//!
//! Ownership is decided by name from the stage's trainable parameters (the same list on every
//! worker), so it needs no exchange, and checkpoints keep the whole state by name: a run resumes at
//! any worker count, sharded or not.

use std::collections::BTreeMap;

use dijiang_model::ModelConfig;
use dijiang_model::transformer::parameter_shapes;
use serde::{Deserialize, Serialize};

use crate::experiment::Experiment;
use crate::trainable::trains;

/// How the optimizer's state is laid out over the workers of a data-parallel run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerLayout {
    /// Every worker keeps all moments and updates every parameter.
    #[default]
    Replicated,
    /// ZeRO-1: every worker keeps the moments of the parameters it owns.
    Sharded,
}

/// Which worker owns which trained parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    /// Each trained parameter's owner and number of values.
    owner: BTreeMap<String, (usize, usize)>,
    /// Values owned by each worker.
    loads: Vec<usize>,
}

impl Shards {
    /// Owners for `params` (name, number of values) over `world` workers: in the given order, each
    /// parameter goes to the worker with the fewest values so far (the lowest rank on ties), so
    /// every worker owns at most its even share plus one parameter.
    pub fn new<'a>(world: usize, params: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut loads = vec![0; world.max(1)];
        let mut owner = BTreeMap::new();
        for (name, n) in params {
            let (rank, _) = loads.iter().enumerate().min_by_key(|&(rank, load)| (*load, rank)).expect("a worker");
            loads[rank] += n;
            owner.insert(name.to_string(), (rank, n));
        }
        Self { owner, loads }
    }

    /// The shards of the parameters stage `stage` of `experiment` trains, over its workers (the
    /// names and shapes from the student's configuration, in its parameter order).
    pub fn of_stage(experiment: &Experiment, student: &ModelConfig, stage: usize) -> Self {
        let trainable = experiment.stages[stage].trainable;
        let shapes = parameter_shapes(student);
        let trained = shapes
            .iter()
            .filter(|(name, _)| trains(trainable, &experiment.student, name))
            .map(|(name, shape)| (name.as_str(), shape.iter().product()));
        Self::new(experiment.distributed.world(), trained)
    }

    /// The worker that owns `name` (`None`: not trained in this stage).
    pub fn owner(&self, name: &str) -> Option<usize> {
        self.owner.get(name).map(|&(rank, _)| rank)
    }

    /// Whether worker `rank` updates the parameter `name`: its owner does, and every worker
    /// updates a parameter the stage does not list (none should have a gradient; if one had, the
    /// replicated update keeps the workers equal).
    pub fn updates(&self, rank: usize, name: &str) -> bool {
        self.owner(name).is_none_or(|owner| owner == rank)
    }

    /// The trained parameters with their owners and numbers of values, by name (the order every
    /// worker exchanges them in).
    pub fn params(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.owner.iter().map(|(name, &(rank, n))| (name.as_str(), rank, n))
    }

    /// The most values any worker owns.
    pub fn largest_share(&self) -> usize {
        self.loads.iter().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_balance_the_values_and_every_parameter_has_one() {
        let params = [("a", 100), ("b", 60), ("c", 50), ("d", 10), ("e", 1)];
        let shards = Shards::new(2, params);
        let owners: Vec<usize> = params.iter().map(|(n, _)| shards.owner(n).unwrap()).collect();
        assert_eq!(owners, [0, 1, 1, 0, 0]);
        assert_eq!(shards.largest_share(), 111);
        assert_eq!(shards.owner("z"), None);
        // One worker owns everything; more workers than parameters leave some with nothing.
        assert_eq!(Shards::new(1, params).largest_share(), 221);
        let many = Shards::new(8, params);
        assert_eq!(many.largest_share(), 100);
        let names: Vec<&str> = many.params().map(|(name, _, _)| name).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert!(shards.updates(1, "b") && !shards.updates(0, "b") && shards.updates(0, "not trained"));
    }
}
