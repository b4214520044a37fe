//! Kubernetes discovery latency (a plain program:
//! `cargo bench --bench kubernetes_latency`), against the fake API server of
//! `tests/support/kube_api.rs` on loopback:
//!
//! - from an EndpointSlice change at the API (an endpoint added or removed) to the
//!   strategy's updated candidate set;
//! - from that change to `NodeUp` on a running node, when the new endpoint is another
//!   running node (127.0.0.1 learns of 127.0.0.2);
//! - from a pruned pod listed ready again (after it was terminating, refused while it
//!   went on dialling) to `NodeUp` on both sides.
//!
//! libcluster's Kubernetes strategy polls every 5 s (`polling_interval`), so its
//! latency is up to 5 s, 2.5 s on average. Prints one line per figure: median, p99 and
//! range over the runs.

#[path = "../tests/support/kube_api.rs"]
mod kube_api;
#[path = "../tests/support/kube_objects.rs"]
mod kube_objects;

use std::time::{Duration, Instant};

use kube_api::{Kind, KubeApi};
use kube_objects::{Ep, endpoint_slice};
use rallypoint::node::Node;
use rallypoint::strategies::kubernetes::{Config, Kubernetes};
use rallypoint::strategies::{Context, Strategy};
use rallypoint::{Cluster, Cookie, Event, TopologyOptions, Update};
use serde_json::json;

const TOKEN: &str = "bench";
const NS: &str = "prod";

fn summary(name: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = xs[(xs.len() * 99 / 100).min(xs.len() - 1)];
    println!(
        "{name}: median {:.2} ms, p99 {:.2} ms (min {:.2}, max {:.2}, runs {})",
        ms(xs[xs.len() / 2]),
        ms(p99),
        ms(xs[0]),
        ms(xs[xs.len() - 1]),
        xs.len()
    );
}

fn config(kubeconfig: std::path::PathBuf, selector: &str) -> Config {
    Config {
        selector: selector.into(),
        kubeconfig: Some(kubeconfig),
        ..Config::default()
    }
}

/// API change → candidate set, `runs` times (one endpoint added per run).
async fn candidate_set(runs: usize) -> Vec<Duration> {
    let api = KubeApi::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), TOKEN, NS);
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(4000),
        &[Ep::ready("10.1.0.1", "p")],
    ));
    let me = Node {
        name: "app@10.255.0.1".parse().expect("name"),
        addr: "10.255.0.1:45893".parse().expect("addr"),
        incarnation: 1,
    };
    let (ctx, mut handle) = Context::new(
        "k8s",
        "kubernetes",
        me,
        Cookie::new("kubernetes-bench-cookie"),
    );
    let strategy = Kubernetes::from_config(config(kubeconfig, "kubernetes.io/service-name=app"))
        .expect("config");
    let task = tokio::spawn(strategy.run(ctx));
    while !handle.status.borrow_and_update().reported {
        handle.status.changed().await.expect("strategy alive");
    }
    let mut took = Vec::with_capacity(runs);
    for i in 0..runs {
        // Alternately one endpoint added (set of 2) and removed (set of 1).
        let want = if i % 2 == 0 { 2 } else { 1 };
        let t0 = Instant::now();
        api.modify(Kind::EndpointSlice, NS, "app-1", |o| {
            let ep = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}});
            o["endpoints"] = if want == 2 {
                json!([ep("10.1.0.1"), ep("10.1.0.2")])
            } else {
                json!([ep("10.1.0.1")])
            };
        });
        while handle.status.borrow_and_update().peers.len() != want {
            handle.status.changed().await.expect("strategy alive");
        }
        took.push(t0.elapsed());
    }
    handle.shutdown.cancel();
    let _ = task.await;
    took
}

/// A node with the Kubernetes strategy; `selector` picks what it dials.
async fn node(ip: &str, port: u16, kubeconfig: std::path::PathBuf, selector: &str) -> Cluster {
    Cluster::builder()
        .name(format!("app@{ip}"))
        .cluster_addr(format!("{ip}:{port}").parse().expect("addr"))
        .cookie("kubernetes-bench-cookie")
        .topology_with(
            "k8s",
            Kubernetes::from_config(config(kubeconfig, selector)).expect("config"),
            TopologyOptions {
                prune_after: Duration::from_millis(50),
                ..TopologyOptions::default()
            },
        )
        .start()
        .await
        .expect("start")
}

/// The API stand-in, the directory holding its kubeconfig (kept while it lives), that
/// kubeconfig, and a cluster port free on 127.0.0.2 for the nodes.
async fn api_and_port() -> (KubeApi, tempfile::TempDir, std::path::PathBuf, u16) {
    let api = KubeApi::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), TOKEN, NS);
    let probe = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    (api, dir, kubeconfig, port)
}

