//! Gossip on one host: three cluster nodes share one gossip port (SO_REUSEPORT) and find
//! each other over loopback multicast. Needs no privileges.
//!
//! The nodes send from `127.0.0.1` (`multicast_if`), so nothing leaves the host, and use
//! a port of their own rather than the default, so that a daemon running on this host
//! is not disturbed (all three still share that one port).

use std::collections::BTreeSet;
use std::time::Duration;

use rallypoint::Cluster;
use rallypoint::strategies::gossip::{Config, Gossip};

const DEADLINE: Duration = Duration::from_secs(20);

fn port() -> u16 {
    // Spread by process id, away from the unit tests' ports (20000–39999).
    42000 + (std::process::id() % 3000) as u16
}

async fn node(name: &str, port: u16) -> Cluster {
    Cluster::builder()
        .name(format!("{name}@127.0.0.1"))
        .cluster_addr("127.0.0.1:0".parse().unwrap())
        .cookie("same-host test cookie")
        .membership(rallypoint::membership::Config {
            heartbeat_interval: Duration::from_millis(100),
            down_after: Duration::from_millis(1000),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            ..Default::default()
        })
        .topology(
            "lan",
            Gossip::new(Config {
                port,
                multicast_if: Some("127.0.0.1".into()),
                interval: Duration::from_millis(200),
                ..Config::default()
            })
            .expect("valid config"),
        )
        .start()
        .await
        .expect("cluster starts")
}

fn names(c: &Cluster) -> BTreeSet<String> {
    c.members().iter().map(|n| n.name.to_string()).collect()
}

async fn wait_members(c: &Cluster, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| format!("{s}@127.0.0.1")).collect();
    let mut w = c.watch();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if names(c) == want {
                return;
            }
            w.changed().await.expect("cluster alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} never saw {want:?}, has {:?}", c.local().name, names(c)));
}

#[tokio::test]
async fn three_nodes_on_one_host_share_the_gossip_port() {
    let port = port();
    let a = node("a", port).await;
    let b = node("b", port).await;
    let c = node("c", port).await;
    wait_members(&a, &["b", "c"]).await;
    wait_members(&b, &["a", "c"]).await;
    wait_members(&c, &["a", "b"]).await;
    // Membership may be complete (peers tell each other) before gossip heard everyone.
    for n in [&a, &b, &c] {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let (_, st) = n.topologies().into_iter().next().expect("one topology");
                assert_eq!(st.strategy, "gossip");
                assert!(st.last_error.is_none(), "{:?}", st.last_error);
                if st.peers.len() == 2 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("gossip hears both others");
    }
    // One leaves; the two others go on sharing the port.
    b.shutdown().await;
    wait_members(&a, &["c"]).await;
    wait_members(&c, &["a"]).await;
    a.shutdown().await;
    c.shutdown().await;
}
