//! Data parallelism: where a worker sits, how workers average what they computed (gradients and a
//! few numbers, packed into one vector per step), and one worker thread per device.
//!
//! Between the devices of one node the average is burn-collective's all-reduce; across nodes it goes
//! through the hub of [`crate::reducer`] on node 0 (burn-collective 0.21's multi-node path stalls:
//! see there). A worker joins once ([`Reducer::join`]), averages every step
//! ([`Reducer::average`]) and leaves at the end ([`Reducer::leave`]), whatever happened in between.

use std::collections::HashSet;
use std::thread::JoinHandle;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{self as collective, AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};

use crate::error::{Result, TrainError};
use crate::experiment::DistributedConfig;
use crate::reducer::{Hub, Link};

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
pub enum Reduction {
    /// This node's devices only: burn-collective's all-reduce between threads.
    Local(CollectiveConfig),
    /// Several nodes: every worker through the hub on node 0 at this address.
    Nodes(String),
}

impl Reduction {
    /// `None`: a single worker, nothing to average.
    pub fn of(d: &DistributedConfig) -> Result<Option<Self>> {
        if d.world() == 1 {
            return Ok(None);
        }
        if d.nodes > 1 {
            let address = d.orchestrator.clone().ok_or_else(|| {
                TrainError::Input("distributed.orchestrator = \"HOST:PORT\" is needed with nodes > 1".into())
            })?;
            return Ok(Some(Reduction::Nodes(address)));
        }
        let config = CollectiveConfig::default()
            .with_num_devices(d.local_devices())
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2));
        Ok(Some(Reduction::Local(config)))
    }

    /// On node 0 of a multi-node run: the hub, serving on a thread until the workers disconnect.
    pub fn host(&self, d: &DistributedConfig) -> Result<Option<JoinHandle<Result<()>>>> {
        match self {
            Reduction::Nodes(address) if d.node_rank == 0 => {
                let hub = Hub::bind(address, d.world())?;
                Ok(Some(std::thread::spawn(move || hub.serve())))
            }
            _ => Ok(None),
        }
    }
}

/// A worker's membership of its run's reduction.
pub enum Reducer<B: Backend> {
    /// A single worker: averaging is the identity.
    Single,
    Local {
        peer: PeerId,
        device: B::Device,
    },
    Nodes {
        link: Link,
        device: B::Device,
    },
}

impl<B: Backend> Reducer<B> {
    /// Joins `reduction` as `rank` on `device`.
    pub fn join(reduction: Option<&Reduction>, rank: Rank, device: &B::Device) -> Result<Self> {
        Ok(match reduction {
            None => Reducer::Single,
            Some(Reduction::Local(config)) => {
                let peer = PeerId::from(rank.global);
                collective::register::<B>(peer, device.clone(), config.clone()).map_err(|e| {
                    TrainError::Distributed(format!("joining the collective as device {}: {e:?}", rank.global))
                })?;
                Reducer::Local { peer, device: device.clone() }
            }
            Some(Reduction::Nodes(address)) => {
                Reducer::Nodes { link: Link::connect(address, rank.global)?, device: device.clone() }
            }
        })
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
        let device = match self {
            Reducer::Single => return Ok((grads, values)),
            Reducer::Local { device, .. } | Reducer::Nodes { device, .. } => device.clone(),
        };
        let (flat, layout) = Layout::pack::<AB, M>(module, grads, values, &device);
        let flat = self.mean(flat)?;
        Ok(layout.unpack::<AB, M>(module, flat))
    }

    /// The mean of `flat` over all workers.
    fn mean(&mut self, flat: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        match self {
            Reducer::Single => Ok(flat),
            Reducer::Local { peer, .. } => {
                let reduced = collective::all_reduce::<B>(*peer, flat.into_primitive().tensor(), ReduceOperation::Mean)
                    .map_err(|e| TrainError::Distributed(format!("all-reduce failed: {e:?}")))?;
                Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
            }
            Reducer::Nodes { link, device } => {
                let values = flat.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data");
                let mean = link.all_reduce_mean(&values)?;
                let n = mean.len();
                Ok(Tensor::from_data(TensorData::new(mean, [n]), &*device))
            }
        }
    }

    /// Leaves the reduction (every worker must, for the others to finish).
    pub fn leave(self) -> Result<()> {
        match self {
            Reducer::Local { peer, .. } => collective::finish_collective::<B>(peer)
                .map_err(|e| TrainError::Distributed(format!("leaving the collective: {e:?}"))),
            // Closing the connection tells the hub.
            Reducer::Single | Reducer::Nodes { .. } => Ok(()),
        }
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
