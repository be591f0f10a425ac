//! Averaging across nodes over TCP, for multi-node data parallelism.
//!
//! Written here because burn-collective 0.21's multi-node path does not survive a training loop:
//! with two nodes on localhost the first global all-reduce completes and the second never does
//! (each node logs `Downloading tensor from ...` and waits forever; killing one makes the other's
//! data service panic with `Failed to receive message from websocket:
//! Axum(Error { inner: Protocol(ResetWithoutClosingHandshake) })`), whatever the global strategy
//! (ring, tree, centralized). Within one process burn-collective works and is used.
//!
//! The protocol is centralized and blocking: node 0 listens on `distributed.orchestrator`; every
//! worker of every node connects and says its rank; each step every worker sends one f32 vector
//! (its packed gradients and loss terms), the hub sums them in rank order (so the result does not
//! depend on arrival order), divides by the number of workers and sends the mean back to all.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainError};

/// A failure of the hub's transport, with what was being done.
fn net(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> TrainError {
    move |e| TrainError::Distributed(format!("{what}: {e}"))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_vec(r: &mut impl Read) -> std::io::Result<Vec<f32>> {
    let n = read_u64(r)? as usize;
    let mut bytes = vec![0; n * 4];
    r.read_exact(&mut bytes)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn write_vec(w: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    w.write_all(&(v.len() as u64).to_le_bytes())?;
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()
}

/// The hub on node 0: accepts `world` workers, then averages until they disconnect.
pub struct Hub {
    listener: TcpListener,
    world: usize,
}

impl Hub {
    pub fn bind(address: &str, world: usize) -> Result<Self> {
        let listener = TcpListener::bind(address)
            .map_err(net(format!("distributed.orchestrator = {address}: cannot listen there (node 0 hosts it)")))?;
        Ok(Self { listener, world })
    }

    /// Serves until every worker has disconnected (the end of training).
    pub fn serve(self) -> Result<()> {
        let mut peers: Vec<Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>> =
            (0..self.world).map(|_| None).collect();
        for _ in 0..self.world {
            let (stream, from) = self.listener.accept().map_err(net("accepting a worker"))?;
            stream.set_nodelay(true).ok();
            let mut reader = BufReader::new(stream.try_clone().map_err(net(from))?);
            let rank = read_u64(&mut reader).map_err(net(from))? as usize;
            if rank >= self.world || peers[rank].is_some() {
                return Err(TrainError::Distributed(format!(
                    "worker from {from} says rank {rank}: expected a new rank below {}",
                    self.world
                )));
            }
            peers[rank] = Some((reader, BufWriter::new(stream)));
        }
        let mut peers: Vec<_> = peers.into_iter().map(|p| p.expect("all ranks connected")).collect();
        loop {
            let mut sum: Vec<f64> = Vec::new();
            for (rank, (reader, _)) in peers.iter_mut().enumerate() {
                let v = match read_vec(reader) {
                    Ok(v) => v,
                    // A worker closing its connection at a step boundary: training is over.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && rank == 0 => return Ok(()),
                    Err(e) => return Err(net(format!("reading from worker {rank}"))(e)),
                };
                if sum.is_empty() {
                    sum = vec![0.0; v.len()];
                }
                if v.len() != sum.len() {
                    return Err(TrainError::Distributed(format!(
                        "worker {rank} sent {} values, worker 0 {}",
                        v.len(),
                        sum.len()
                    )));
                }
                sum.iter_mut().zip(&v).for_each(|(s, x)| *s += *x as f64);
            }
            let mean: Vec<f32> = sum.iter().map(|s| (*s / self.world as f64) as f32).collect();
            for (rank, (_, writer)) in peers.iter_mut().enumerate() {
                write_vec(writer, &mean).map_err(net(format!("writing to worker {rank}")))?;
            }
        }
    }
}

/// A worker's connection to the hub.
pub struct Link {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    /// Connects (retrying for a minute while node 0 starts) and announces `rank`.
    pub fn connect(address: &str, rank: usize) -> Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match TcpStream::connect(address) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(60) => {
                    tracing::debug!("waiting for node 0 at {address}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(net(format!("connecting to node 0 at {address}"))(e)),
            }
        };
        stream.set_nodelay(true).ok();
        let mut writer = BufWriter::new(stream.try_clone().map_err(net(address))?);
        writer.write_all(&(rank as u64).to_le_bytes()).and_then(|()| writer.flush()).map_err(net(address))?;
        Ok(Self { reader: BufReader::new(stream), writer })
    }

    /// The mean of `values` over all workers.
    pub fn all_reduce_mean(&mut self, values: &[f32]) -> Result<Vec<f32>> {
        write_vec(&mut self.writer, values).map_err(net("sending to node 0"))?;
        read_vec(&mut self.reader).map_err(net("receiving from node 0"))
    }
}
