//! End to end: three `rallypoint run` daemons on loopback, configured with
//! `strategy = "kubernetes"` and a kubeconfig pointing at the test API server, form a
//! cluster; scaling the Service down removes a member (`nodedown`, reason `pruned`).

#![cfg(feature = "kubernetes")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::daemon::{Daemon, Spec};
use support::kube_api::{Kind, KubeApi};
use support::kube_objects::{Ep, endpoint_slice};
use support::ports::free_addr;

const TOKEN: &str = "daemon-e2e-token";
const NS: &str = "prod";
const WITHIN: Duration = Duration::from_secs(30);
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// A port free on all three loopback addresses.
fn shared_port() -> u16 {
    for _ in 0..50 {
        let Ok(first) = std::net::TcpListener::bind((IPS[0], 0)) else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        if IPS[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on {IPS:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_cluster_through_the_kubernetes_api_and_scaling_down_prunes_one() {
    let api = KubeApi::start(TOKEN).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.kubeconfig(dir.path(), TOKEN, NS);
    let port = shared_port();
    let eps: Vec<Ep> = IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| Ep::ready(ip, &format!("app-{i}")))
        .collect();
    api.apply(endpoint_slice(NS, "app-x1", "app", Some(port), &eps));

    let spec = |ip: &str| {
        let mut s = Spec::new("app");
        s.name = format!("app@{ip}");
        s.cluster_addr = SocketAddr::new(ip.parse().unwrap(), port);
        s.http_addr = free_addr();
        s.extra_toml = "[topologies.k8s]\nstrategy = \"kubernetes\"\nselector = \"kubernetes.io/service-name=app\"\nprune_after = \"1s\"\n".to_string();
        s.env
            .push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        s
    };
    let a = Daemon::start(spec(IPS[0])).await;
    let b = Daemon::start(spec(IPS[1])).await;
    let c = Daemon::start(spec(IPS[2])).await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&["app@127.0.0.3", "app@127.0.0.4"], WITHIN)
        .await;
    wb.wait_members(&["app@127.0.0.2", "app@127.0.0.4"], WITHIN)
        .await;

    // Pruning applies to peers an authoritative topology has listed: wait until both
    // watchers have listed the third pod (it may have dialled in before that), before
    // it turns terminating (a watcher whose first list came after that would never
    // list it, and rightly never prune it).
    for d in [&a, &b] {
        d.wait_log("the k8s topology lists app@127.0.0.4", WITHIN, |l| {
            l.contains("candidate peers changed")
                && l.contains("topology=k8s")
                && l.contains("app@127.0.0.4")
        })
        .await;
    }
    // Scale down: the third pod is terminating while its process still runs.
    api.modify(Kind::EndpointSlice, NS, "app-x1", |o| {
        o["endpoints"][2]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
    });
    for w in [&mut wa, &mut wb] {
        let (node, reason) = w.wait_down("app@127.0.0.4", WITHIN).await;
        assert_eq!(node.name, "app@127.0.0.4");
        assert_eq!(reason, "pruned");
    }
    let quiet = wa.drain(Duration::from_secs(2)).await;
    assert!(quiet.is_empty(), "pruned node came back: {quiet:?}");
    drop(c);
}
