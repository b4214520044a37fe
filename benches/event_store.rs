//! Figures for the event-store example: append throughput, and failover time (an owner
//! killed or frozen, to delivery resumed on a survivor).
//!
//! Runs three example nodes in network namespaces on a real PostgreSQL (durable: fsync
//! and synchronous commit on), as the tests do. Needs root; without it, prints why and
//! does nothing.
//!
//! ```text
//! cargo bench --bench event_store
//! ```

#[path = "../tests/support/event_store.rs"]
mod es;
#[path = "../tests/support/http_client.rs"]
mod http_client;
#[path = "../tests/support/lab.rs"]
mod lab;
#[allow(dead_code)]
#[path = "../examples/event_store/placement.rs"]
mod placement;
#[path = "../tests/support/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use es::{Fixture, append, create_subscription, db, expected_owner, node_name, spread_names};
use hyper::StatusCode;
use serde_json::json;

/// Concurrent HTTP clients appending.
const CLIENTS: usize = 16;
/// Appends per client and measurement.
const APPENDS: usize = 150;
/// Failover rounds per kind.
const ROUNDS: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || postgres::bin_dir().is_none() {
        eprintln!("event_store bench: needs root and PostgreSQL (scripts/setup.sh); skipped");
        return;
    }
    throughput(false);
    throughput(true);
    failover();
}

fn start(test: &str, durable: bool, args: &[&str]) -> Fixture {
    Fixture::start_with(test, 3, args, durable).expect("root and PostgreSQL were checked")
}

/// Appends from `CLIENTS` clients, each to its own stream, round-robin over the nodes.
fn throughput(batched: bool) {
    let fx = start("bench throughput", true, &[]);
    for k in 0..3 {
        fx.spawn(k, &[]);
    }
    let per_append = if batched { 10 } else { 1 };
    fx.block_on(async {
        for k in 0..3 {
            es::wait_members(&fx, k, &[0, 1, 2].into_iter().filter(|&j| j != k).collect::<Vec<_>>()).await;
        }
        // Warm up connections and plans.
        for c in 0..CLIENTS {
            let (st, _) = append(&fx, c % 3, &format!("warm-{c}"), json!("any"), 1).await;
            assert_eq!(st, StatusCode::OK);
        }
        let started = Instant::now();
        let mut latencies = Vec::new();
        let clients = (0..CLIENTS).map(|c| {
            let fx = &fx;
            async move {
                let mut lat = Vec::with_capacity(APPENDS);
                for i in 0..APPENDS {
                    let t = Instant::now();
                    let (st, body) =
                        append(fx, (c + i) % 3, &format!("bench-{c}"), json!(i), per_append).await;
                    assert_eq!(st, StatusCode::OK, "{body}");
                    lat.push(t.elapsed());
                }
                lat
            }
        });
        for l in futures::future::join_all(clients).await {
            latencies.extend(l);
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let events = CLIENTS * APPENDS * per_append;
        println!(
            "append throughput ({CLIENTS} clients, {per_append} event(s) per append, 3 nodes, durable PostgreSQL): \
             {:.0} events/s, {:.0} appends/s; latency p50 {:.1} ms, p99 {:.1} ms",
            events as f64 / elapsed.as_secs_f64(),
            (CLIENTS * APPENDS) as f64 / elapsed.as_secs_f64(),
            ms(latencies[latencies.len() / 2]),
            ms(latencies[latencies.len() * 99 / 100]),
        );
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Kills (SIGKILL) or freezes (SIGSTOP) the owner of two subscriptions while events keep
/// coming, and measures, on the store's clock, from the signal to the first delivery by
/// the new owner.
fn failover() {
    for kind in ["kill -9 (connection closed)", "SIGSTOP (heartbeat timeout)"] {
        let mut figures = Vec::new();
        for round in 0..ROUNDS {
            let fx = start("bench failover", false, &[]);
            for k in 0..3 {
                fx.spawn(k, &[]);
            }
            let freeze = kind.starts_with("SIGSTOP");
            let got = fx.block_on(async {
                for k in 0..3 {
                    es::wait_members(
                        &fx,
                        k,
                        &[0, 1, 2]
                            .into_iter()
                            .filter(|&j| j != k)
                            .collect::<Vec<_>>(),
                    )
                    .await;
                }
                let subs = spread_names(&[0, 1, 2], 2, |_, _| true);
                for s in &subs {
                    create_subscription(&fx, 1, s).await;
                }
                es::wait_placed(&fx, &subs, &[0, 1, 2]).await;
                let victims: Vec<String> = subs
                    .iter()
                    .filter(|s| expected_owner(s, &[0, 1, 2]) == node_name(0))
                    .cloned()
                    .collect();
                let db = db(&fx).await;
                let stop = AtomicBool::new(false);
                let appender = async {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let _ = append(&fx, 1, "orders", json!("any"), 1).await;
                    }
                };
                let measure = async {
                    es::wait_delivered(&fx, &db, &victims, 20).await;
                    fx.with_node(0, |n| {
                        if freeze {
                            n.signal(libc::SIGSTOP)
                        } else {
                            n.kill9()
                        }
                    });
                    let at: i64 = db
                        .query_one(
                            "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint",
                            &[],
                        )
                        .await
                        .expect("clock")
                        .get(0);
                    let mut out = Vec::new();
                    for s in &victims {
                        let first: i64 = es::wait_for(&format!("{s} to resume"), || async {
                            let r = db
                                .query_one(
                                    "SELECT min((extract(epoch from at) * 1000000)::bigint) \
                                     FROM deliveries WHERE subscription = $1 AND node <> $2",
                                    &[s, &node_name(0)],
                                )
                                .await
                                .map_err(|e| e.to_string())?;
                            r.get::<_, Option<i64>>(0)
                                .ok_or_else(|| "not yet".to_string())
                        })
                        .await;
                        out.push((first - at) as f64 / 1000.0);
                    }
                    stop.store(true, Ordering::Relaxed);
                    out
                };
                let ((), out) = tokio::join!(appender, measure);
                out
            });
            println!("failover, {kind}, round {}: {:?} ms", round + 1, got);
            figures.extend(got);
        }
        figures.sort_by(f64::total_cmp);
        println!(
            "failover, {kind} (down_after 1s): median {:.0} ms, max {:.0} ms over {} subscriptions",
            figures[figures.len() / 2],
            figures[figures.len() - 1],
            figures.len()
        );
    }
}
