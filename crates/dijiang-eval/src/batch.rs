//! From documents to forward passes: each document's requests are grouped by context into
//! [`Unit`]s (one context, its continuations), and units with contexts of equal token length are
//! batched, so that a batch's contexts run as one `[units, length]` pass without padding.

use dijiang_model::ModelError;

use crate::encode::Encoder;
use crate::error::EvalError;
use crate::loglikelihood::Unit;
use crate::pyrandom::PyRandom;
use crate::task::{Doc, Task};

/// How large one forward pass may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Contexts per batch (`--batch-size`).
    pub units: usize,
    /// Context tokens per batch.
    pub context_tokens: usize,
    /// Positions whose logits are computed per batch (each holds a vocabulary of floats).
    pub scored_positions: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { units: 32, context_tokens: 8192, scored_positions: 1024 }
    }
}

/// The units of some documents, each continuation traced back to its document's request.
#[derive(Debug, Default)]
pub struct Work {
    pub units: Vec<Unit>,
    /// Per unit: its document and, per continuation, the request's index in the document.
    pub owners: Vec<(usize, Vec<usize>)>,
}

/// Encodes the documents `pending` of `docs`, one unit per distinct context of a document.
pub fn encode_docs(task: Task, encoder: &Encoder, docs: &[Doc], pending: &[usize]) -> Result<Work, EvalError> {
    let mut work = Work::default();
    for &d in pending {
        let requests = &docs[d].requests;
        let mut contexts: Vec<&str> = Vec::new();
        for r in requests {
            if !contexts.contains(&r.context.as_str()) {
                contexts.push(&r.context);
            }
        }
        for context in contexts {
            let indices: Vec<usize> = (0..requests.len()).filter(|&i| requests[i].context == context).collect();
            let conts: Vec<&str> = indices.iter().map(|&i| requests[i].continuation.as_str()).collect();
            let (context_ids, continuations) =
                encoder.encode_group(context, &conts).map_err(|e| request_error(task, d, e))?;
            if let Some(i) = continuations.iter().position(Vec::is_empty) {
                let reason = format!("continuation {:?} encodes to no tokens after its context", conts[i]);
                return Err(EvalError::Request { task: task.name().into(), doc: d, reason });
            }
            work.units.push(Unit { context: context_ids, continuations });
            work.owners.push((d, indices));
        }
    }
    Ok(work)
}

fn request_error(task: Task, doc: usize, e: ModelError) -> EvalError {
    EvalError::Request { task: task.name().into(), doc, reason: e.to_string() }
}

/// One forward pass's worth of units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Units with contexts of one length, scored with the shared context.
    Shared(Vec<usize>),
    /// A unit too long for the model, scored request by request with lm-eval's truncation.
    Plain(usize),
}

/// Batches of units: equal context lengths together, within `limits`, in a fixed pseudo-random
/// order (so that the progress bar's rate and ETA are representative from the start).
pub fn plan(units: &[Unit], fits: impl Fn(&Unit) -> bool, limits: BatchLimits) -> Vec<Batch> {
    let (mut shared, plain): (Vec<usize>, Vec<usize>) = (0..units.len()).partition(|&i| fits(&units[i]));
    shared.sort_by_key(|&i| (units[i].context.len(), i));
    let mut batches: Vec<Batch> = plain.into_iter().map(Batch::Plain).collect();
    let mut current: Vec<usize> = Vec::new();
    let (mut tokens, mut positions) = (0, 0);
    for i in shared {
        let unit = &units[i];
        let (t, p) = (unit.context.len(), unit.continuations.len() * unit.max_continuation());
        let same_length = current.first().is_none_or(|&j| units[j].context.len() == t);
        let full = current.len() >= limits.units
            || tokens + t > limits.context_tokens
            || positions + p > limits.scored_positions;
        if !current.is_empty() && (!same_length || full) {
            batches.push(Batch::Shared(std::mem::take(&mut current)));
            (tokens, positions) = (0, 0);
        }
        current.push(i);
        (tokens, positions) = (tokens + t, positions + p);
    }
    if !current.is_empty() {
        batches.push(Batch::Shared(current));
    }
    shuffle(&mut batches);
    batches
}

/// Fisher-Yates with a fixed seed.
fn shuffle<T>(items: &mut [T]) {
    let mut rng = PyRandom::new(0);
    for i in (1..items.len()).rev() {
        items.swap(i, rng.choice_index(i + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(context: usize, conts: &[usize]) -> Unit {
        Unit { context: vec![1; context], continuations: conts.iter().map(|&n| vec![2; n]).collect() }
    }

    #[test]
    fn batches_group_equal_context_lengths_within_limits() {
        let units = vec![unit(3, &[1, 2]), unit(5, &[1]), unit(3, &[4]), unit(3, &[1]), unit(900, &[1])];
        let limits = BatchLimits { units: 2, context_tokens: 100, scored_positions: 100 };
        let mut batches = plan(&units, |u| u.context.len() < 100, limits);
        batches.sort_by_key(|b| format!("{b:?}"));
        assert_eq!(
            batches,
            vec![Batch::Plain(4), Batch::Shared(vec![0, 2]), Batch::Shared(vec![1]), Batch::Shared(vec![3])]
        );
        // Scored positions: 2 rows x 2 tokens = 4, then 1 x 4: the second unit would make 8 > 6.
        let limits = BatchLimits { units: 8, context_tokens: 100, scored_positions: 6 };
        let mut batches = plan(&units[..4], |_| true, limits);
        batches.sort_by_key(|b| format!("{b:?}"));
        assert_eq!(batches, vec![Batch::Shared(vec![0]), Batch::Shared(vec![1]), Batch::Shared(vec![2, 3])]);
    }
}