/// API change → `NodeUp`, `runs` times: node b is added to a's Service, a dials b; then b
/// is removed (pruned) before the next run. b's own strategy watches another Service, so
/// only a's discovery makes the connection.
async fn nodeup(runs: usize) -> Vec<Duration> {
    let (api, _dir, kubeconfig, port) = api_and_port().await;
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(port),
        &[Ep::ready("127.0.0.1", "a")],
    ));
    api.apply(endpoint_slice(NS, "none-1", "none", Some(port), &[]));
    let a = node(
        "127.0.0.1",
        port,
        kubeconfig.clone(),
        "kubernetes.io/service-name=app",
    )
    .await;
    let b = node(
        "127.0.0.2",
        port,
        kubeconfig,
        "kubernetes.io/service-name=none",
    )
    .await;
    let mut events = a.subscribe();
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        api.modify(Kind::EndpointSlice, NS, "app-1", |o| {
            o["endpoints"] = json!([
                {"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["127.0.0.2"], "conditions": {"ready": true}}
            ]);
        });
        let bn = b.local().name.clone();
        next_event(
            &mut events,
            |e| matches!(e, Event::NodeUp(n) if n.name == bn),
        )
        .await;
        took.push(t0.elapsed());
        api.modify(Kind::EndpointSlice, NS, "app-1", |o| {
            o["endpoints"] = json!([{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]);
        });
        let bn = b.local().name.clone();
        next_event(
            &mut events,
            |e| matches!(e, Event::NodeDown { node, .. } if node.name == bn),
        )
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("nodeup samples: {took:?}");
    }
    took
}

/// Waits for the next event on `events` that `pick` selects.
async fn next_event(events: &mut rallypoint::Subscription, pick: impl Fn(&Event) -> bool) {
    loop {
        match events.recv().await.expect("events") {
            Update::Event(e) if pick(&e) => return,
            _ => continue,
        }
    }
}

/// A pruned pod listed ready again → `NodeUp` on both sides, `runs` times. Nodes a and b
/// are both in Service app. Each run: b's endpoint turns terminating, a prunes b, b keeps
/// dialling a and is refused (`pruned`) twice, so its backoff has grown; then b is ready
/// again, and the time to `NodeUp` on a (of b) and on b (of a), the later of the two, is
/// the figure.
async fn rejoin(runs: usize) -> Vec<Duration> {
    let (api, _dir, kubeconfig, port) = api_and_port().await;
    let ep = |ip: &str, ready: bool| {
        json!({"addresses": [ip], "conditions":
            {"ready": ready, "serving": true, "terminating": !ready}})
    };
    api.apply(endpoint_slice(
        NS,
        "app-1",
        "app",
        Some(port),
        &[Ep::ready("127.0.0.1", "a"), Ep::ready("127.0.0.2", "b")],
    ));
    let selector = "kubernetes.io/service-name=app";
    let a = node("127.0.0.1", port, kubeconfig.clone(), selector).await;
    let b = node("127.0.0.2", port, kubeconfig, selector).await;
    let (an, bn) = (a.local().name.clone(), b.local().name.clone());
    let mut a_events = a.subscribe();
    let mut b_events = b.subscribe();
    let up = |name: &rallypoint::node::NodeName| {
        let name = name.clone();
        move |e: &Event| matches!(e, Event::NodeUp(n) if n.name == name)
    };
    let down = |name: &rallypoint::node::NodeName| {
        let name = name.clone();
        move |e: &Event| matches!(e, Event::NodeDown { node, .. } if node.name == name)
    };
    next_event(&mut a_events, up(&bn)).await;
    next_event(&mut b_events, up(&an)).await;
    let mut stats = a.stats_watch();
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        api.modify(Kind::EndpointSlice, NS, "app-1", |o| {
            o["endpoints"] = json!([ep("127.0.0.1", true), ep("127.0.0.2", false)]);
        });
        next_event(&mut a_events, down(&bn)).await;
        next_event(&mut b_events, down(&an)).await;
        let refused = |s: &rallypoint::membership::Stats| {
            s.handshake_failures.get("pruned").copied().unwrap_or(0)
        };
        let before = refused(&stats.borrow_and_update());
        while refused(&stats.borrow_and_update()) < before + 2 {
            stats.changed().await.expect("stats");
        }
        let t0 = Instant::now();
        api.modify(Kind::EndpointSlice, NS, "app-1", |o| {
            o["endpoints"] = json!([ep("127.0.0.1", true), ep("127.0.0.2", true)]);
        });
        next_event(&mut a_events, up(&bn)).await;
        next_event(&mut b_events, up(&an)).await;
        took.push(t0.elapsed());
    }
    a.shutdown().await;
    b.shutdown().await;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("rejoin samples: {took:?}");
    }
    took
}

#[tokio::main]
async fn main() {
    summary(
        "EndpointSlice change -> candidate set",
        candidate_set(1000).await,
    );
    summary("EndpointSlice change -> NodeUp", nodeup(50).await);
    summary(
        "pruned pod listed ready again -> NodeUp on both sides",
        rejoin(20).await,
    );
    println!("(libcluster's Kubernetes strategy: polls every 5 s, so up to 5000 ms)");
}
