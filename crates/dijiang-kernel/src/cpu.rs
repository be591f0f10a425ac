//! The CPU backend that the workspace's tests run on: the binary's default CPU backend.
//!
//! One alias so that the whole test suite (parity fixtures, exact resume, importers) runs on the
//! backend users get: Burn's Flex under this crate's default `flex` feature (so `cargo test -p X`
//! and `cargo test --workspace` run on the same backend), NdArray without it.

/// The default CPU backend, `f32` floats.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// The default CPU backend, `f32` floats.
#[cfg(not(feature = "flex"))]
pub type Cpu = burn::backend::NdArray<f32>;
