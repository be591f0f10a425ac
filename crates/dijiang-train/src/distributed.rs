//! Data parallelism: where a worker sits, how workers average what they computed (gradients and a
//! few numbers, packed into one vector per step), and one worker thread per device.
//!
//! The average is burn-collective's all-reduce: between the devices of one node, and across nodes
//! through its global ring all-reduce ([`crate::nodes`]: addresses, node 0's orchestrator, and the
//! watchdog that names a lost node). A worker joins once ([`Reducer::join`]), averages every step
//! ([`Reducer::average`]) and leaves at the end ([`Reducer::leave`]), whatever happened in between.

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
        peer: PeerId,
        device: B::Device,
        /// The other nodes, watched while a collective call waits for them.
        nodes: Option<Nodes>,
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
        Ok(Reducer::Collective { peer, device: device.clone(), nodes: reduction.nodes.clone() })
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
        let Reducer::Collective { peer, device, nodes } = self else { return Ok((grads, values)) };
        let (flat, layout) = Layout::pack::<AB, M>(module, grads, values, device);
        let reduced = match nodes {
            None => {
                Self::mean(*peer, flat).map_err(|e| TrainError::Distributed(format!("all-reduce failed: {e:?}")))?
            }
            Some(nodes) => {
                // Between nodes every slice travels as one websocket message, which this
                // process bounds (`Nodes::collective_config`): reduce in chunks of at most
                // `nodes.chunk` values, of equal sizes (a ring needs at least one value per node).
                let total = flat.dims()[0];
                let size = total.div_ceil(total.div_ceil(nodes.chunk).max(1));
                let chunks = (0..total).step_by(size).map(|at| flat.clone().slice(at..(at + size).min(total)));
                let what = "the all-reduce of the gradients";
                let mut reduced = Vec::new();
                for chunk in chunks {
                    let peer = *peer;
                    let mean = nodes.wait(what, true, None, move || Self::mean(peer, chunk))?;
                    reduced.push(mean.map_err(|e| nodes.failure(what, &format!("{e:?}")))?);
                }
                Tensor::cat(reduced, 0)
            }
        };
        Ok(layout.unpack::<AB, M>(module, reduced))
    }

    /// burn-collective's mean of `flat` over all workers.
    fn mean(peer: PeerId, flat: Tensor<B, 1>) -> std::result::Result<Tensor<B, 1>, collective::CollectiveError> {
        let reduced = collective::all_reduce::<B>(peer, flat.into_primitive().tensor(), ReduceOperation::Mean)?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
    }

    /// Leaves the reduction (every worker must, for the others to finish).
    pub fn leave(self) -> Result<()> {
        let Reducer::Collective { peer, nodes, .. } = self else { return Ok(()) };
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
