//! Several nodes: where each node's burn-collective data service listens, node 0's orchestrator,
//! and the watchdog that turns a lost node into an error naming it.
//!
//! burn-collective's global all-reduce (ring, as its docs advise between nodes) moves the
//! gradients node to node; its orchestrator (hosted by node 0) only introduces the nodes to each
//! other. When a node dies, a peer's download from it fails or its barrier waits forever, so every
//! collective call runs on a helper thread while the worker probes the other nodes' data services:
//! a node whose port refuses connections (or does not answer) is named in the error and the run
//! stops; restarting every node resumes from the last checkpoint.
//!
//! Trust: like NCCL and torch.distributed, burn-collective authenticates nobody. The orchestrator
//! and the data services listen only on the addresses they are given, so keep those on a private
//! network or behind a firewall; any process that can reach them can join or read gradients.

use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn_collective::{AllReduceStrategy, CollectiveConfig};
use burn_communication::Address;

use crate::error::{Result, TrainError};
use crate::experiment::DistributedConfig;

/// How often a waiting worker checks that the other nodes are alive.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe waits for a node's port to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of a multi-node run, as this node sees them.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// `HOST:PORT` of node 0's orchestrator.
    pub orchestrator: String,
    /// Every node's data-service address (`HOST:PORT`), by node rank.
    pub addresses: Vec<String>,
    /// This node's rank.
    pub rank: usize,
    /// How long joining may take (every node must start within it).
    pub join_timeout: Duration,
    /// The most values one all-reduce between nodes carries.
    pub chunk: usize,
}

impl Nodes {
    /// The nodes of `d` (which has `nodes > 1`): `distributed.addresses`, or on one host, the
    /// orchestrator's host with the ports after the orchestrator's.
    pub fn of(d: &DistributedConfig) -> Result<Self> {
        let orchestrator = d.orchestrator.clone().ok_or_else(|| {
            TrainError::Input("distributed.orchestrator = \"HOST:PORT\" is needed with nodes > 1".into())
        })?;
        let (host, port) = split_host_port(&orchestrator)?;
        let addresses = if d.addresses.is_empty() {
            (1..=d.nodes as u16).map(|i| format!("{host}:{}", port.saturating_add(i))).collect()
        } else {
            d.addresses.clone()
        };
        for address in &addresses {
            split_host_port(address)?;
        }
        Ok(Self {
            orchestrator,
            addresses,
            rank: d.node_rank as usize,
            join_timeout: Duration::from_secs(d.join_timeout_s),
            chunk: d.chunk_values,
        })
    }

