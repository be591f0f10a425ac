//! Tokenisation as lm-eval 0.4.13's HF model does it (`_encode_pair`, `tok_encode`):
//!
//! - trailing whitespace of the context moves to the front of the continuation;
//! - `whole = encode(context + continuation)`, `ctx = encode(context)`, and the continuation's
//!   tokens are `whole[len(ctx):]`, even where `whole` does not start with `ctx` (the model is fed
//!   `ctx + whole[len(ctx):]`, which the shared-context scoring reproduces exactly);
//! - special tokens as the tokenizer adds them by default (lm-eval >= 0.4.10 leaves
//!   `add_bos_token` unset: LLaMA-2's tokenizer prepends BOS, SmolLM2's and Pythia's add none);
//!   `add_bos_token=True` / `False` are [`BosPolicy::Always`] / [`BosPolicy::Never`];
//! - an empty context becomes the prefix token alone (BOS, or EOS where there is no BOS).

use dijiang_model::ModelError;
use dijiang_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::task::python::rstrip;

/// Whether a BOS token starts every encoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BosPolicy {
    /// As the tokenizer does by default (lm-eval 0.4.13 without `add_bos_token`).
    #[default]
    Tokenizer,
    /// lm-eval's `add_bos_token=True`.
    Always,
    /// lm-eval's `add_bos_token=False`.
    Never,
}

/// A context and a continuation as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Encodes requests as lm-eval's HF model does.
#[derive(Debug)]
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    bos: BosPolicy,
}

impl<'a> Encoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer, bos: BosPolicy) -> Self {
        Self { tokenizer, bos }
    }

    /// `tok_encode(text)`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.tokenizer.encode(text)?;
        let bos = self.tokenizer.bos;
        let starts_with_bos = bos.is_some() && ids.first() == bos.as_ref();
        match (self.bos, bos) {
            (BosPolicy::Always, Some(b)) if !starts_with_bos => ids.insert(0, b),
            (BosPolicy::Never, _) if starts_with_bos => {
                ids.remove(0);
            }
            _ => {}
        }
        Ok(ids)
    }

    /// The token lm-eval puts before a continuation whose context is empty (`prefix_token_id`).
    fn prefix_token(&self) -> Option<u32> {
        self.tokenizer.bos.or(self.tokenizer.eos)
    }

    /// lm-eval's `_encode_pair` (and `loglikelihood`'s empty-context case).
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<EncodedPair, ModelError> {
        let (context, mut continuations) = self.encode_group(context, &[continuation])?;
        Ok(EncodedPair { context, continuation: continuations.remove(0) })
    }

    /// [`encode_pair`](Self::encode_pair) for several continuations of one context, encoding the
    /// context once: its ids and each continuation's.
    pub fn encode_group(&self, context: &str, continuations: &[&str]) -> Result<(Vec<u32>, Vec<Vec<u32>>), ModelError> {
        if context.is_empty() {
            let prefix = self.prefix_token().ok_or_else(|| {
                ModelError::Config("an empty context needs a BOS or EOS token, and this tokenizer has neither".into())
            })?;
            let conts = continuations.iter().map(|c| self.encode(c)).collect::<Result<_, _>>()?;
            return Ok((vec![prefix], conts));
        }
        let (kept, moved) = split_trailing_space(context);
        let context_ids = self.encode(kept)?;
        let conts = continuations
            .iter()
            .map(|c| {
                let whole = self.encode(&format!("{kept}{moved}{c}"))?;
                Ok(whole.get(context_ids.len()..).unwrap_or_default().to_vec())
            })
            .collect::<Result<_, ModelError>>()?;
        Ok((context_ids, conts))
    }
}

/// The context without its trailing whitespace, and that whitespace (which goes to the front of
/// every continuation).
fn split_trailing_space(context: &str) -> (&str, &str) {
    let kept = rstrip(context);
    (kept, &context[kept.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_space_moves_to_the_continuation() {
        assert_eq!(split_trailing_space("Answer: "), ("Answer:", " "));
        assert_eq!(split_trailing_space("a\n \n"), ("a", "\n \n"));
        assert_eq!(split_trailing_space("a"), ("a", ""));
    }
}
