//! DiJiang's frequency-domain kernelised linear attention, as pure tensor math generic over Burn's
//! `Backend` (docs/method.md; Chen et al., ICML 2024, arXiv 2403.19928).
//!
//! - [`cpu`]: the default CPU backend (what the tests run on).
//! - [`dct`]: the orthonormal DCT-II matrix.
//! - [`qmc`]: the scales `T = diag(Phi^{-1}(u))`, from quasi-Monte Carlo or Monte Carlo points.
//! - [`feature_map`]: the reference map, the paper's weighted map, Performer's random features.
//! - [`linear_attention`]: causal linear attention with decay, in parallel, chunked and recurrent
//!   forms that agree to round-off.
//!
//! This crate holds no parameters and no randomness of its own: modules (and which tensors are
//! trainable) live in `dijiang-model`; seeds are arguments.

pub mod cpu;
pub mod dct;
pub mod feature_map;
pub mod linear_attention;
pub mod qmc;
