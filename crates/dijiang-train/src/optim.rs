//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, decoupled weight decay), global-norm
//! gradient clipping, and state keyed by parameter name.
//!
//! Written here rather than taken from burn-optim 0.21 because (a) its state is keyed by
//! `ParamId`s, which are fresh every time a model is loaded from our checkpoints, so an exact resume
//! cannot find it again; (b) it has no parameter groups, and the recipe decays only matrices
//! (not norms, biases, gains or decays); (c) its clipping is per tensor, the recipe's is over all
//! parameters. The update itself is the ten lines of `update`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Result, TrainError};
use crate::experiment::OptimizerConfig;
use crate::params::{NamedMap, map_named};

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// The optimizer and its state.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    config: OptimizerConfig,
    /// Updates applied so far (the bias-correction step count).
    updates: u64,
    moments: BTreeMap<String, Moments<B>>,
}

/// Whether a parameter gets weight decay: matrices (projections, embeddings, gates) do; vectors
/// (norm gains and biases, feature weights, decays) do not.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: OptimizerConfig) -> Self {
        Self { config, updates: 0, moments: BTreeMap::new() }
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Keeps only the moments of the parameters for which `keep(name)` holds (a sharded worker's
    /// own).
    pub fn retain(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.moments.retain(|name, _| keep(name));
    }

    /// The moments of `name`, flattened, if this optimizer holds them.
    pub fn moments_of(&self, name: &str) -> Option<[Tensor<B, 1>; 2]> {
        self.moments.get(name).map(|s| [s.m.clone(), s.v.clone()])
    }

    /// The global L2 norm of all gradients in `grads` (those of `module`'s parameters), as PyTorch's
    /// `clip_grad_norm_` computes it.
    pub fn grad_norm<AB, M>(module: &M, grads: &GradientsParams) -> f64
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut visitor = SquaredNorms::<B> { grads, parts: Vec::new() };
        module.visit(&mut visitor);
        if visitor.parts.is_empty() {
            return 0.0;
        }
        Tensor::cat(visitor.parts, 0).sum().into_scalar().elem::<f64>().sqrt()
    }

    /// One update of every parameter that has a gradient in `grads` and that `owns(name)` (all of
    /// them, unless the state is sharded), each at its learning rate `lr(name)` (parameter groups),
    /// the gradients scaled by `grad_scale` (clipping). The others keep their values.
    pub fn step<AB, M>(&mut self, module: M, grads: GradientsParams, rates: Rates<'_>, owns: &dyn Fn(&str) -> bool) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.updates += 1;
        map_named(module, &mut Update { optimizer: self, grads, rates, owns })
    }

    /// PyTorch's AdamW for one tensor: decoupled decay, then the bias-corrected Adam step.
    fn update<const D: usize>(&mut self, name: &str, p: Tensor<B, D>, g: Tensor<B, D>, lr: f64) -> Tensor<B, D> {
        let c = &self.config;
        let shape = p.shape();
        let n = shape.num_elements();
        let g = g.reshape([n]);
        let state = self
            .moments
            .remove(name)
            .unwrap_or_else(|| Moments { m: Tensor::zeros([n], &g.device()), v: Tensor::zeros([n], &g.device()) });
        let m = state.m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = state.v.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2);
        let t = self.updates as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
        let delta = m.clone().div(denom).mul_scalar(lr / bc1).reshape(shape.clone());
        self.moments.insert(name.to_string(), Moments { m, v });
        let decay = if decays(&p.dims()) { c.weight_decay } else { 0.0 };
        let p = if decay > 0.0 { p.mul_scalar(1.0 - lr * decay) } else { p };
        p - delta
    }

    /// The state on the host, as a checkpoint keeps it.
    pub fn saved(&self) -> SavedState {
        let moments = self.moments.iter().map(|(name, s)| (name.clone(), [s.m.to_data(), s.v.to_data()])).collect();
        SavedState { updates: self.updates, moments }
    }

    /// Reads the state [`SavedState::save`] wrote, keeping the moments of the parameters for which
    /// `keep(name)` holds (a sharded worker's own; the file is mapped, so the others are not read).
    pub fn load(config: OptimizerConfig, path: &Path, device: &B::Device, keep: &dyn Fn(&str) -> bool) -> Result<Self> {
        let fail = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
        let buffer = dijiang_model::import::map_file(path)?;
        let (_, metadata) = SafeTensors::read_metadata(&buffer).map_err(|e| fail(e.to_string()))?;
        let updates = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("updates"))
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| fail("no `updates` count in the metadata".into()))?;
        let tensors = SafeTensors::deserialize(&buffer).map_err(|e| fail(e.to_string()))?;
        let read = |name: &str| -> Result<Tensor<B, 1>> {
            let view = tensors.tensor(name).map_err(|e| fail(e.to_string()))?;
            if view.dtype() != Dtype::F32 {
                return Err(fail(format!("{name} is {:?}, expected F32", view.dtype())));
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let n = values.len();
            Ok(Tensor::from_data(TensorData::new(values, [n]), device))
        };
        let mut moments = BTreeMap::new();
        for name in tensors.names() {
            if let Some(param) = name.strip_prefix("m.").filter(|p| keep(p)) {
                moments.insert(param.to_string(), Moments { m: read(name)?, v: read(&format!("v.{param}"))? });
            }
        }
        Ok(Self { config, updates, moments })
    }
}

