//! On-policy distillation: the student writes the end of each block itself before the step, so
//! the distillation's KL is also taken on text the student produced (GKD, arXiv 2306.13649;
//! MiniLLM, arXiv 2306.08543). Distillation on data prefixes alone never shows the student its
//! own mistakes; a greedy loop is one of them (docs/conversion-start.md, the pure student's loops).
//!
//! A stage with `on_policy = { tokens = G, temperature = T }` keeps each block's first
//! `block - G` tokens and replaces the last `G` inputs by the student's continuation of them
//! (with `after = P`, the `G` inputs after the first `P`, the rest of the block the data's),
//! sampled at temperature `T` (0: greedy) from a generator seeded by the run's seed, the step and
//! the block's place, so a resumed run writes the same tokens. With `every = k` it does so on
//! every k-th step of the stage only (GKD's fraction of on-policy data, at a k-th of the price:
//! the continuation is decoded token by token). The teacher then reads the same
//! block, and the KL compares the two at every position. The written positions' targets are
//! [`IGNORED`]: an `lm` term counts only the data's positions (on the written ones it would teach
//! the student its own samples).

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use dijiang_data::dataset::LmBatch;
use dijiang_model::Transformer;
use dijiang_model::generate::{Sampler, Sampling, generate};
use serde::{Deserialize, Serialize};

use crate::experiment::Stage;
use crate::losses::IGNORED;

/// A stage's on-policy setting (`on_policy = { tokens = 128, temperature = 1.0 }`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnPolicy {
    /// How many of each block's last inputs the student writes.
    pub tokens: usize,
    /// Its sampling temperature (0: greedy; GKD samples at 1).
    #[serde(default = "one")]
    pub temperature: f64,
    /// The stage's steps `0, k, 2k, ...` are rolled out, the others train on the data (1: all).
    #[serde(default = "every_step")]
    pub every: usize,
    /// How many of the data's tokens the student continues (none: `block - tokens`, so it
    /// writes the block's end). Greedy text is judged after short prompts, where a long block's
    /// end never is; the block's data after the written span still trains the long context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<usize>,
}

fn one() -> f64 {
    1.0
}

fn every_step() -> usize {
    1
}

impl OnPolicy {
    /// Constraints serde cannot express, against the data's block length.
    pub fn validate(&self, block_size: usize) -> Result<(), String> {
        if self.tokens == 0 || self.tokens >= block_size {
            return Err(format!(
                "on_policy.tokens ({}) must be in 1..{block_size} (the stage's shortest block): the student continues the \
                 block's first block_size - tokens tokens",
                self.tokens
            ));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("on_policy.temperature ({}) must be finite and >= 0 (0: greedy)", self.temperature));
        }
        if self.every == 0 {
            return Err("on_policy.every must be >= 1 (1: every step of the stage)".into());
        }
        if let Some(after) = self.after
            && (after == 0 || after + self.tokens > block_size)
        {
            return Err(format!(
                "on_policy.after ({after}) must be in 1..={} (the stage's shortest block, {block_size}, less the {} \
                 written tokens): the student continues the block's first `after` tokens",
                block_size.saturating_sub(self.tokens),
                self.tokens
            ));
        }
        Ok(())
    }

    /// The written span of a `block`-token row.
    fn span(&self, block: usize) -> std::ops::Range<usize> {
        let start = self.after.unwrap_or(block - self.tokens);
        start..start + self.tokens
    }

    /// `batch` with `tokens` inputs of each row (its last, or those after the first `after`)
    /// replaced by `student`'s continuation of the row's inputs before them, and the targets at
    /// those positions [`IGNORED`] (the target before them, the prefix's next token in the data,
    /// stays; the last written position's, the data's token after the span, goes: the data does
    /// not continue the student's text). `seed` identifies the step and the
    /// micro-batch; row `r` samples from `seed + r`.
    pub fn rollout<B: AutodiffBackend>(
        &self,
        student: &Transformer<B>,
        batch: LmBatch<B::InnerBackend>,
        seed: u64,
    ) -> LmBatch<B::InnerBackend> {
        let model = student.valid();
        let [rows, block] = batch.inputs.dims();
        let device = batch.inputs.device();
        let ids = |t: Tensor<B::InnerBackend, 2, Int>| -> Vec<i64> {
            t.into_data().convert::<i64>().to_vec::<i64>().expect("integer token ids")
        };
        let (mut inputs, mut targets) = (ids(batch.inputs), ids(batch.targets));
        let span = self.span(block);
        for r in 0..rows {
            let row = r * block..(r + 1) * block;
            let prompt: Vec<u32> = inputs[row.start..row.start + span.start].iter().map(|&t| t as u32).collect();
            let sampling =
                Sampling { temperature: self.temperature, seed: seed.wrapping_add(r as u64), ..Default::default() };
            let (written, _) = generate(&model, &prompt, self.tokens, &mut Sampler::new(sampling), None, |_| {});
            let written: Vec<i64> = written.iter().map(|&t| t as i64).collect();
            let written_at = row.start + span.start..row.start + span.end;
            inputs[written_at.clone()].copy_from_slice(&written);
            targets[written_at].fill(IGNORED);
        }
        let tensor = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [rows, block]), &device);
        LmBatch { inputs: tensor(inputs), targets: tensor(targets) }
    }
}

