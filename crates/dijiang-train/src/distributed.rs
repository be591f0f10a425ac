//! Data parallelism: where a worker sits, how workers average what they computed (gradients and a
//! few numbers, packed into one vector per step), and one worker thread per device.
//!
//! The average is burn-collective's all-reduce: between the devices of one node, and across nodes
//! through its global ring all-reduce ([`crate::nodes`]: addresses, node 0's orchestrator, and the
//! watchdog that names a lost node). A worker joins once ([`Reducer::join`]), averages every step
//! ([`Reducer::average`]) and leaves at the end ([`Reducer::leave`]), whatever happened in between.
//! With the optimizer state sharded ([`crate::shard`]), each worker updates the parameters it owns
//! and the reducer hands them to the others ([`Reducer::share_updates`]), and gathers the state
//! for a checkpoint ([`Reducer::optimizer_state`]).

use std::collections::HashSet;
use std::time::Duration;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{self as collective, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};
use crate::experiment::DistributedConfig;
use crate::nodes::{Nodes, Orchestrator};
use crate::optim::{AdamW, SavedState};
use crate::params::{NamedMap, map_named};
use crate::shard::Shards;

/// Where a worker sits in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// Index among all devices of all nodes.
    pub global: usize,
    pub world: usize,
}

impl Rank {
    /// The only worker of a single-device run.
    pub const SINGLE: Rank = Rank { global: 0, world: 1 };

    /// The one worker that evaluates, logs and checkpoints.
    pub fn is_writer(self) -> bool {
        self.global == 0
    }
}

/// How the workers of a run average (decided once, from the experiment).
#[derive(Debug, Clone)]
pub struct Reduction {
    config: CollectiveConfig,
    /// The other nodes, in a multi-node run.
    nodes: Option<Nodes>,
}

impl Reduction {
    /// `None`: a single worker, nothing to average.
    pub fn of(d: &DistributedConfig) -> Result<Option<Self>> {
        if d.world() == 1 {
            return Ok(None);
        }
        if d.nodes > 1 {
            let nodes = Nodes::of(d)?;
            let config = nodes.collective_config(d.local_devices());
            return Ok(Some(Self { config, nodes: Some(nodes) }));
        }
        let config = CollectiveConfig::default()
            .with_num_devices(d.local_devices())
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        Ok(Some(Self { config, nodes: None }))
    }

    /// On node 0 of a multi-node run: burn-collective's orchestrator, serving until dropped.
    pub fn host(&self) -> Result<Option<Orchestrator>> {
        self.nodes.as_ref().map_or(Ok(None), Nodes::host_orchestrator)
    }

    /// On node 0, once its own workers are done: lets the other nodes leave before the
    /// orchestrator stops.
    pub fn await_departures(&self) {
        if let Some(nodes) = &self.nodes {
            nodes.await_departures(LEAVE_TIMEOUT);
        }
    }
}

/// A worker's membership of its run's reduction.
pub enum Reducer<B: Backend> {
    /// A single worker: averaging is the identity.
    Single,
    Collective {
        rank: Rank,
        device: B::Device,
        /// The other nodes, watched while a collective call waits for them.
        nodes: Option<Nodes>,
        /// The owners of the optimizer state, when it is sharded (set per stage).
        shards: Option<Shards>,
    },
}

/// How long leaving may wait for the orchestrator (node 0 may already have finished and gone).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

impl<B: Backend> Reducer<B> {
    /// Joins `reduction` as `rank` on `device`.
    pub fn join(reduction: Option<&Reduction>, rank: Rank, device: &B::Device) -> Result<Self> {
        let Some(reduction) = reduction else { return Ok(Reducer::Single) };
        let peer = PeerId::from(rank.global);
        let (config, at) = (reduction.config.clone(), device.clone());
        let register = move || collective::register::<B>(peer, at, config);
        let what = format!("device {} joining the run", rank.global);
        let joined = match &reduction.nodes {
            None => register(),
            Some(nodes) => nodes.wait(&what, false, Some(nodes.join_timeout), register)?,
        };
        joined.map_err(|e| TrainError::Distributed(format!("{what}: {e:?}")))?;
        Ok(Reducer::Collective { rank, device: device.clone(), nodes: reduction.nodes.clone(), shards: None })
    }

