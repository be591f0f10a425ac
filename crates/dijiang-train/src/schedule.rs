//! The learning rate as a pure function of the step: linear warmup, then cosine decay to a minimum,
//! then flat (Burn's `CosineAnnealingLrScheduler` wraps around after its last step instead).

use crate::experiment::Stage;

/// The learning rate at `step` (0-based) of `stage`.
pub fn learning_rate(stage: &Stage, step: usize) -> f64 {
    if step < stage.warmup_steps {
        return stage.lr * (step + 1) as f64 / stage.warmup_steps as f64;
    }
    let decay_steps = stage.steps.saturating_sub(stage.warmup_steps).max(1);
    let progress = ((step - stage.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Trainable;
    use crate::objective::{Objective, Term};

    fn stage() -> Stage {
        Stage {
            name: "s".into(),
            steps: 110,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            trainable: Trainable::All,
            lr_scale: Default::default(),
            loss: Objective::new([(Term::Lm, 1.0)]),
            on_policy: None,
        }
    }

    #[test]
    fn warms_up_linearly_then_decays_by_cosine_to_the_minimum() {
        let s = stage();
        assert!((learning_rate(&s, 0) - 1e-4).abs() < 1e-15);
        assert!((learning_rate(&s, 9) - 1e-3).abs() < 1e-15);
        assert!((learning_rate(&s, 10) - 1e-3).abs() < 1e-15);
        assert!((learning_rate(&s, 60) - 5.5e-4).abs() < 1e-12, "half way: the midpoint");
        assert!((learning_rate(&s, 110) - 1e-4).abs() < 1e-15);
        // Never wraps around past the end.
        assert!((learning_rate(&s, 500) - 1e-4).abs() < 1e-15);
        let lrs: Vec<f64> = (10..=110).map(|i| learning_rate(&s, i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }
}
