//! Decoding: prefill the prompt, then one token at a time, carrying a KV cache (softmax) or the
//! recurrent state (DiJiang, constant memory), with greedy, temperature, top-k and top-p sampling
//! and an optional repetition penalty.

use std::time::Instant;

use burn::prelude::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::transformer::{DecodeState, Transformer};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f64,
    pub seed: u64,
    /// The repetition penalty of CTRL (arXiv 1909.05858), as HF transformers' and llama.cpp's:
    /// the logit of every token among the last `repeat_last_n` is divided by it when positive and
    /// multiplied by it when negative (1: off).
    pub repeat_penalty: f32,
    /// How many of the latest tokens (prompt and generated) the penalty looks at (0: all of them).
    pub repeat_last_n: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, repeat_penalty: 1.0, repeat_last_n: 64 }
    }
}

/// `logits` with the repetition penalty applied to the tokens of `recent` (each once).
fn penalize(logits: &[f32], recent: &[u32], penalty: f32) -> Vec<f32> {
    let mut out = logits.to_vec();
    let mut seen = std::collections::HashSet::new();
    for &id in recent {
        if let Some(l) = out.get_mut(id as usize).filter(|_| seen.insert(id)) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
    out
}

/// A seeded sampler.
#[derive(Debug)]
pub struct Sampler {
    config: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: Sampling) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The next token id from one position's logits, after the tokens `previous` (prompt and
    /// generated so far, oldest first; only the repetition penalty reads them).
    pub fn sample(&mut self, logits: &[f32], previous: &[u32]) -> u32 {
        let penalized;
        let logits = if self.config.repeat_penalty == 1.0 {
            logits
        } else {
            let n = self.config.repeat_last_n;
            let recent = if n == 0 { previous } else { &previous[previous.len().saturating_sub(n)..] };
            penalized = penalize(logits, recent, self.config.repeat_penalty);
            &penalized
        };
        let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
        if self.config.temperature <= 0.0 {
            return argmax();
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        if self.config.top_k > 0 {
            order.truncate(self.config.top_k);
        }
        let t = self.config.temperature as f32;
        let max = logits[order[0]];
        let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / t) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.config.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs.iter().position(|p| {
                mass += p;
                mass >= self.config.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut u = self.rng.random::<f64>();
        for (i, p) in order.iter().zip(&probs) {
            if u < *p {
                return *i as u32;
            }
            u -= p;
        }
        *order.last().expect("at least one candidate") as u32
    }
}

/// What a generation run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Peak size of the KV cache or recurrent state, in bytes (f32).
    pub peak_state_bytes: usize,
}

impl GenerationStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        self.new_tokens as f64 / self.decode_seconds.max(1e-9)
    }
}

/// The last position's logits of `[1, t, vocab]`.
fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [_, t, v] = logits.dims();
    logits.narrow(1, t - 1, 1).reshape([v]).into_data().convert::<f32>().to_vec::<f32>().expect("f32 logits")
}

/// Generates up to `max_new` tokens after `prompt` (batch 1), calling `on_token` with each new id
/// as it is chosen, and stopping after `eos`.
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    prompt: &[u32],
    max_new: usize,
    sampler: &mut Sampler,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> (Vec<u32>, GenerationStats) {
    assert!(!prompt.is_empty(), "generation needs at least one prompt token (e.g. BOS)");
    let device = model.devices().into_iter().next().unwrap_or_default();
    let tensor = |ids: &[u32]| {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device)
    };
    let mut state = DecodeState::new(model.layers.len());
    let start = Instant::now();
    let mut logits = last_logits(model.forward_cached(tensor(prompt), &mut state));
    let prefill_seconds = start.elapsed().as_secs_f64();
    let mut peak = state.num_elements();

    let start = Instant::now();
    let mut out = Vec::with_capacity(max_new);
    let mut previous = prompt.to_vec();
    for step in 0..max_new {
        let id = sampler.sample(&logits, &previous);
        previous.push(id);
        out.push(id);
        on_token(id);
        if Some(id) == eos || step + 1 == max_new {
            break;
        }
        logits = last_logits(model.forward_cached(tensor(&[id]), &mut state));
        peak = peak.max(state.num_elements());
    }
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        new_tokens: out.len(),
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
        peak_state_bytes: peak * 4,
    };
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_sampling_respects_top_k() {
        let logits = [0.1, 2.0, -1.0, 1.9];
        assert_eq!(Sampler::new(Sampling::default()).sample(&logits, &[]), 1);
        let mut s = Sampler::new(Sampling { temperature: 1.0, top_k: 2, seed: 3, ..Sampling::default() });
        let draws: Vec<u32> = (0..200).map(|_| s.sample(&logits, &[])).collect();
        assert!(draws.iter().all(|d| *d == 1 || *d == 3));
        assert!(draws.contains(&1) && draws.contains(&3));
    }

    #[test]
    fn top_p_keeps_the_nucleus_and_seeds_repeat() {
        let logits = [5.0, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(Sampling { temperature: 1.0, top_p: 0.9, seed: 1, ..Sampling::default() });
        assert!((0..100).all(|_| s.sample(&logits, &[]) == 0));
        let draw = |seed| {
            let mut s = Sampler::new(Sampling { temperature: 2.0, seed, ..Sampling::default() });
            (0..50).map(|_| s.sample(&[0.0, 0.1, 0.2, 0.3], &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn the_repetition_penalty_scales_recent_logits_once() {
        // Hand-computed: 2.0 / 2 = 1.0 and -1.0 * 2 = -2.0; token 1 appears twice, penalised once.
        assert_eq!(penalize(&[0.5, 2.0, -1.0, 1.9], &[1, 2, 1], 2.0), vec![0.5, 1.0, -2.0, 1.9]);
        let greedy = |penalty, last_n, previous: &[u32]| {
            let config = Sampling { repeat_penalty: penalty, repeat_last_n: last_n, ..Sampling::default() };
            Sampler::new(config).sample(&[0.5, 2.0, -1.0, 1.9], previous)
        };
        assert_eq!(greedy(1.0, 64, &[1]), 1, "1 is off");
        assert_eq!(greedy(1.3, 64, &[1]), 3, "2.0 / 1.3 < 1.9");
        assert_eq!(greedy(1.3, 1, &[1, 0]), 1, "token 1 is outside the last 1");
        assert_eq!(greedy(1.3, 0, &[1, 0, 0, 0]), 3, "0 looks at every token");
    }
}