    /// Shards the optimizer state as `shards` says from now on (`None`: replicated). A single
    /// worker owns everything: nothing to shard.
    pub fn shard(&mut self, shards: Option<Shards>) {
        if let Reducer::Collective { shards: current, .. } = self {
            *current = shards;
        }
    }

    /// Whether this worker updates the parameter `name` (with the state replicated, every worker
    /// updates every parameter).
    pub fn updates(&self, name: &str) -> bool {
        match self {
            Reducer::Collective { rank, shards: Some(shards), .. } => shards.updates(rank.global, name),
            _ => true,
        }
    }

    /// The mean over all workers of `grads` (those of `module`'s parameters) and of `values`, in one
    /// exchange.
    pub fn average<AB, M>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        values: Vec<f64>,
    ) -> Result<(GradientsParams, Vec<f64>)>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let Reducer::Collective { device, .. } = self else { return Ok((grads, values)) };
        let (flat, layout) = Layout::pack::<AB, M>(module, grads, values, device);
        let reduced = self.all_reduce(flat, ReduceOperation::Mean, "the all-reduce of the gradients")?;
        Ok(layout.unpack::<AB, M>(module, reduced))
    }

    /// `module` with every parameter this worker does not own replaced by its owner's updated
    /// values (an identity unless the optimizer state is sharded).
    pub fn share_updates<AB, M>(&mut self, module: M) -> Result<M>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let Reducer::Collective { rank, shards: Some(shards), .. } = self else { return Ok(module) };
        let (rank, shards) = (rank.global, shards.clone());
        let mut share = Share { reducer: self, shards: &shards, rank, failed: None };
        let module = map_named(module, &mut share);
        match share.failed {
            Some(e) => Err(e),
            None => Ok(module),
        }
    }

    /// The optimizer's whole state on the writer (global rank 0), `None` on the other workers.
    /// Every worker must call it at the same step: a sharded state is gathered, one parameter's
    /// moments at a time.
    pub fn optimizer_state(&mut self, optimizer: &AdamW<B>) -> Result<Option<SavedState>> {
        let (rank, shards) = match self {
            Reducer::Single => return Ok(Some(optimizer.saved())),
            Reducer::Collective { rank, shards: None, .. } => return Ok(rank.is_writer().then(|| optimizer.saved())),
            Reducer::Collective { rank, shards: Some(shards), .. } => (*rank, shards.clone()),
        };
        let device = self.device().clone();
        let params: Vec<(&str, usize, usize)> = shards.params().collect();
        // Which moments exist (a parameter that never had a gradient has none).
        let held: Vec<f32> = params
            .iter()
            .map(|&(name, owner, _)| f32::from(u8::from(owner == rank.global && optimizer.moments_of(name).is_some())))
            .collect();
        let n = held.len();
        let held = self.all_reduce(
            Tensor::from_data(TensorData::new(held, [n]), &device),
            ReduceOperation::Sum,
            "finding the optimizer state's shards",
        )?;
        let held = held.into_data().to_vec::<f32>().expect("f32");
        let mut saved = SavedState { updates: optimizer.updates(), moments: Default::default() };
        for (&(name, owner, len), _) in params.iter().zip(&held).filter(|(_, held)| **held > 0.0) {
            let mine = if owner == rank.global { optimizer.moments_of(name) } else { None };
            let [m, v] = mine.unwrap_or_else(|| [Tensor::zeros([len], &device), Tensor::zeros([len], &device)]);
            let what = "gathering the optimizer state for a checkpoint";
            let both = self.all_reduce(Tensor::cat(vec![m, v], 0), ReduceOperation::Sum, what)?;
            if rank.is_writer() {
                let [m, v] = [0, 1].map(|i| both.clone().slice(i * len..(i + 1) * len).into_data());
                saved.moments.insert(name.to_string(), [m, v]);
            }
        }
        Ok(rank.is_writer().then_some(saved))
    }

    fn device(&self) -> &B::Device {
        match self {
            Reducer::Collective { device, .. } => device,
            Reducer::Single => unreachable!("a single worker exchanges nothing"),
        }
    }

    /// burn-collective's all-reduce of `flat` over all workers (`what` names it in errors).
    fn all_reduce(&mut self, flat: Tensor<B, 1>, op: ReduceOperation, what: &str) -> Result<Tensor<B, 1>> {
        let Reducer::Collective { rank, nodes, .. } = self else { return Ok(flat) };
        let peer = PeerId::from(rank.global);
        let Some(nodes) = nodes else {
            return Self::reduce(peer, flat, op).map_err(|e| TrainError::Distributed(format!("{what} failed: {e:?}")));
        };
        // Between nodes every slice travels as one websocket message, which this process bounds
        // (`Nodes::collective_config`): reduce in chunks of at most `nodes.chunk` values, of equal
        // sizes (a ring needs at least one value per node).
        let total = flat.dims()[0];
        let size = total.div_ceil(total.div_ceil(nodes.chunk).max(1));
        let chunks = (0..total).step_by(size).map(|at| flat.clone().slice(at..(at + size).min(total)));
        let mut reduced = Vec::new();
        for chunk in chunks {
            let result = nodes.wait(what, true, None, move || Self::reduce(peer, chunk, op))?;
            reduced.push(result.map_err(|e| nodes.failure(what, &format!("{e:?}")))?);
        }
        Ok(Tensor::cat(reduced, 0))
    }

    /// burn-collective's `op` (sum or mean) of `flat` over all workers.
    fn reduce(
        peer: PeerId,
        flat: Tensor<B, 1>,
        op: ReduceOperation,
    ) -> std::result::Result<Tensor<B, 1>, collective::CollectiveError> {
        let reduced = collective::all_reduce::<B>(peer, flat.into_primitive().tensor(), op)?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// Leaves the reduction (every worker must, for the others to finish).
    pub fn leave(self) -> Result<()> {
        let Reducer::Collective { rank, nodes, .. } = self else { return Ok(()) };
        let peer = PeerId::from(rank.global);
        let finish = move || collective::finish_collective::<B>(peer);
        let Some(nodes) = nodes else {
            return finish().map_err(|e| TrainError::Distributed(format!("leaving the collective: {e:?}")));
        };
        // The run's work is done (or failed already): node 0 stops its orchestrator when its own
        // workers are done, so another node's goodbye may find it gone. Not an error.
        match nodes.wait("leaving the run", false, Some(LEAVE_TIMEOUT), finish) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("leaving the collective: {e:?}"),
            Err(e) => tracing::debug!("{e}"),
        }
        Ok(())
    }
}

