//! Cluster pub/sub throughput over one peer connection (a plain program:
//! `cargo bench --bench pubsub`).
//!
//! Two in-process nodes on 127.0.0.1 (static hosts, B seeded with A). Once each sees the
//! other, A calls `Cluster::publish` (or `Cluster::send` to B) in a loop, one call after
//! the other, for a fixed time, while a task on B reads its topic subscription. What is
//! counted is what B's subscriber receives: the rate is messages received divided by the
//! time from the first call to the last message received, or to the end of the calls if
//! that is later (so a backlog still in flight when the loop stops is counted, and the
//! time it took too).
//!
//! Messages sent but not received are accounted for as: shed by A because the peer's
//! write queue was too full (`Stats::messages_dropped`), or skipped by B's subscriber
//! because it fell behind (`TopicError::Lagged`). A connection cut during a run (a
//! `NodeDown` on either side) is reported too.
//!
//! Each run uses a fresh pair of nodes. `PUBSUB_SECS` sets the sending time (default 3),
//! `PUBSUB_RUNS` the runs per figure (default 3); a first argument filters the figures
//! by name (`publish`, `send`, `64`, `16384`).
//!
//! Prints one line per figure: median and range over the runs. MB are 10^6 bytes of
//! payload.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, TopicError};

const COOKIE: &str = "bench-cookie-0123456789";
const TOPIC: &str = "bench";

async fn start(name: &str, seed: Option<String>) -> Cluster {
    Cluster::builder()
        .name(name)
        .cluster_addr("127.0.0.1:0".parse().unwrap())
        .cookie(COOKIE)
        .topology("seed", StaticHosts::new(seed))
        .start()
        .await
        .expect("start")
}

async fn wait_members(c: &Cluster, n: usize) {
    let mut w = c.watch();
    tokio::time::timeout(Duration::from_secs(30), async {
        while w.borrow_and_update().members.len() < n {
            w.changed().await.expect("alive");
        }
    })
    .await
    .expect("the two nodes did not see each other within 30 s");
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Publish,
    Send,
}

#[derive(Default)]
struct Run {
    /// Calls that returned Ok (for publish: queued for at least one member).
    sent: u64,
    /// Messages B's subscriber received.
    received: u64,
    /// Payload bytes B's subscriber received.
    bytes: u64,
    /// From the first call to the last message received (or to the end of the calls, if
    /// that is later).
    elapsed: Duration,
    /// `messages_dropped` on A during the run.
    shed: u64,
    /// Messages B's subscriber skipped (`Lagged`).
    lagged: u64,
    /// `NodeDown`s on A and B during the run (a cut connection).
    nodedowns: u64,
}

async fn run_once(mode: Mode, size: usize, secs: Duration) -> Run {
    let a = start("a@127.0.0.1", None).await;
    let b = start("b@127.0.0.1", Some(a.local().addr.to_string())).await;
    wait_members(&a, 1).await;
    wait_members(&b, 1).await;
    let b_name = b.local().name.clone();

    let mut sub = b.topic(TOPIC);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let receiver = tokio::spawn(async move {
        let (mut n, mut bytes, mut lagged) = (0u64, 0u64, 0u64);
        let mut last = None;
        loop {
            // Once the sender has stopped, wait for the backlog until nothing came for a
            // while.
            let idle = if *stop_rx.borrow() {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                r = tokio::time::timeout(idle, sub.recv()) => match r {
                    Ok(Ok(m)) => {
                        n += 1;
                        bytes += m.payload.len() as u64;
                        last = Some(Instant::now());
                    }
                    Ok(Err(TopicError::Lagged(k))) => lagged += k,
                    Ok(Err(TopicError::Closed)) | Err(_) => break,
                },
                _ = stop_rx.changed(), if !*stop_rx.borrow() => {}
            }
        }
        (n, bytes, lagged, last)
    });

    let payload = Bytes::from(vec![0x5a; size]);
    let shed0 = a.stats().messages_dropped;
    let downs0 = a.stats().nodedowns + b.stats().nodedowns;
    let mut sent = 0u64;
    let t0 = Instant::now();
    let end = t0 + secs;
    while Instant::now() < end {
        let ok = match mode {
            Mode::Publish => matches!(a.publish(TOPIC, payload.clone()).await, Ok(n) if n > 0),
            Mode::Send => a.send(&b_name, TOPIC, payload.clone()).await.is_ok(),
        };
        if ok {
            sent += 1;
        }
    }
    let sent_until = Instant::now();
    let _ = stop_tx.send(true);
    let (received, bytes, lagged, last) = receiver.await.expect("receiver");
    let run = Run {
        sent,
        received,
        bytes,
        elapsed: last.map_or(sent_until, |l| l.max(sent_until)) - t0,
        shed: a.stats().messages_dropped - shed0,
        lagged,
        nodedowns: a.stats().nodedowns + b.stats().nodedowns - downs0,
    };
    a.shutdown().await;
    b.shutdown().await;
    run
}

fn median_range(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn human(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let secs = Duration::from_secs(env("PUBSUB_SECS", 3));
    let runs = env("PUBSUB_RUNS", 3).max(1) as usize;
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |k: &str| filter.as_deref().is_none_or(|f| k.contains(f));
    for (mode, label) in [(Mode::Publish, "publish"), (Mode::Send, "send")] {
        for size in [64usize, 16384] {
            let key = format!("{label} {size}");
            if !want(&key) {
                continue;
            }
            let rs: Vec<Run> = (0..runs)
                .map(|_| rt.block_on(run_once(mode, size, secs)))
                .collect();
            let rate = |r: &Run| r.received as f64 / r.elapsed.as_secs_f64();
            let mbps = |r: &Run| r.bytes as f64 / r.elapsed.as_secs_f64() / 1e6;
            let (m, lo, hi) = median_range(rs.iter().map(rate).collect());
            let (bm, blo, bhi) = median_range(rs.iter().map(mbps).collect());
            let list = |f: &dyn Fn(&Run) -> u64| {
                rs.iter()
                    .map(|r| f(r).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            println!(
                "pubsub {label}, {size} B payload, 1 peer on loopback, {} s: delivered median {} msg/s \
                 (min {}, max {}), {} MB/s (min {}, max {}), runs {}; per run sent {}, received {}, \
                 shed (messages_dropped) {}, lagged {}, nodedowns {}",
                secs.as_secs(),
                human(m),
                human(lo),
                human(hi),
                human(bm),
                human(blo),
                human(bhi),
                rs.len(),
                list(&|r| r.sent),
                list(&|r| r.received),
                list(&|r| r.shed),
                list(&|r| r.lagged),
                list(&|r| r.nodedowns),
            );
        }
    }
}
