//! What the inference commands (`eval`, `evaluate`, `generate`) may change in a model as they load
//! it: a sliding-window hybrid's exact window and a DiJiang model's decay horizon. Neither is a
//! weight, so both can differ from what the model was trained with.

use std::path::Path;

use anyhow::{Context, Result};
use dijiang_model::Transformer;
use dijiang_model::import::load_adjusted;

use crate::backend::Backend;

#[derive(clap::Args)]
pub struct ModelOptions {
    /// A sliding-window hybrid's exact softmax window at inference, in keys (default: the one it
    /// was trained with). Wider is closer to the teacher at O(window) more work per token, the
    /// state still constant in the context length (docs/conversion-start.md).
    #[arg(long)]
    pub attention_window: Option<usize>,
    /// A DiJiang model's decay bound at inference, in tokens (`gamma <= 1 - 1/N`; default: the one
    /// it was trained with). Longer keeps more of a long context in the linear state; whether
    /// that helps depends on the model (docs/conversion-start.md).
    #[arg(long, value_name = "N")]
    pub max_horizon: Option<usize>,
}

impl ModelOptions {
    /// The model at `path` (`name`: as the user gave it), adjusted.
    pub fn load(
        &self,
        path: &Path,
        name: &str,
        device: &burn::tensor::Device<Backend>,
    ) -> Result<Transformer<Backend>> {
        let (window, horizon) = (self.attention_window, self.max_horizon);
        let loaded = load_adjusted::<Backend>(path, device, |config| {
            let config = match window {
                Some(w) => config.with_window(w)?,
                None => config,
            };
            match horizon {
                Some(h) => config.with_max_horizon(h),
                None => Ok(config),
            }
        });
        Ok(loaded.with_context(|| format!("loading {name}"))?.model)
    }

    /// How the loaded model differs from the stored one, for reports and records (`None`: it does not).
    pub fn change(&self) -> Option<String> {
        let changes: Vec<String> = [
            self.attention_window.map(|w| format!("attention window {w}")),
            self.max_horizon.map(|h| format!("decay horizon {h}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!changes.is_empty()).then(|| changes.join(", "))
    }
}
