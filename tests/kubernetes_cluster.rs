//! End to end: three in-process cluster nodes on loopback (127.0.0.1–3, one port) find
//! each other through the Kubernetes strategy against the fake API server; scaling the
//! Service down prunes a member, scaling it up again lets it back in.

#![cfg(feature = "kubernetes")]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rallypoint::membership::Config as MembershipConfig;
use rallypoint::strategies::kubernetes::{Config, Kubernetes};
use rallypoint::{Cluster, DownReason, Event, TopologyOptions, Update};
use serde_json::json;
use support::kube_api::{Kind, KubeApi};
use support::kube_objects::{Ep, endpoint_slice};

const TOKEN: &str = "e2e-token";
const NS: &str = "prod";
const DEADLINE: Duration = Duration::from_secs(20);
const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

/// A port free on all three loopback addresses (checked by binding, then released).
fn shared_port() -> u16 {
    for _ in 0..50 {
        let Ok(first) = std::net::TcpListener::bind("127.0.0.2:0") else {
            continue;
        };
        let Ok(port) = first.local_addr().map(|a| a.port()) else {
            continue;
        };
        let others: Vec<_> = ["127.0.0.1", "127.0.0.3"]
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if others.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

fn members(c: &Cluster) -> BTreeSet<String> {
    c.members().iter().map(|n| n.name.to_string()).collect()
}

async fn wait_members(c: &Cluster, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|ip| format!("app@{ip}")).collect();
    let mut w = c.watch();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if members(c) == want {
                return;
            }
            w.changed().await.expect("cluster alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} never saw {want:?}; has {:?}; topologies {:?}",
            c.local().name,
            members(c),
            c.topologies()
        )
    });
}

async fn node(ip: &str, port: u16, kubeconfig: std::path::PathBuf) -> Cluster {
    let strategy = Kubernetes::from_config(Config {
        selector: "kubernetes.io/service-name=app".into(),
        kubeconfig: Some(kubeconfig),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Config::default()
    })
    .expect("strategy config");
    Cluster::builder()
        .name(format!("app@{ip}"))
        .cluster_addr(format!("{ip}:{port}").parse().expect("addr"))
        .cookie("kubernetes-end-to-end-cookie")
        .membership(MembershipConfig {
            heartbeat_interval: Duration::from_millis(100),
            down_after: Duration::from_millis(800),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(300),
            ..MembershipConfig::default()
        })
        .topology_with(
            "k8s",
            strategy,
            TopologyOptions {
                prune_after: Duration::from_millis(300),
                ..TopologyOptions::default()
            },
        )
        .start()
        .await
        .expect("cluster starts")
}

#[tokio::test]
async fn three_nodes_form_through_endpointslices_and_scaling_down_prunes_one() {
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

    let mut nodes = Vec::new();
    for ip in IPS {
        nodes.push(node(ip, port, kubeconfig.clone()).await);
    }
    wait_members(&nodes[0], &[IPS[1], IPS[2]]).await;
    wait_members(&nodes[1], &[IPS[0], IPS[2]]).await;
    wait_members(&nodes[2], &[IPS[0], IPS[1]]).await;

    // Scale down: the third pod starts terminating, its process still up and connected.
    let mut subs = [nodes[0].subscribe(), nodes[1].subscribe()];
    api.modify(Kind::EndpointSlice, NS, "app-x1", |o| {
        o["endpoints"][2]["conditions"] =
            json!({"ready": false, "serving": true, "terminating": true});
    });
    for sub in &mut subs {
        let event = tokio::time::timeout(DEADLINE, async {
            loop {
                match sub.recv().await {
                    Some(Update::Event(e @ Event::NodeDown { .. })) => return e,
                    Some(_) => continue,
                    None => panic!("subscription ended"),
                }
            }
        })
        .await
        .expect("a nodedown in time");
        match event {
            Event::NodeDown { node, reason } => {
                assert_eq!(node.name.as_str(), "app@127.0.0.3");
                assert_eq!(reason, DownReason::Pruned);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    wait_members(&nodes[0], &[IPS[1]]).await;
    wait_members(&nodes[1], &[IPS[0]]).await;

    // The pruned node keeps dialling (its own set still lists the others) and is
    // refused with reason `pruned` until it is back in the Service.
    let mut stats = nodes[0].stats_watch();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let refused = stats
                .borrow_and_update()
                .handshake_failures
                .get("pruned")
                .copied()
                .unwrap_or(0);
            if refused >= 1 {
                return;
            }
            stats.changed().await.expect("cluster alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no pruned refusal: {:?}", nodes[0].stats()));
    assert_eq!(
        members(&nodes[0]),
        BTreeSet::from(["app@127.0.0.2".to_owned()])
    );

    // Scaled up again: it is let back in.
    api.modify(Kind::EndpointSlice, NS, "app-x1", |o| {
        o["endpoints"][2]["conditions"] =
            json!({"ready": true, "serving": true, "terminating": false});
    });
    wait_members(&nodes[0], &[IPS[1], IPS[2]]).await;
    wait_members(&nodes[1], &[IPS[0], IPS[2]]).await;
    wait_members(&nodes[2], &[IPS[0], IPS[1]]).await;

    // No longer ready (not terminating), then gone from the slice altogether: each is
    // pruned too, and not before the grace period (300 ms) has passed.
    let mut subs = [nodes[0].subscribe(), nodes[1].subscribe()];
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let changes: [(&str, Change); 2] = [
        (
            "not ready",
            Box::new(|o| {
                o["endpoints"][2]["conditions"] =
                    json!({"ready": false, "serving": false, "terminating": false});
            }),
        ),
        (
            "deleted",
            Box::new(|o| {
                if let Some(eps) = o["endpoints"].as_array_mut() {
                    eps.truncate(2);
                }
            }),
        ),
    ];
    for (what, change) in changes {
        let t0 = tokio::time::Instant::now();
        api.modify(Kind::EndpointSlice, NS, "app-x1", |o| change(o));
        for sub in &mut subs {
            let (node, reason) = tokio::time::timeout(DEADLINE, async {
                loop {
                    match sub.recv().await {
                        Some(Update::Event(Event::NodeDown { node, reason })) => {
                            return (node, reason);
                        }
                        Some(_) => continue,
                        None => panic!("subscription ended"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no nodedown once {what}"));
            assert_eq!(node.name.as_str(), "app@127.0.0.3", "{what}");
            assert_eq!(reason, DownReason::Pruned, "{what}");
            assert!(
                t0.elapsed() >= Duration::from_millis(300),
                "{what}: pruned after {:?}, before the grace period",
                t0.elapsed()
            );
        }
        if what == "not ready" {
            api.modify(Kind::EndpointSlice, NS, "app-x1", |o| {
                o["endpoints"][2]["conditions"] =
                    json!({"ready": true, "serving": true, "terminating": false});
            });
            wait_members(&nodes[0], &[IPS[1], IPS[2]]).await;
            wait_members(&nodes[1], &[IPS[0], IPS[2]]).await;
            // Skip the nodeup on the subscriptions.
            for sub in &mut subs {
                tokio::time::timeout(DEADLINE, async {
                    while !matches!(sub.recv().await, Some(Update::Event(Event::NodeUp(_)))) {}
                })
                .await
                .expect("nodeup");
            }
        }
    }

    for n in &nodes {
        n.shutdown().await;
    }
}
