//! Membership benchmarks (a plain program: `cargo bench --bench membership`).
//!
//! - formation time of N = 3, 10, 100 in-process nodes on loopback, each knowing one seed;
//! - time from a crashed peer (its sockets reset, as after `kill -9`) to `NodeDown`
//!   (`connection_closed`) on every other node;
//! - time from a frozen peer (its process stops, sockets stay open) to `NodeDown`
//!   (`heartbeat_timeout`) on every other node, at the default timing;
//! - the simulator: convergence of 1,000 nodes, in virtual time and in real time.
//!
//! Prints one line per figure: median and range over the runs.

use std::time::{Duration, Instant};

use rallypoint::membership::Config;
use rallypoint::membership::core::TopologyInfo;
use rallypoint::membership::sim::{Sim, SimConfig};
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Event, Update};

fn summary(name: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: median {:.1} ms (min {:.1}, max {:.1}, runs {})",
        ms(xs[xs.len() / 2]),
        ms(xs[0]),
        ms(xs[xs.len() - 1]),
        xs.len()
    );
}

async fn start(name: String, seed: Option<String>) -> Cluster {
    Cluster::builder()
        .name(name)
        .cluster_addr("127.0.0.1:0".parse().unwrap())
        .cookie("membership-bench-cookie")
        .topology("seed", StaticHosts::new(seed))
        .start()
        .await
        .expect("start")
}

async fn formation(n: usize) -> Duration {
    let t0 = Instant::now();
    let seed = start("n0@127.0.0.1".into(), None).await;
    let seed_addr = seed.local().addr.to_string();
    let mut nodes = vec![seed];
    for i in 1..n {
        nodes.push(start(format!("n{i}@127.0.0.1"), Some(seed_addr.clone())).await);
    }
    for c in &nodes {
        let mut w = c.watch();
        while w.borrow_and_update().members.len() < n - 1 {
            w.changed().await.expect("alive");
        }
    }
    let took = t0.elapsed();
    for c in &nodes {
        c.shutdown().await;
    }
    took
}

/// A node on its own thread and runtime, so it can be frozen (the thread blocks) or
/// crashed (the runtime is dropped, closing its sockets).
struct Isolated {
    freeze: Option<std::sync::mpsc::Sender<()>>,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Isolated {
    fn start(name: String, seed: String) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<()>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c = start(name, Some(seed)).await;
                let _ = ready_tx.send(());
                let frozen = tokio::select! {
                    _ = stop_rx => false,
                    _ = tokio::task::spawn_blocking(move || freeze_rx.recv()) => true,
                };
                if frozen {
                    // Block the runtime's only thread: no task runs, sockets stay open.
                    std::thread::sleep(Duration::from_secs(60));
                }
                drop(c);
            });
        });
        ready_rx.recv().unwrap();
        Isolated {
            freeze: Some(freeze_tx),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

async fn wait_down(
    subs: &mut [rallypoint::Subscription],
    name: &str,
    want: rallypoint::DownReason,
) {
    for s in subs.iter_mut() {
        loop {
            match s.recv().await {
                Some(Update::Event(Event::NodeDown { node, reason }))
                    if node.name.as_str() == name =>
                {
                    assert_eq!(reason, want, "{name} went down for the expected reason");
                    break;
                }
                Some(_) => continue,
                None => panic!("closed"),
            }
        }
    }
}

async fn detection(frozen: bool) -> Duration {
    let seed = start("s0@127.0.0.1".into(), None).await;
    let seed_addr = seed.local().addr.to_string();
    let other = start("s1@127.0.0.1".into(), Some(seed_addr.clone())).await;
    let mut victim = Isolated::start("victim@127.0.0.1".into(), seed_addr);
    for c in [&seed, &other] {
        let mut w = c.watch();
        while w.borrow_and_update().members.len() < 2 {
            w.changed().await.unwrap();
        }
    }
    let mut subs = vec![seed.subscribe(), other.subscribe()];
    let t0 = Instant::now();
    if frozen {
        let _ = victim.freeze.take().unwrap().send(());
    } else {
        let _ = victim.stop.take().unwrap().send(true);
    }
    let want = if frozen {
        rallypoint::DownReason::HeartbeatTimeout
    } else {
        rallypoint::DownReason::ConnectionClosed
    };
    wait_down(&mut subs, "victim@127.0.0.1", want).await;
    let took = t0.elapsed();
    seed.shutdown().await;
    other.shutdown().await;
    if !frozen {
        // Let the victim's runtime finish its blocking freeze-waiter, then join it.
        drop(victim.freeze.take());
        let _ = victim.thread.take().unwrap().join();
    }
    // A frozen victim's thread is left to finish its sleep on its own.
    took
}

fn simulator(n: usize) -> (Duration, Duration, u64) {
    let mut sim = Sim::new(SimConfig {
        membership: Config {
            heartbeat_interval: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            ..Config::default()
        },
        ..SimConfig::default()
    });
    let topo = vec![TopologyInfo {
        authoritative: false,
        prune_after: Duration::from_secs(30),
    }];
    for _ in 0..n {
        sim.add_node("c", topo.clone());
    }
    for i in 1..n {
        sim.set_candidates(i, 0, &[0]);
    }
    let t0 = Instant::now();
    for i in 0..n {
        sim.start(i);
    }
    let all: Vec<usize> = (0..n).collect();
    let virt = sim
        .run_until(Duration::from_secs(60), Duration::from_millis(5), |s| {
            s.is_full_mesh(&all)
        })
        .expect("converges");
    (virt, t0.elapsed(), sim.processed())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |k: &str| filter.as_deref().is_none_or(|f| k.contains(f));
    if want("formation") {
        for (n, runs) in [(3, 10), (10, 10), (100, 3)] {
            let xs = (0..runs).map(|_| rt.block_on(formation(n))).collect();
            summary(&format!("formation, {n} nodes on loopback"), xs);
        }
    }
    if want("kill") {
        let xs = (0..5).map(|_| rt.block_on(detection(false))).collect();
        summary("crash (sockets reset) to nodedown on all peers", xs);
    }
    if want("silent") {
        let xs = (0..3).map(|_| rt.block_on(detection(true))).collect();
        summary(
            "frozen peer to nodedown (heartbeat_timeout, down_after 3 s) on all peers",
            xs,
        );
    }
    if want("sim") {
        let (virt, real, events) = simulator(1000);
        println!(
            "simulator, 1,000 nodes: full mesh after {:.0} ms virtual time; {:.1} s real time, {events} events",
            virt.as_secs_f64() * 1000.0,
            real.as_secs_f64()
        );
    }
}