/// The learning rate of each parameter and the gradients' scale of one update.
#[derive(Clone, Copy)]
pub struct Rates<'a> {
    /// The learning rate of the parameter `name` (parameter groups).
    pub lr: &'a dyn Fn(&str) -> f64,
    /// The gradients' multiplier (clipping).
    pub grad_scale: f64,
}

/// AdamW's state on the host, by parameter name: what a checkpoint keeps, whether the workers held
/// it whole or in shards.
#[derive(Debug, Clone, Default)]
pub struct SavedState {
    /// Updates applied so far (the bias-correction step count).
    pub updates: u64,
    /// Each parameter's first and second moments, flattened.
    pub moments: BTreeMap<String, [TensorData; 2]>,
}

impl SavedState {
    /// Writes the state to a safetensors file (`m.NAME`, `v.NAME`, f32; the update count in the
    /// metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |reason: String| TrainError::Checkpoint { path: path.to_path_buf(), reason };
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, [m, v]) in &self.moments {
            for (prefix, data) in [("m", m), ("v", v)] {
                let data = data.clone().convert::<f32>();
                let shape = data.shape.to_vec();
                let values = data.to_vec::<f32>().map_err(|e| fail(format!("{name}: {e:?}")))?;
                bytes.push((format!("{prefix}.{name}"), shape, bytemuck::cast_slice(&values).to_vec()));
            }
        }
        let views = bytes
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| fail(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("updates".to_string(), self.updates.to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| fail(e.to_string()))
    }
}

struct SquaredNorms<'a, B: Backend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B, 1>>,
}

impl<B: Backend, AB: AutodiffBackend<InnerBackend = B>> ModuleVisitor<AB> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<B, D>(param.id) {
            // In an order threads do not change: the norm decides clipping, and exact resume.
            self.parts.push(dijiang_model::reduce::sum(g.square()));
        }
    }
}

struct Update<'a, B: Backend> {
    optimizer: &'a mut AdamW<B>,
    grads: GradientsParams,
    rates: Rates<'a>,
    owns: &'a dyn Fn(&str) -> bool,
}