/// Hands each trained parameter's updated values from its owner to every worker: the owner
/// contributes its values, the others zeros, and the sum is exactly the owner's values.
struct Share<'a, B: Backend> {
    reducer: &'a mut Reducer<B>,
    shards: &'a Shards,
    rank: usize,
    failed: Option<TrainError>,
}

impl<AB: AutodiffBackend> NamedMap<AB> for Share<'_, AB::InnerBackend> {
    fn map<const D: usize>(&mut self, name: &str, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(owner) = self.shards.owner(name).filter(|_| self.failed.is_none()) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let trains = tensor.is_require_grad();
        let value = tensor.inner();
        let (dims, device) = (value.dims(), value.device());
        let n = value.shape().num_elements();
        let mine = if owner == self.rank { value.reshape([n]) } else { Tensor::zeros([n], &device) };
        let what = "sharing the updated parameters";
        let value = match self.reducer.all_reduce(mine, ReduceOperation::Sum, what) {
            Ok(shared) => shared.reshape(dims),
            Err(e) => {
                self.failed = Some(e);
                Tensor::zeros(dims, &device)
            }
        };
        let tensor = Tensor::from_inner(value);
        Param::from_mapped_value(id, if trains { tensor.require_grad() } else { tensor }, mapper)
    }
}

/// How gradients and values are packed into one tensor: the gradients flattened in the module's
/// visiting order (the same on every replica; `ParamId`s differ between processes, so their order
/// cannot be used), then the values.
struct Layout {
    /// The parameters that had a gradient.
    ids: HashSet<ParamId>,
    values: usize,
}

