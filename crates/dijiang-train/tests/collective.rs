//! burn-collective's multi-node all-reduce, reduced to its minimum: 2 and 3 processes on loopback,
//! each one device, a few consecutive all-reduces. burn-collective 0.21 as released stalls on the
//! second (its sync barrier never resets: vendor/README.md); the vendored copy must pass this.
//!
//! The test spawns this same test binary once per node, with `DIJIANG_COLLECTIVE_NODE` set, running
//! only `node_process`.

use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};
use burn_communication::Address;
use dijiang_model::cpu::Cpu;

type B = Cpu;

const ROUNDS: usize = 4;
const LEN: usize = 1000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Node `rank`'s contribution in `round`: distinct per node and round, exact in f32.
fn contribution(rank: usize, round: usize) -> Vec<f32> {
    (0..LEN).map(|i| ((rank + 1) * (round + 1) + i % 7) as f32).collect()
}

/// One node: registers (node 0 also hosts the orchestrator), all-reduces ROUNDS times, checks.
#[test]
fn node_process() {
    let Ok(spec) = std::env::var("DIJIANG_COLLECTIVE_NODE") else { return };
    let parts: Vec<&str> = spec.split(',').collect();
    let (rank, nodes, orchestrator_port, data_ports, strategy) =
        (parts[0].parse::<usize>().unwrap(), parts[1].parse::<usize>().unwrap(), parts[2], parts[3], parts[4]);
    let orchestrator_port: u16 = orchestrator_port.parse().unwrap();
    // Each node's own free port: `first + rank` could land on a port another test holds.
    let data_ports: Vec<u16> = data_ports.split(':').map(|p| p.parse().unwrap()).collect();
    let data_port = data_ports[rank];
    let _orchestrator = (rank == 0).then(|| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            runtime
                .block_on(burn_collective::serve_global_orchestrator(
                    "127.0.0.1",
                    orchestrator_port,
                    std::future::pending(),
                ))
                .unwrap();
        })
    });
    let strategy = match strategy {
        "ring" => AllReduceStrategy::Ring,
        "tree" => AllReduceStrategy::Tree(2),
        _ => AllReduceStrategy::Centralized,
    };
    let address = |port: u16| Address::from_str(&format!("ws://127.0.0.1:{port}")).unwrap();
    let config = CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(nodes as u32)
        .with_global_address(address(orchestrator_port))
        .with_node_address(address(data_port))
        .with_data_service_port(data_port)
        .with_global_all_reduce_strategy(strategy);
    let device = Default::default();
    let peer = PeerId::from(rank);
    burn_collective::register::<B>(peer, device, config).expect("register");
    for round in 0..ROUNDS {
        let mine = Tensor::<B, 1>::from_data(TensorData::new(contribution(rank, round), [LEN]), &device);
        let reduced = burn_collective::all_reduce::<B>(peer, mine.into_primitive().tensor(), ReduceOperation::Sum)
            .expect("all-reduce");
        let got = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced)).into_data().to_vec::<f32>().unwrap();
        let want: Vec<f32> = (0..LEN).map(|i| (0..nodes).map(|r| contribution(r, round)[i]).sum()).collect();
        assert_eq!(got, want, "node {rank}, all-reduce {round}");
        println!("node {rank}: all-reduce {round} ok");
    }
    burn_collective::finish_collective::<B>(peer).expect("finish");
    // Node 0 keeps the orchestrator up until the others have left (their data services close).
    if rank == 0 {
        let start = Instant::now();
        let open = |r: usize| std::net::TcpStream::connect(("127.0.0.1", data_ports[r])).is_ok();
        while (1..nodes).any(open) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `nodes` processes, each running `node_process`; all must finish (within a minute) and agree.
fn run_nodes(nodes: usize, strategy: &str) {
    let orchestrator = free_port();
    let data_ports = (0..nodes).map(|_| free_port().to_string()).collect::<Vec<_>>().join(":");
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("dijiang-collective-{}-{nodes}-{strategy}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let logs: Vec<_> = (0..nodes).map(|rank| dir.join(format!("node-{rank}.log"))).collect();
    let mut children: Vec<_> = (0..nodes)
        .map(|rank| {
            let log = std::fs::File::create(&logs[rank]).unwrap();
            Command::new(&exe)
                .args(["--exact", "node_process", "--nocapture", "--test-threads=1"])
                .env("DIJIANG_COLLECTIVE_NODE", format!("{rank},{nodes},{orchestrator},{data_ports},{strategy}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    let read =
        || logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect::<Vec<_>>().join("\n----\n");
    let start = Instant::now();
    let mut statuses = vec![None; nodes];
    while statuses.iter().any(Option::is_none) {
        for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
            if status.is_none() {
                *status = child.try_wait().unwrap();
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            children.iter_mut().for_each(|c| drop(c.kill()));
            panic!("{nodes} nodes ({strategy}) stalled:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (rank, status) in statuses.into_iter().enumerate() {
        let text = std::fs::read_to_string(&logs[rank]).unwrap();
        assert!(status.unwrap().success(), "node {rank}: {text}");
        assert!(text.contains(&format!("node {rank}: all-reduce {} ok", ROUNDS - 1)), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_nodes_all_reduce_repeatedly() {
    run_nodes(2, "ring");
    run_nodes(2, "centralized");
}

#[test]
fn three_nodes_all_reduce_repeatedly() {
    run_nodes(3, "ring");
    run_nodes(3, "tree");
}