    /// burn-collective's configuration for this node with `local_devices` devices. Also bounds
    /// what this process accepts from a peer to the largest message the run sends: a chunk of
    /// f32 values and its envelope.
    pub fn collective_config(&self, local_devices: usize) -> CollectiveConfig {
        burn_communication::websocket::set_max_message_size(self.chunk * 4 + (1 << 20));
        let ws = |a: &str| Address::from_str(&format!("ws://{a}")).expect("any string is an address");
        let (_, data_port) = split_host_port(&self.addresses[self.rank]).expect("checked in Nodes::of");
        CollectiveConfig::default()
            .with_num_devices(local_devices)
            .with_local_all_reduce_strategy(AllReduceStrategy::Tree(2))
            .with_num_nodes(self.addresses.len() as u32)
            .with_global_address(ws(&self.orchestrator))
            .with_node_address(ws(&self.addresses[self.rank]))
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Ring)
    }

    /// On node 0: the orchestrator, serving on a thread until the returned handle is dropped.
    pub fn host_orchestrator(&self) -> Result<Option<Orchestrator>> {
        if self.rank != 0 {
            return Ok(None);
        }
        // Fail here, with the address, rather than in the orchestrator's thread.
        std::net::TcpListener::bind(&self.orchestrator).map_err(|e| {
            TrainError::Distributed(format!(
                "distributed.orchestrator = {}: node 0 cannot listen there: {e}",
                self.orchestrator
            ))
        })?;
        let (host, port) = split_host_port(&self.orchestrator)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| TrainError::Distributed(format!("starting the orchestrator's runtime: {e}")))?;
            let shutdown = async move {
                let _ = stopped.await;
            };
            runtime
                .block_on(burn_collective::serve_global_orchestrator(&host, port, shutdown))
                .map_err(|e| TrainError::Distributed(format!("the orchestrator on {host}:{port} failed: {e:?}")))
        });
        Ok(Some(Orchestrator { stop: Some(stop), thread: Some(thread) }))
    }

    /// On node 0, before its orchestrator stops: waits (at most `limit`) until every other node has
    /// left the run, which closes its data service. A node still saying goodbye to a stopped
    /// orchestrator would wait for an answer that never comes.
    pub fn await_departures(&self, limit: Duration) {
        let start = Instant::now();
        while self.lost().len() + 1 < self.addresses.len() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The other nodes whose data service does not answer.
    pub fn lost(&self) -> Vec<usize> {
        (0..self.addresses.len()).filter(|&r| r != self.rank && !answers(&self.addresses[r])).collect()
    }

    /// Runs `work` (a blocking collective call) on a helper thread and waits for it. While it
    /// waits, every [`PROBE_EVERY`] it checks the other nodes (when `probe`) and gives up past
    /// `deadline`; either way the error says `what` was being done and which node is missing.
    pub fn wait<T: Send + 'static>(
        &self,
        what: &str,
        probe: bool,
        deadline: Option<Duration>,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = send.send(work());
        });
        let start = Instant::now();
        loop {
            match receive.recv_timeout(PROBE_EVERY) {
                Ok(value) => return Ok(value),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.failure(what, "burn-collective's call panicked"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if probe && !self.lost().is_empty() {
                return Err(self.failure(what, "it waits for a node that is gone"));
            }
            if deadline.is_some_and(|d| start.elapsed() > d) {
                return Err(TrainError::Distributed(format!(
                    "{what}: no answer within {} s from the other nodes (orchestrator {}): all {} nodes must be \
                     started with the same distributed settings (distributed.join_timeout_s sets how long joining \
                     may take)",
                    start.elapsed().as_secs(),
                    self.orchestrator,
                    self.addresses.len()
                )));
            }
        }
    }

    /// The error for a failed collective call: the nodes that are gone, if any.
    pub fn failure(&self, what: &str, cause: &str) -> TrainError {
        let lost = self.lost();
        if lost.is_empty() {
            return TrainError::Distributed(format!("{what} failed: {cause}"));
        }
        let names: Vec<String> = lost.iter().map(|&r| format!("node {r} ({})", self.addresses[r])).collect();
        TrainError::Distributed(format!(
            "{what} failed: lost {}: its data service does not answer (the process died or the network \
             failed). The other nodes stop; restart every node with the same command to resume from the last \
             checkpoint",
            names.join(", ")
        ))
    }
}

/// Node 0's orchestrator: stops when dropped.
pub struct Orchestrator {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Ok(Err(e)) = thread.join()
        {
            tracing::warn!("{e}");
        }
    }
}

/// Whether something accepts connections at `address` (`HOST:PORT`).
fn answers(address: &str) -> bool {
    let Ok(mut resolved) = address.to_socket_addrs() else { return false };
    resolved.any(|a| TcpStream::connect_timeout(&a, PROBE_TIMEOUT).is_ok())
}

/// `HOST:PORT` split, with an error naming the setting's expected form.
fn split_host_port(address: &str) -> Result<(String, u16)> {
    let bad = || {
        TrainError::Input(format!(
            "distributed: `{address}` is not HOST:PORT (e.g. 10.0.0.1:29500; one per node in distributed.addresses)"
        ))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: u32, rank: u32, addresses: &[&str]) -> DistributedConfig {
        DistributedConfig {
            nodes,
            node_rank: rank,
            orchestrator: Some("127.0.0.1:29500".into()),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            ..DistributedConfig::default()
        }
    }

    #[test]
    fn addresses_default_to_the_ports_after_the_orchestrators() {
        let nodes = Nodes::of(&config(3, 1, &[])).unwrap();
        assert_eq!(nodes.addresses, ["127.0.0.1:29501", "127.0.0.1:29502", "127.0.0.1:29503"]);
        let given = Nodes::of(&config(2, 0, &["10.0.0.1:7000", "10.0.0.2:7000"])).unwrap();
        assert_eq!(given.addresses, ["10.0.0.1:7000", "10.0.0.2:7000"]);
        let bad = Nodes::of(&config(2, 0, &["10.0.0.1", "10.0.0.2:7000"])).unwrap_err().to_string();
        assert!(bad.contains("`10.0.0.1` is not HOST:PORT"), "{bad}");
    }

    #[test]
    fn a_node_that_does_not_listen_is_lost_and_named() {
        let alive = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let alive_address = alive.local_addr().unwrap().to_string();
        let mut nodes = Nodes::of(&config(3, 0, &["127.0.0.1:1", &alive_address, &dead])).unwrap();
        nodes.rank = 0;
        assert_eq!(nodes.lost(), vec![2]);
        let error = nodes.failure("all-reduce", "x").to_string();
        assert!(error.contains(&format!("lost node 2 ({dead})")), "{error}");
    }
}