struct Pack<B: Backend> {
    grads: GradientsParams,
    parts: Vec<Tensor<B, 1>>,
    ids: HashSet<ParamId>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Pack<AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(param.id) {
            let n = grad.shape().num_elements();
            self.parts.push(grad.reshape([n]));
            self.ids.insert(param.id);
        }
    }
}

struct Unpack<'a, B: Backend> {
    flat: Tensor<B, 1>,
    offset: usize,
    grads: GradientsParams,
    ids: &'a HashSet<ParamId>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Unpack<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if self.ids.contains(&param.id) {
            let dims = param.val().dims();
            let n: usize = dims.iter().product();
            let part = self.flat.clone().slice(self.offset..self.offset + n).reshape(dims);
            self.grads.register::<AB::InnerBackend, D>(param.id, part);
            self.offset += n;
        }
    }
}

impl Layout {
    fn pack<AB, M>(
        module: &M,
        grads: GradientsParams,
        values: Vec<f64>,
        device: &burn::tensor::Device<AB::InnerBackend>,
    ) -> (Tensor<AB::InnerBackend, 1>, Self)
    where
        AB: AutodiffBackend,
        M: AutodiffModule<AB>,
    {
        let mut pack = Pack::<AB::InnerBackend> { grads, parts: Vec::new(), ids: HashSet::new() };
        module.visit(&mut pack);
        let n = values.len();
        pack.parts.push(Tensor::from_data(TensorData::new(values, [n]), device));
        (Tensor::cat(pack.parts, 0), Self { ids: pack.ids, values: n })
    }

    /// The gradients and values of `flat`, packed with this layout.
    fn unpack<AB, M>(self, module: &M, flat: Tensor<AB::InnerBackend, 1>) -> (GradientsParams, Vec<f64>)
    where
        AB: AutodiffBackend,
        M: AutodiffModule<AB>,
    {
        let total = flat.shape().num_elements();
        let values = flat.clone().slice(total - self.values..total).into_data().convert::<f64>().to_vec().expect("f64");
        let mut unpack = Unpack::<AB::InnerBackend> { flat, offset: 0, grads: GradientsParams::new(), ids: &self.ids };
        module.visit(&mut unpack);
        (unpack.grads, values)
    }
}