impl<B: Backend, AB: AutodiffBackend<InnerBackend = B>> NamedMap<AB> for Update<'_, B> {
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B, D>(id).filter(|_| (self.owns)(name)) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let scale = self.rates.grad_scale;
        let grad = if scale == 1.0 { grad } else { grad.mul_scalar(scale) };
        let updated = self.optimizer.update(name, tensor.inner(), grad, (self.rates.lr)(name));
        Param::from_mapped_value(id, Tensor::from_inner(updated).require_grad(), mapper)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use dijiang_model::cpu::Cpu;

    use super::*;

    type B = Autodiff<Cpu>;

    /// One PyTorch AdamW step by hand, in f64.
    fn torch_adamw(p: f64, g: f64, lr: f64, wd: f64, c: &OptimizerConfig, t: i32, m: &mut f64, v: &mut f64) -> f64 {
        *m = c.beta1 * *m + (1.0 - c.beta1) * g;
        *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
        let p = p * (1.0 - lr * wd);
        let denom = (*v).sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
        p - lr / (1.0 - c.beta1.powi(t)) * *m / denom
    }

    #[test]
    fn matches_pytorch_adamw_with_decay_on_matrices_only_global_clipping_and_groups() {
        let device = Default::default();
        let config = OptimizerConfig { weight_decay: 0.1, ..Default::default() };
        let mut linear: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let w0: Vec<f64> = linear.weight.val().into_data().convert::<f64>().to_vec().unwrap();
        let b0: Vec<f64> = linear.bias.as_ref().unwrap().val().into_data().convert::<f64>().to_vec().unwrap();
        let mut optimizer = AdamW::<Cpu>::new(config.clone());
        let x = Tensor::<B, 2>::from_data([[1.0, -2.0, 0.5]], &device);
        let (mut mw, mut vw, mut mb, mut vb) = (vec![0.0; 6], vec![0.0; 6], vec![0.0; 2], vec![0.0; 2]);
        let (mut w, mut b) = (w0, b0);
        for t in 1..=3 {
            // loss = sum(y * c): dL/dW[i][j] = x[i] * c[j], dL/db = c.
            let c = [3.0 * t as f64, -4.0];
            let y = linear.forward(x.clone());
            let loss = (y * Tensor::<B, 2>::from_data([[c[0], c[1]]], &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &linear);
            let norm = AdamW::grad_norm(&linear, &grads);
            let xs = [1.0, -2.0, 0.5];
            let sq: f64 =
                xs.iter().map(|a| a * a).sum::<f64>() * (c[0] * c[0] + c[1] * c[1]) + c[0] * c[0] + c[1] * c[1];
            assert!((norm - sq.sqrt()).abs() < 1e-4 * sq.sqrt(), "global norm {norm} vs {}", sq.sqrt());
            let scale = 1.0 / norm; // clip to norm 1
            // Parameter groups: the bias at twice the weight's learning rate.
            let lr = |name: &str| if name == "bias" { 2e-2 } else { 1e-2 };
            linear = optimizer.step(linear, grads, Rates { lr: &lr, grad_scale: scale }, &|_| true);
            for i in 0..3 {
                for j in 0..2 {
                    let k = i * 2 + j;
                    w[k] = torch_adamw(w[k], xs[i] * c[j] * scale, 1e-2, 0.1, &config, t, &mut mw[k], &mut vw[k]);
                }
            }
            for j in 0..2 {
                b[j] = torch_adamw(b[j], c[j] * scale, 2e-2, 0.0, &config, t, &mut mb[j], &mut vb[j]);
            }
        }
        let got_w: Vec<f64> = linear.weight.val().into_data().convert::<f64>().to_vec().unwrap();
        let got_b: Vec<f64> = linear.bias.as_ref().unwrap().val().into_data().convert::<f64>().to_vec().unwrap();
        for (a, e) in got_w.iter().zip(&w).chain(got_b.iter().zip(&b)) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        assert!(linear.weight.val().is_require_grad(), "parameters stay trainable");

        // The state survives a save / load round trip.
        let path = std::env::temp_dir().join(format!("dijiang-adamw-{}.safetensors", std::process::id()));
        optimizer.saved().save(&path).unwrap();
        let loaded = AdamW::<Cpu>::load(config.clone(), &path, &device, &|_| true).unwrap();
        assert_eq!(loaded.updates(), 3);
        assert_eq!(loaded.moments.keys().collect::<Vec<_>>(), ["bias", "weight"]);
        let m = |o: &AdamW<Cpu>| o.moments["weight"].v.to_data().to_vec::<f32>().unwrap();
        assert_eq!(m(&loaded), m(&optimizer));
        // A shard's worker reads its own parameters' moments only.
        let shard = AdamW::<Cpu>::load(config, &path, &device, &|name| name == "bias").unwrap();
        assert_eq!(shard.updates(), 3);
        assert_eq!(shard.moments.keys().collect::<Vec<_>>(), ["bias"]);
        std::fs::remove_file(path).ok();
    }
}
