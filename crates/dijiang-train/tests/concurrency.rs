//! Backward passes on several threads at once must not lose gradients: data parallelism runs one
//! worker thread per device in one process. Burn 0.21's autodiff did (tracel-ai/burn#5573): the
//! sweep at the end of one thread's backward freed a node another thread was about to use;
//! `vendor/burn-autodiff` carries the fix (see `vendor/README.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::Distribution;
use dijiang_model::cpu::Cpu;

type B = Autodiff<Cpu>;

/// Rounds on a reused leaf: a throwaway backward (which drops the leaf's graph entry, so that each
/// next operation on it starts a one-node graph), two such operations moved into `cat` (which
/// releases its inputs before registering itself, leaving those graphs' nodes unreferenced during
/// the copy), and a backward whose gradient for the leaf must be exactly 2 + 3.
fn rounds_keep_their_gradient(rounds: usize, size: usize) -> Result<(), String> {
    let device = Default::default();
    let leaf = Tensor::<B, 2>::random([size, size], Distribution::Normal(0.0, 1.0), &device).require_grad();
    for round in 0..rounds {
        let _ = leaf.clone().mul_scalar(3.0).sum().backward();
        let loss = Tensor::cat(vec![leaf.clone().mul_scalar(2.0), leaf.clone().mul_scalar(3.0)], 0).sum();
        let grads = loss.backward();
        let grad = leaf.grad(&grads).ok_or(format!("round {round}: the leaf lost its gradient"))?;
        let wrong = grad.sub_scalar(5.0).abs().max().into_scalar();
        if wrong != 0.0 {
            return Err(format!("round {round}: the leaf's gradient is off by {wrong}"));
        }
    }
    Ok(())
}

/// Other threads' backward passes, each ending with the sweep, as fast as they go.
fn sweep_until(stop: &AtomicBool) {
    let device = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let x = Tensor::<B, 1>::random([8], Distribution::Default, &device).require_grad();
        let _ = x.exp().sum().backward();
    }
}

#[test]
fn concurrent_backward_passes_keep_every_gradient() {
    let stop = Arc::new(AtomicBool::new(false));
    // The unpatched crate loses a gradient within the first ~10 rounds of every thread here.
    let (threads, rounds, size) = (3, 40, 192);
    let sweepers: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || sweep_until(&stop))
        })
        .collect();
    let victims: Vec<_> =
        (0..threads).map(|_| std::thread::spawn(move || rounds_keep_their_gradient(rounds, size))).collect();
    let results: Vec<Result<(), String>> = victims.into_iter().map(|v| v.join().expect("no panic")).collect();
    stop.store(true, Ordering::Relaxed);
    for s in sweepers {
        s.join().expect("no panic");
    }
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
}