/// Runs `work` once per device of this node, each with its own `part`: on the calling thread for one
/// device, on a thread per device otherwise. Returns the first device's result, or else the first
/// error of another.
pub fn on_each_device<D: Sync, P: Send, R: Send>(
    devices: &[D],
    parts: Vec<P>,
    first_rank: usize,
    world: usize,
    work: impl Fn(Rank, &D, P) -> Result<R> + Sync,
) -> Result<R> {
    assert_eq!(devices.len(), parts.len(), "one part per device");
    let rank = |i: usize| Rank { global: first_rank + i, world };
    if devices.len() == 1 {
        let part = parts.into_iter().next().expect("one part");
        return work(rank(0), &devices[0], part);
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = devices
            .iter()
            .zip(parts)
            .enumerate()
            .map(|(i, (device, part))| scope.spawn(move || work(rank(i), device, part)))
            .collect();
        let mut results = handles.into_iter().map(|h| h.join().expect("a worker panicked"));
        let first = results.next().expect("at least one device");
        let failed = results.find_map(|r| r.err());
        match (first, failed) {
            (Ok(outcome), None) => Ok(outcome),
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use dijiang_model::cpu::Cpu;

    use super::*;
    use crate::experiment::OptimizerConfig;
    use crate::optim::Rates;
    use crate::params::params;

    type B = Autodiff<Cpu>;

    /// Three AdamW steps of a linear layer whose weight and bias have different owners: each of
    /// two sharded workers keeps only its own parameter's moments, both end with the replicated
    /// optimizer's values bit for bit, and the gathered state is the replicated one.
    #[test]
    fn sharded_workers_keep_their_own_moments_and_end_equal_to_a_replicated_optimizer() {
        let device = Default::default();
        let linear: Linear<B> = LinearConfig::new(3, 2).init(&device);
        // Visiting the parameters initialises them (Burn initialises lazily): clones share the values.
        let names = params(&linear);
        let loss = |linear: &Linear<B>, t: usize| {
            let x = Tensor::<B, 2>::from_data([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]], &device);
            let y = linear.forward(x);
            GradientsParams::from_grads((y.clone() * y).sum().mul_scalar(t as f64).backward(), linear)
        };
        let lr = |_: &str| 1e-2;
        let mut replicated = AdamW::<Cpu>::new(OptimizerConfig::default());
        let mut want = linear.clone();
        for t in 1..=3 {
            let grads = loss(&want, t);
            want = replicated.step(want, grads, Rates { lr: &lr, grad_scale: 0.5 }, &|_| true);
        }

        let shards = Shards::new(2, names.iter().map(|p| (p.name.as_str(), p.numel())));
        assert_eq!((shards.owner("weight"), shards.owner("bias")), (Some(0), Some(1)));
        let distributed = DistributedConfig { devices: vec!["cpu".into(); 2], ..Default::default() };
        let reduction = Reduction::of(&distributed).unwrap();
        let workers: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|global| {
                    let (reduction, shards, mut linear) = (reduction.as_ref(), shards.clone(), linear.clone());
                    scope.spawn(move || {
                        let rank = Rank { global, world: 2 };
                        let mut reducer = Reducer::<Cpu>::join(reduction, rank, &Default::default()).unwrap();
                        reducer.shard(Some(shards));
                        let mut optimizer = AdamW::<Cpu>::new(OptimizerConfig::default());
                        for t in 1..=3 {
                            let (grads, _) = reducer.average(&linear, loss(&linear, t), vec![]).unwrap();
                            let rates = Rates { lr: &lr, grad_scale: 0.5 };
                            linear = optimizer.step(linear, grads, rates, &|name| reducer.updates(name));
                            linear = reducer.share_updates(linear).unwrap();
                        }
                        let saved = reducer.optimizer_state(&optimizer).unwrap();
                        reducer.leave().unwrap();
                        (linear, optimizer, saved)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let values = |l: &Linear<B>| {
            let bias = l.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
            (l.weight.val().into_data().to_vec::<f32>().unwrap(), bias)
        };
        let whole = replicated.saved();
        for (rank, (linear, optimizer, saved)) in workers.iter().enumerate() {
            assert_eq!(values(linear), values(&want), "worker {rank} ends with the replicated values");
            let own = if rank == 0 { "weight" } else { "bias" };
            let other = if rank == 0 { "bias" } else { "weight" };
            assert!(optimizer.moments_of(own).is_some() && optimizer.moments_of(other).is_none(), "worker {rank}");
            assert_eq!(saved.is_some(), rank == 0, "only the writer gets the gathered state");
        }
        let gathered = workers[0].2.as_ref().unwrap();
        assert_eq!(gathered.updates, whole.updates);
        assert_eq!(gathered.moments.keys().collect::<Vec<_>>(), whole.moments.keys().collect::<Vec<_>>());
        for (name, [m, v]) in &whole.moments {
            assert_eq!(&gathered.moments[name][0], m, "{name}: m");
            assert_eq!(&gathered.moments[name][1], v, "{name}: v");
        }
    }
}
