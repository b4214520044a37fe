//! Gossip figures across network namespaces (needs root; otherwise it says so and stops):
//!
//! - formation: five hosts start a gossip-only cluster node each at once; the time until
//!   every node has the four others as members;
//! - healing: one host's link is cut until the others see it down, then restored; the
//!   time from the restore until the mesh is full again (this one waits for heartbeats);
//! - heartbeat traffic: bytes per node per second, from the nodes' own counters.
//!
//! At the default interval (1 s) and at 200 ms. Run with
//! `cargo bench --bench gossip_formation` (as root). `ROUNDS=n` sets rounds per figure.

#[path = "../tests/support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netns::Lab;
use rallypoint::Cluster;
use rallypoint::strategies::gossip::{Config, Gossip};

const N: usize = 5;

enum Cmd {
    Stop,
}

struct Node {
    /// Member counts as they change, with when.
    members: mpsc::Receiver<(usize, Instant)>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    /// (bytes sent, seconds running) when stopped.
    result: std::thread::JoinHandle<(u64, f64)>,
}

fn start(lab: &Lab, i: usize, interval: Duration) -> Node {
    let ip = lab.host(i).ip;
    let (tx, members) = mpsc::channel();
    let (cmds, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let result = lab.block_on_in(i, move || async move {
        let cluster = Cluster::builder()
            .name(format!("n{i}@{ip}"))
            .cluster_addr(SocketAddr::from((ip, rallypoint::DEFAULT_CLUSTER_PORT)))
            .cookie("gossip-bench-cookie")
            .topology(
                "lan",
                Gossip::new(Config {
                    interval,
                    ..Config::default()
                })
                .expect("valid config"),
            )
            .start()
            .await
            .expect("cluster starts");
        let started = Instant::now();
        let mut w = cluster.watch();
        loop {
            let n = w.borrow_and_update().nodes().len();
            let _ = tx.send((n, Instant::now()));
            tokio::select! {
                r = w.changed() => if r.is_err() { break },
                _ = rx.recv() => break,
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let bytes = cluster
            .topologies()
            .into_iter()
            .next()
            .and_then(|(_, st)| st.counters.get("gossip_sent_bytes").copied())
            .unwrap_or(0);
        cluster.shutdown().await;
        (bytes, secs)
    });
    Node {
        members,
        cmds,
        result,
    }
}

/// Waits until every node has `want(i)` members; returns when the last one got there.
fn until(nodes: &[Node], want: impl Fn(usize) -> usize) -> Instant {
    let mut last = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        loop {
            let (count, at) = n
                .members
                .recv_timeout(Duration::from_secs(60))
                .expect("membership changes within 60 s");
            if count == want(i) {
                last = last.max(at);
                break;
            }
        }
    }
    last
}

fn drain(nodes: &[Node]) {
    for n in nodes {
        while n.members.try_recv().is_ok() {}
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.0} ms, min {:.0} ms, max {:.0} ms ({} rounds)",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("gossip_formation: skipped, needs root to create network namespaces");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!("gossip, {N} hosts in network namespaces on one bridge, membership defaults");
    for interval in [Duration::from_secs(1), Duration::from_millis(200)] {
        let mut formation = Vec::new();
        let mut healing = Vec::new();
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let lab = Lab::new(N).expect("lab");
            let t0 = Instant::now();
            let nodes: Vec<Node> = (0..N).map(|i| start(&lab, i, interval)).collect();
            formation.push(until(&nodes, |_| N - 1) - t0);
            drain(&nodes);
            lab.cut(N - 1).expect("cut");
            until(&nodes, |i| if i == N - 1 { 0 } else { N - 2 });
            drain(&nodes);
            let t1 = Instant::now();
            lab.heal(N - 1).expect("heal");
            healing.push(until(&nodes, |_| N - 1) - t1);
            for n in nodes {
                let _ = n.cmds.send(Cmd::Stop);
                let (bytes, secs) = n.result.join().expect("node thread");
                rates.push(bytes as f64 / secs);
            }
        }
        let rate = rates.iter().sum::<f64>() / rates.len() as f64;
        println!("interval {interval:?}:");
        println!("  formation (all {N} start at once): {}", stats(formation));
        println!("  healing after a cut link:        {}", stats(healing));
        println!("  heartbeat traffic: {rate:.0} bytes per node per second (UDP payload)");
    }
}