/// The n-gram length of the repeats [`repeated_tokens`] marks: Welleck et al.'s sequence-level
/// unlikelihood (arXiv 1908.04319) marks repeated 4-grams.
pub const REPEAT_NGRAM: usize = 4;

/// What a sequence-level unlikelihood term ([`crate::losses::unlikelihood`]) pushes down in a
/// rolled-out batch, and over how many positions it is averaged: at each written position `t`
/// (target [`IGNORED`]) whose next input, the token the student wrote after it, belongs to a
/// [`REPEAT_NGRAM`]-gram of the continuation that already began earlier in the continuation,
/// that token; [`IGNORED`] everywhere else. The count is the written positions with a next input.
/// The data's tokens are not searched: repeating a name of the prompt is no loop, repeating its
/// own words is. A batch without written positions (a step on the data) gives nothing to push
/// down and a count of 0.
pub fn repeated_tokens<B: Backend>(batch: &LmBatch<B>) -> (Tensor<B, 2, Int>, usize) {
    let [rows, block] = batch.inputs.dims();
    let device = batch.inputs.device();
    let ids = |t: Tensor<B, 2, Int>| t.into_data().convert::<i64>().to_vec::<i64>().expect("integer token ids");
    let (inputs, targets) = (ids(batch.inputs.clone()), ids(batch.targets.clone()));
    let mut unlikely = vec![IGNORED; rows * block];
    let mut positions = 0;
    for r in 0..rows {
        let row = r * block..(r + 1) * block;
        positions += row_repeats(&inputs[row.clone()], &targets[row.clone()], &mut unlikely[row]);
    }
    (Tensor::from_data(TensorData::new(unlikely, [rows, block]), &device), positions)
}

/// [`repeated_tokens`] on one row: fills `unlikely`, returns the row's count.
fn row_repeats(inputs: &[i64], targets: &[i64], unlikely: &mut [i64]) -> usize {
    let Some(start) = targets.iter().position(|&t| t == IGNORED) else { return 0 };
    let end = targets[start..].iter().position(|&t| t != IGNORED).map_or(inputs.len(), |n| start + n);
    let written = &inputs[start..end];
    let mut repeated = vec![false; written.len()];
    let mut seen = std::collections::HashSet::new();
    for (s, gram) in written.windows(REPEAT_NGRAM).enumerate() {
        if !seen.insert(gram) {
            repeated[s..s + REPEAT_NGRAM].fill(true);
        }
    }
    // Written token `start + j` is predicted at position `start + j - 1`; the first written
    // token's position holds the data's target, so it is not one of the term's positions.
    for j in 1..written.len() {
        if repeated[j] {
            unlikely[start + j - 1] = written[j];
        }
    }
    end - 1 - start
}

