//! Log-likelihoods of continuations after contexts, as lm-eval computes them: the model reads
//! `context + continuation` (less its last token) and the continuation's log-probabilities are
//! summed at the positions that predict it; `greedy` says whether each was the argmax.
//!
//! Two paths give the same numbers:
//! - [`Scorer::score_plain`]: lm-eval's own computation, one forward pass per request (with its
//!   left truncation to the model's length): the reference, and the fallback for requests too
//!   long for the model;
//! - [`Scorer::score_shared`]: a batch of contexts of one length is run once, keeping the KV
//!   cache (softmax) or the recurrent state (DiJiang), whose rows are then repeated for each
//!   continuation, which runs from there as one right-padded batch. The output head is applied
//!   only where a token is scored (the last context position and the continuations).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use dijiang_model::{DecodeState, Transformer};
use serde::{Deserialize, Serialize};

/// A continuation's summed log-probability and whether every token of it was the greedy one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    pub logprob: f64,
    pub greedy: bool,
}

/// One context and the continuations scored after it, as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

impl Unit {
    /// The longest continuation, in tokens.
    pub fn max_continuation(&self) -> usize {
        self.continuations.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Scores requests with one model.
#[derive(Debug)]
pub struct Scorer<'m, B: Backend> {
    model: &'m Transformer<B>,
    device: B::Device,
    /// lm-eval's `max_length`: the model's context length.
    max_len: usize,
}

/// `[rows, len]` token ids as an Int tensor.
fn ids_tensor<B: Backend>(ids: Vec<i64>, rows: usize, len: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids, [rows, len]), device)
}

/// Each position's log-probability of its target and its argmax, flattened row-major.
///
/// # Shapes
/// - logits: `[r, t, vocab]`, targets: `[r, t]` -> two vectors of `r * t`
fn token_scores<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> (Vec<f64>, Vec<i64>) {
    let [r, t] = targets.dims();
    let argmax = logits.clone().argmax(2); // [r, t, 1]
    let logp = log_softmax(logits, 2).gather(2, targets.reshape([r, t, 1])); // [r, t, 1]
    let logp = logp.into_data().convert::<f64>().to_vec::<f64>().expect("f64 log-probabilities");
    let argmax = argmax.into_data().convert::<i64>().to_vec::<i64>().expect("i64 token ids");
    (logp, argmax)
}

impl<'m, B: Backend> Scorer<'m, B> {
    pub fn new(model: &'m Transformer<B>) -> Self {
        let device = model.devices().into_iter().next().unwrap_or_default();
        Self { model, device, max_len: model.config().max_seq_len }
    }

    /// Whether the unit's requests fit the model's length untruncated (the shared path's condition).
    pub fn fits(&self, unit: &Unit) -> bool {
        !unit.context.is_empty() && unit.context.len() + unit.max_continuation() - 1 <= self.max_len
    }

    /// lm-eval's computation of one request: a forward pass over
    /// `(context + continuation)[-(max_len + 1):][:-1]`, scored at its last `len(continuation)`
    /// positions.
    pub fn score_plain(&self, context: &[u32], continuation: &[u32]) -> LogLikelihood {
        assert!(!context.is_empty() && !continuation.is_empty(), "a request needs context and continuation tokens");
        let whole: Vec<i64> = context.iter().chain(continuation).map(|&i| i as i64).collect();
        let start = whole.len().saturating_sub(self.max_len + 1);
        let input = whole[start..whole.len() - 1].to_vec();
        let (n, k) = (input.len(), continuation.len());
        let logits = self.model.forward(ids_tensor(input, 1, n, &self.device)).narrow(1, n - k, k);
        let targets = continuation.iter().map(|&i| i as i64).collect();
        let (logp, argmax) = token_scores(logits, ids_tensor(targets, 1, k, &self.device));
        let greedy = argmax.iter().zip(continuation).all(|(a, &c)| *a == c as i64);
        LogLikelihood { logprob: logp.iter().sum(), greedy }
    }

