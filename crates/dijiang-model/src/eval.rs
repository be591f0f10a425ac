//! Next-token negative log-likelihood and perplexity of a model on a token sequence.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Mean next-token NLL (nats) over the `ids.len() - 1` predicted positions, batch 1.
///
/// # Panics
/// If fewer than 2 tokens are given.
pub fn mean_nll<B: Backend>(model: &crate::Transformer<B>, ids: &[u32]) -> f64 {
    let nll = target_nll(model, ids).mean();
    nll.into_data().convert::<f64>().to_vec::<f64>().expect("scalar")[0]
}

/// The NLL (nats) of every predicted token: entry `i` is position `i`'s loss on token `i + 1`, so
/// that a long window's loss can be read by position (how the model uses context it was not
/// trained on).
///
/// # Panics
/// If fewer than 2 tokens are given.
pub fn token_nll<B: Backend>(model: &crate::Transformer<B>, ids: &[u32]) -> Vec<f64> {
    target_nll(model, ids).into_data().convert::<f64>().to_vec::<f64>().expect("a vector")
}

/// `[t - 1]` losses of a batch-1 forward pass over `ids`.
fn target_nll<B: Backend>(model: &crate::Transformer<B>, ids: &[u32]) -> Tensor<B, 1> {
    assert!(ids.len() >= 2, "perplexity needs at least 2 tokens");
    let device = model.devices().into_iter().next().unwrap_or_default();
    let t = ids.len();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
    let logits = model.forward(tokens.clone());
    let [_, _, v] = logits.dims();
    // Position i predicts token i + 1.
    let logp = log_softmax(logits.reshape([t, v]).narrow(0, 0, t - 1), 1);
    let targets = tokens.reshape([t]).narrow(0, 1, t - 1).reshape([t - 1, 1]);
    logp.gather(1, targets).reshape([t - 1]).neg()
}
