//! Where a model's parameters come from while it is being built.
//!
//! Modules are built by asking a [`WeightSource`] for each parameter by its name (our names, e.g.
//! `layers.3.attn.q.weight`), its shape in our layout and how to initialise it. [`Fresh`]
//! initialises everything (seeded from the parameter's name, so no global RNG and the same values
//! on every backend); [`Loaded`] reads from a checkpoint ([`crate::store::TensorStore`]) and
//! initialises only the parameters it is told are new (a DiJiang student built from a softmax
//! teacher), recording which those were. Nothing is allocated twice: a 7B model never exists as a
//! random init before its weights are read.

use burn::tensor::{Distribution, Tensor, TensorData, backend::Backend};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::error::{ModelError, name_list};
use crate::store::TensorStore;

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, std^2).
    Normal {
        std: f64,
    },
    /// Xavier/Glorot uniform with a gain, for a `[fan_in, fan_out]` matrix.
    XavierUniform {
        gain: f64,
    },
    /// Values computed by the caller (a DCT projection, the reference decay).
    Values(Vec<f64>),
}

impl Init {
    /// The values for a tensor of `shape`, drawn from a generator seeded by `seed` and `name`.
    pub fn values(&self, name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut rng = StdRng::seed_from_u64(seed ^ fnv1a(name));
        match self {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => {
                dijiang_kernel::qmc::standard_normals(n, rng.random()).into_iter().map(|z| (z * std) as f32).collect()
            }
            Init::XavierUniform { gain } => {
                let (fan_in, fan_out) = (shape[0], shape.get(1).copied().unwrap_or(1));
                let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
            Init::Values(v) => {
                assert_eq!(v.len(), n, "{name}: {} init values for shape {shape:?}", v.len());
                v.iter().map(|x| *x as f32).collect()
            }
        }
    }
}

/// FNV-1a: a stable 64-bit hash of a parameter name, to derive its seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Supplies parameters to module constructors.
pub trait WeightSource<B: Backend> {
    /// The parameter `name` with `shape` (our layout), from the source or from `init`.
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Tensor<B, D>;

    /// The device the model is built on.
    fn device(&self) -> &B::Device;
}

fn to_tensor<B: Backend, const D: usize>(data: Vec<f32>, shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Initialises every parameter (seeded by `seed` and the parameter's name).
#[derive(Debug)]
pub struct Fresh<'a, B: Backend> {
    pub seed: u64,
    pub device: &'a B::Device,
}

impl<B: Backend> WeightSource<B> for Fresh<'_, B> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Tensor<B, D> {
        to_tensor(init.values(name, &shape, self.seed), shape, self.device)
    }

    fn device(&self) -> &B::Device {
        self.device
    }
}

/// Draws every parameter on the device with its backend's generator (unseeded): for checks where
/// only shapes matter, the memory and speed of a 7B recipe. [`Fresh`] draws on one host thread
/// through the inverse normal CDF: LLaMA-2-7B took the whole 140 s limit of a device check there
/// (the first GPU session, docs/gpu.md).
#[derive(Debug)]
pub struct Drawn<'a, B: Backend> {
    pub device: &'a B::Device,
}

impl<B: Backend> WeightSource<B> for Drawn<'_, B> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Tensor<B, D> {
        let distribution = match init {
            Init::Normal { std } => Distribution::Normal(0.0, std),
            Init::XavierUniform { gain } => {
                let (fan_in, fan_out) = (shape[0], shape.get(1).copied().unwrap_or(1));
                let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                Distribution::Uniform(-bound, bound)
            }
            // Constants and computed values: small, and the same as Fresh's.
            other => return to_tensor(other.values(name, &shape, 0), shape, self.device),
        };
        Tensor::random(shape, distribution, self.device)
    }

    fn device(&self) -> &B::Device {
        self.device
    }
}

/// Records each parameter's name and shape instead of making it: the model built from it is a
/// skeleton of one-element tensors, as cheap for a 7B preset as for a tiny one.
#[derive(Debug)]
pub struct Skeleton<'a, B: Backend> {
    pub device: &'a B::Device,
    /// `(name, shape)` in the order the model asked for them.
    pub shapes: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> WeightSource<B> for Skeleton<'_, B> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], _: Init) -> Tensor<B, D> {
        self.shapes.push((name.to_string(), shape.to_vec()));
        Tensor::zeros([1; D], self.device)
    }

    fn device(&self) -> &B::Device {
        self.device
    }
}