    /// Every continuation of every unit, the contexts (all of one length) computed once.
    /// Returns one vector per unit, in the order of its continuations.
    ///
    /// # Panics
    /// If the contexts differ in length or a unit does not [`fit`](Self::fits).
    pub fn score_shared(&self, units: &[&Unit]) -> Vec<Vec<LogLikelihood>> {
        let lc = units[0].context.len();
        assert!(units.iter().all(|u| u.context.len() == lc && self.fits(u)), "one context length, within the model's");
        // Each continuation is a row; `owner[row]` is its unit.
        let owner: Vec<usize> = units.iter().enumerate().flat_map(|(i, u)| vec![i; u.continuations.len()]).collect();
        let conts: Vec<&[u32]> = units.iter().flat_map(|u| u.continuations.iter().map(Vec::as_slice)).collect();
        let rows = Tensor::<B, 1, Int>::from_data(
            TensorData::new(owner.iter().map(|&i| i as i64).collect::<Vec<_>>(), [owner.len()]),
            &self.device,
        );

        // The contexts: [u, lc] -> the last position's hidden state [u, 1, hidden] predicts each
        // continuation's first token.
        let ctx_ids = units.iter().flat_map(|u| u.context.iter().map(|&i| i as i64)).collect();
        let mut state = DecodeState::new(self.model.layers.len());
        let hidden = self.model.hidden_cached(ids_tensor(ctx_ids, units.len(), lc, &self.device), &mut state);
        let first_logits = self.model.head(hidden.narrow(1, lc - 1, 1)).select(0, rows.clone()); // [r, 1, vocab]
        let first_targets = conts.iter().map(|c| c[0] as i64).collect();
        let (first_logp, first_argmax) =
            token_scores(first_logits, ids_tensor(first_targets, conts.len(), 1, &self.device));

        let rest = self.continue_rows(&state, &owner, &conts);
        let mut out: Vec<Vec<LogLikelihood>> =
            units.iter().map(|u| Vec::with_capacity(u.continuations.len())).collect();
        for (r, (cont, (rest_logp, rest_argmax))) in conts.iter().zip(rest).enumerate() {
            let logprob = first_logp[r] + rest_logp.iter().sum::<f64>();
            let greedy =
                first_argmax[r] == cont[0] as i64 && rest_argmax.iter().zip(&cont[1..]).all(|(a, &c)| *a == c as i64);
            out[owner[r]].push(LogLikelihood { logprob, greedy });
        }
        out
    }

    /// The continuations' tokens after the first, each row continuing its context's state:
    /// inputs `cont[..len - 1]` predict `cont[1..]`. Rows of similar lengths run together,
    /// right-padded to the longest (padding comes after every scored position, so causal
    /// attention never lets it in), and the output head runs on the real positions only.
    /// Returns each row's log-probabilities and argmaxes of `cont[1..]`.
    fn continue_rows(&self, state: &DecodeState<B>, owner: &[usize], conts: &[&[u32]]) -> Vec<(Vec<f64>, Vec<i64>)> {
        let mut out = vec![(Vec::new(), Vec::new()); conts.len()];
        for group in length_groups(conts) {
            let width = conts[*group.last().expect("a non-empty group")].len() - 1;
            let mut inputs = Vec::with_capacity(group.len() * width);
            // Flat indices of the real positions in [rows * width], and their targets.
            let (mut real, mut targets) = (Vec::new(), Vec::new());
            for (i, &r) in group.iter().enumerate() {
                let c = conts[r];
                inputs.extend(c[..c.len() - 1].iter().map(|&t| t as i64));
                inputs.extend(std::iter::repeat_n(0, width + 1 - c.len()));
                real.extend((0..c.len() - 1).map(|j| (i * width + j) as i64));
                targets.extend(c[1..].iter().map(|&t| t as i64));
            }
            let rows = group.iter().map(|&r| owner[r] as i64).collect::<Vec<_>>();
            let mut state = state.select_rows(Tensor::from_data(TensorData::new(rows, [group.len()]), &self.device));
            let hidden = self.model.hidden_cached(ids_tensor(inputs, group.len(), width, &self.device), &mut state);
            let [n, w, h] = hidden.dims();
            let n_real = real.len();
            // [n, w, hidden] -> [n*w, hidden] -> the real positions [1, n_real, hidden]
            let index = Tensor::from_data(TensorData::new(real, [n_real]), &self.device);
            let hidden = hidden.reshape([n * w, h]).select(0, index).reshape([1, n_real, h]);
            let (logp, argmax) = token_scores(self.model.head(hidden), ids_tensor(targets, 1, n_real, &self.device));
            let mut at = 0;
            for &r in &group {
                let len = conts[r].len() - 1;
                out[r] = (logp[at..at + len].to_vec(), argmax[at..at + len].to_vec());
                at += len;
            }
        }
        out
    }
}

/// The rows with more than one token, by length, in groups of similar lengths: a group grows
/// while its padding stays within a quarter of its real positions (or it is still small, where
/// another forward pass would cost more than the padding).
fn length_groups(conts: &[&[u32]]) -> Vec<Vec<usize>> {
    let mut rows: Vec<usize> = (0..conts.len()).filter(|&r| conts[r].len() > 1).collect();
    rows.sort_by_key(|&r| (conts[r].len(), r));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0;
    for r in rows {
        let len = conts[r].len() - 1;
        let padded = groups.last().map_or(0, |g| (g.len() + 1) * len);
        match groups.last_mut() {
            Some(g) if real < 256 || 4 * padded <= 5 * (real + len) => {
                g.push(r);
                real += len;
            }
            _ => {
                groups.push(vec![r]);
                real = len;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_lengths_run_together() {
        let lens = [1, 30, 2, 200, 31, 100, 101, 29];
        let conts: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = conts.iter().map(Vec::as_slice).collect();
        // One-token rows need no pass; below 256 real positions a group takes anything; then a
        // row joins while the padding stays within a quarter of the real positions.
        assert_eq!(length_groups(&refs), vec![vec![2, 7, 1, 4, 5, 6], vec![3]]);
    }
}
