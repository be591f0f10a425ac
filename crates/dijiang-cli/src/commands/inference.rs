//! What the inference commands (`eval`, `evaluate`, `generate`) may change in a model as they load
//! it: a sliding-window hybrid's exact window.

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
}

impl ModelOptions {
    /// The model at `path` (`name`: as the user gave it), adjusted.
    pub fn load(
        &self,
        path: &Path,
        name: &str,
        device: &burn::tensor::Device<Backend>,
    ) -> Result<Transformer<Backend>> {
        let window = self.attention_window;
        let loaded = load_adjusted::<Backend>(path, device, |config| match window {
            Some(w) => config.with_window(w),
            None => Ok(config),
        });
        Ok(loaded.with_context(|| format!("loading {name}"))?.model)
    }

    /// How the loaded model differs from the stored one, for reports and records (`None`: it does not).
    pub fn change(&self) -> Option<String> {
        self.attention_window.map(|w| format!("attention window {w}"))
    }
}