/// Reads parameters from a checkpoint; a parameter it lacks is initialised if `is_new(name)` says it
/// may be (recorded in `initialised`), and is an error otherwise (reported by [`Loaded::finish`]).
pub struct Loaded<'a, B: Backend> {
    store: &'a mut dyn TensorStore,
    is_new: &'a dyn Fn(&str) -> bool,
    seed: u64,
    device: &'a B::Device,
    /// New parameters, initialised rather than read.
    pub initialised: Vec<String>,
    missing: Vec<String>,
    errors: Vec<ModelError>,
}

impl<'a, B: Backend> Loaded<'a, B> {
    pub fn new(
        store: &'a mut dyn TensorStore,
        is_new: &'a dyn Fn(&str) -> bool,
        seed: u64,
        device: &'a B::Device,
    ) -> Self {
        Self { store, is_new, seed, device, initialised: Vec::new(), missing: Vec::new(), errors: Vec::new() }
    }

    /// The first error met, else missing parameters, else checkpoint tensors the model did not use.
    pub fn finish(self) -> Result<Vec<String>, ModelError> {
        if let Some(err) = self.errors.into_iter().next() {
            return Err(err);
        }
        let path = self.store.path().to_path_buf();
        if !self.missing.is_empty() {
            return Err(ModelError::Missing { path, count: self.missing.len(), names: name_list(&self.missing) });
        }
        let unused = self.store.unused();
        if !unused.is_empty() {
            return Err(ModelError::Unknown { path, count: unused.len(), names: name_list(&unused) });
        }
        Ok(self.initialised)
    }
}

impl<B: Backend> WeightSource<B> for Loaded<'_, B> {
    fn tensor<const D: usize>(&mut self, name: &str, shape: [usize; D], init: Init) -> Tensor<B, D> {
        let placeholder = |shape: [usize; D], device| Tensor::<B, D>::zeros(shape, device);
        match self.store.fetch(name) {
            Ok(Some(t)) if t.shape == shape => to_tensor(t.data, shape, self.device),
            Ok(Some(t)) => {
                self.errors.push(ModelError::Shape {
                    path: self.store.path().to_path_buf(),
                    name: self.store.source_name(name),
                    stored: self.store.source_shape(name),
                    got: t.shape,
                    want: shape.to_vec(),
                });
                placeholder(shape, self.device)
            }
            Ok(None) if (self.is_new)(name) => {
                self.initialised.push(name.to_string());
                to_tensor(init.values(name, &shape, self.seed), shape, self.device)
            }
            Ok(None) => {
                self.missing.push(self.store.source_name(name));
                placeholder(shape, self.device)
            }
            Err(err) => {
                self.errors.push(err);
                placeholder(shape, self.device)
            }
        }
    }

    fn device(&self) -> &B::Device {
        self.device
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    type B = NdArray;

    #[test]
    fn drawn_parameters_follow_their_init_and_constants_equal_fresh_ones() {
        let device = Default::default();
        let mut drawn = Drawn::<B> { device: &device };
        let normal: Vec<f32> = drawn.tensor("w", [512, 256], Init::Normal { std: 0.02 }).into_data().to_vec().unwrap();
        let n = normal.len() as f64;
        let mean = normal.iter().map(|x| *x as f64).sum::<f64>() / n;
        let std = (normal.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 1e-3 && (std / 0.02 - 1.0).abs() < 0.02, "mean {mean}, std {std}");

        let bound = (6.0f64 / (64 + 32) as f64).sqrt();
        let uniform: Vec<f32> =
            drawn.tensor("u", [64, 32], Init::XavierUniform { gain: 1.0 }).into_data().to_vec().unwrap();
        let largest = uniform.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64));
        assert!(largest <= bound && largest > 0.9 * bound, "largest {largest}, bound {bound}");

        let mut fresh = Fresh::<B> { seed: 3, device: &device };
        for init in [Init::Ones, Init::Zeros, Init::Values(vec![0.5, -1.0, 2.0])] {
            let a: Vec<f32> = drawn.tensor("c", [3], init.clone()).into_data().to_vec().unwrap();
            let b: Vec<f32> = fresh.tensor("c", [3], init).into_data().to_vec().unwrap();
            assert_eq!(a, b);
        }
    }
}