/// One worker's rollouts in a run: the run's seed and the worker's global rank.
#[derive(Debug, Clone, Copy)]
pub struct Rollouts {
    pub seed: u64,
    pub rank: usize,
}

impl Rollouts {
    /// A step's micro-batches (`step` of the run, `stage_step` of `stage`), rolled out by
    /// `student` where the stage is on-policy at this step.
    pub fn prepare<B: AutodiffBackend>(
        &self,
        stage: &Stage,
        student: &Transformer<B>,
        micro_batches: Vec<LmBatch<B::InnerBackend>>,
        (step, stage_step): (usize, usize),
    ) -> Vec<LmBatch<B::InnerBackend>> {
        let Some(on_policy) = stage.on_policy.filter(|p| stage_step.is_multiple_of(p.every)) else {
            return micro_batches;
        };
        let seed = |micro| rollout_seed(self.seed, step, micro, self.rank);
        micro_batches
            .into_iter()
            .enumerate()
            .map(|(micro, batch)| on_policy.rollout(student, batch, seed(micro)))
            .collect()
    }
}

/// The sampling seed of micro-batch `micro` of `step` on worker `rank` of a run seeded `seed`:
/// distinct across steps, micro-batches and workers (each row adds its index).
pub fn rollout_seed(seed: u64, step: usize, micro: usize, rank: usize) -> u64 {
    let mix = |x: u64, y: u64| (x ^ y).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31);
    mix(mix(mix(seed, step as u64), micro as u64), rank as u64) & !0xFFFF
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use dijiang_model::config::{Architecture, ModelConfig};
    use dijiang_model::cpu::Cpu;

    use super::*;

    type B = Autodiff<Cpu>;

    fn batch(rows: usize, block: usize, vocab: usize) -> LmBatch<Cpu> {
        let ids: Vec<i64> = (0..rows * (block + 1)).map(|i| ((i * 37 + 5) % vocab) as i64).collect();
        let tokens = Tensor::<Cpu, 1, Int>::from_data(ids.as_slice(), &Default::default()).reshape([rows, block + 1]);
        LmBatch { inputs: tokens.clone().slice([0..rows, 0..block]), targets: tokens.slice([0..rows, 1..block + 1]) }
    }

    fn ids(t: Tensor<Cpu, 2, Int>) -> Vec<Vec<i64>> {
        let [rows, block] = t.dims();
        let flat = t.into_data().convert::<i64>().to_vec::<i64>().unwrap();
        (0..rows).map(|r| flat[r * block..(r + 1) * block].to_vec()).collect()
    }

    #[test]
    fn a_greedy_rollout_is_the_students_greedy_continuation_of_each_prefix() {
        let config = ModelConfig::tiny(Architecture::Llama);
        let student = Transformer::<B>::init(&config, 3, &Default::default()).unwrap();
        let (block, tokens) = (12, 5);
        let data = batch(2, block, config.vocab_size);
        let on_policy = OnPolicy { tokens, temperature: 0.0, every: 1, after: None };
        let rolled = on_policy.rollout(&student, data.clone(), 9);
        let (before, after, targets) = (ids(data.inputs), ids(rolled.inputs), ids(rolled.targets));
        let before_targets = ids(data.targets);
        let mut changed = false;
        for r in 0..2 {
            let kept = block - tokens;
            assert_eq!(after[r][..kept], before[r][..kept], "row {r}: the prefix is kept");
            let prompt: Vec<u32> = before[r][..kept].iter().map(|&t| t as u32).collect();
            let mut greedy = Sampler::new(Sampling::default());
            let (want, _) = generate(&student.valid(), &prompt, tokens, &mut greedy, None, |_| {});
            let want: Vec<i64> = want.into_iter().map(i64::from).collect();
            assert_eq!(after[r][kept..], want[..], "row {r}: the student's continuation");
            // The prefix's targets are the data's; the written positions' are ignored.
            assert_eq!(targets[r][..kept], before_targets[r][..kept], "row {r}");
            assert!(targets[r][kept..].iter().all(|&t| t == IGNORED), "row {r}: {:?}", targets[r]);
            changed |= after[r] != before[r];
        }
        assert!(changed, "the random student's continuation is not the data");
    }

    /// With `after`, the student continues the block's first `after` tokens, the data's tokens
    /// after the written span stay with their targets, and the repeats are searched in the span.
    #[test]
    fn a_rollout_after_a_short_prefix_writes_inside_the_block() {
        let config = ModelConfig::tiny(Architecture::Llama);
        let student = Transformer::<B>::init(&config, 3, &Default::default()).unwrap();
        let (block, tokens, after) = (16, 6, 3);
        let data = batch(2, block, config.vocab_size);
        let on_policy = OnPolicy { tokens, temperature: 0.0, every: 1, after: Some(after) };
        let rolled = on_policy.rollout(&student, data.clone(), 9);
        let (before, inputs, targets) = (ids(data.inputs), ids(rolled.inputs.clone()), ids(rolled.targets.clone()));
        let before_targets = ids(data.targets);
        let span = after..after + tokens;
        for r in 0..2 {
            let prompt: Vec<u32> = before[r][..after].iter().map(|&t| t as u32).collect();
            let (want, _) =
                generate(&student.valid(), &prompt, tokens, &mut Sampler::new(Sampling::default()), None, |_| {});
            let want: Vec<i64> = want.into_iter().map(i64::from).collect();
            assert_eq!(inputs[r][span.clone()], want[..], "row {r}: the student's continuation of the prefix");
            assert_eq!(inputs[r][..after], before[r][..after], "row {r}: the prefix is kept");
            assert_eq!(inputs[r][span.end..], before[r][span.end..], "row {r}: the data after the span is kept");
            assert!(targets[r][span.clone()].iter().all(|&t| t == IGNORED), "row {r}: {:?}", targets[r]);
            assert_eq!(targets[r][..after], before_targets[r][..after], "row {r}");
            assert_eq!(targets[r][span.end..], before_targets[r][span.end..], "row {r}");
        }
        // The count is the span's positions with a written next input; repeats only inside it.
        let (unlikely, positions) = repeated_tokens(&rolled);
        assert_eq!(positions, 2 * (tokens - 1));
        for row in ids(unlikely) {
            assert!(row.iter().enumerate().all(|(p, &t)| t == IGNORED || span.contains(&p)), "{row:?}");
        }
        let ok = |after| OnPolicy { after: Some(after), ..on_policy }.validate(block).is_ok();
        assert!(ok(1) && ok(block - tokens) && !ok(0) && !ok(block - tokens + 1));
    }

    #[test]
    fn sampled_rollouts_repeat_for_a_seed_and_differ_across_steps() {
        let config = ModelConfig::tiny(Architecture::Llama);
        let student = Transformer::<B>::init(&config, 3, &Default::default()).unwrap();
        let on_policy = OnPolicy { tokens: 8, temperature: 1.0, every: 1, after: None };
        let roll = |step| {
            let seed = rollout_seed(5, step, 0, 0);
            ids(on_policy.rollout(&student, batch(1, 12, config.vocab_size), seed).inputs)
        };
        assert_eq!(roll(3), roll(3));
        assert_ne!(roll(3), roll(4));
        let seeds =
            [rollout_seed(5, 3, 0, 0), rollout_seed(5, 3, 1, 0), rollout_seed(5, 3, 0, 1), rollout_seed(6, 3, 0, 0)];
        assert!(seeds.iter().enumerate().all(|(i, a)| seeds[i + 1..].iter().all(|b| a.abs_diff(*b) > 0xFFFF)));
    }

    /// Every token of a 4-gram the continuation already wrote is pushed down at the position
    /// that predicts it; repeats of the data's prefix and of shorter n-grams are not.
    #[test]
    fn repeated_tokens_are_the_continuations_repeated_four_grams() {
        const I: i64 = IGNORED;
        // Prefix 1 2 3 4 5 (its targets the data's), then the written 1 2 3 4 | 9 8 7 6 9 8 7 6 9 8 5.
        let inputs = [1, 2, 3, 4, 5, 1, 2, 3, 4, 9, 8, 7, 6, 9, 8, 7, 6, 9, 8, 5];
        let mut targets = [I; 20];
        targets[..5].copy_from_slice(&[2, 3, 4, 5, 1]);
        let device = Default::default();
        let rolled = LmBatch::<Cpu> {
            inputs: Tensor::from_data(TensorData::new(inputs.to_vec(), [1, 20]), &device),
            targets: Tensor::from_data(TensorData::new(targets.to_vec(), [1, 20]), &device),
        };
        let (unlikely, positions) = repeated_tokens(&rolled);
        // Written tokens 5..20: the second 9 8 7 6 (inputs 13..17) repeats the first, and so does
        // 8 7 6 9 (14..18) and 7 6 9 8 (15..19); the final 5 does not. Token k at position k - 1.
        let mut want = [I; 20];
        want[12..18].copy_from_slice(&inputs[13..19]);
        assert_eq!(ids(unlikely), [want.to_vec()]);
        assert_eq!(positions, 14, "the written positions 5..19, each with a next input");
        let data = batch(2, 12, 50);
        let (nothing, none) = repeated_tokens(&data);
        assert!(ids(nothing).iter().flatten().all(|&t| t == IGNORED) && none == 0, "a step on the data");
    }

    #[test]
    fn tokens_must_leave_a_prefix_and_the_temperature_be_a_number() {
        assert!(OnPolicy { tokens: 4, temperature: 1.0, every: 1, after: None }.validate(8).is_ok());
        for (p, says) in [
            (OnPolicy { tokens: 0, temperature: 1.0, every: 1, after: None }, "must be in 1..8"),
            (OnPolicy { tokens: 8, temperature: 1.0, every: 1, after: None }, "must be in 1..8"),
            (OnPolicy { tokens: 4, temperature: -1.0, every: 1, after: None }, ">= 0"),
            (OnPolicy { tokens: 4, temperature: f64::NAN, every: 1, after: None }, ">= 0"),
            (OnPolicy { tokens: 4, temperature: 1.0, every: 0, after: None }, "every must be >= 1"),
        ] {
            let err = p.validate(8).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn every_kth_step_of_the_stage_is_rolled_out_the_others_train_on_the_data() {
        use crate::objective::{Objective, Term};
        let config = ModelConfig::tiny(Architecture::Llama);
        let student = Transformer::<B>::init(&config, 3, &Default::default()).unwrap();
        let data = batch(1, 12, config.vocab_size);
        let on_policy = Some(OnPolicy { tokens: 6, temperature: 0.0, every: 3, after: None });
        let stage = Stage {
            name: "distill".into(),
            steps: 9,
            lr: 1e-3,
            min_lr: 0.0,
            warmup_steps: 0,
            trainable: crate::experiment::Trainable::All,
            lr_scale: Default::default(),
            loss: Objective::new([(Term::Kl, 1.0)]),
            on_policy,
        };
        let rollouts = Rollouts { seed: 5, rank: 0 };
        let written: Vec<bool> = (0..7)
            .map(|stage_step| {
                let out = rollouts.prepare(&stage, &student, vec![data.clone()], (10 + stage_step, stage_step));
                ids(out[0].inputs.clone()) != ids(data.inputs.clone())
            })
            .collect();
        assert_eq!(written, [true, false, false, true, false, false, true]);
        let off = Stage { on_policy: None, ..stage };
        let out = rollouts.prepare(&off, &student, vec![data.clone()], (10, 0));
        assert_eq!(ids(out[0].inputs.clone()), ids(data.inputs));
    }
}
