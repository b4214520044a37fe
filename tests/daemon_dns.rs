//! End to end: three `rallypoint run` daemons on loopback with `strategy = "dns"`
//! against a real DNS server form a cluster, and a record removed from DNS removes its
//! member after the grace period (`nodedown`, reason `pruned`).

mod support;

#[path = "support/dns_server.rs"]
mod dns_server;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dns_server::DnsServer;
use support::daemon::{Daemon, Spec};
use support::ports::{free_addr, free_port};

const WITHIN: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_cluster_through_dns_and_a_removed_record_prunes_its_member() {
    let server = DnsServer::start().await;
    let name = "app.rp.test.";
    server
        .set_ips(
            name,
            &[ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")],
            1,
        )
        .await;
    // One cluster port for all three, each on its own loopback address, as pods are.
    let port = free_port();
    let spec = |n: u8| {
        let mut s = Spec::new("app");
        s.name = format!("app@127.0.0.{n}");
        s.cluster_addr = SocketAddr::new(ip(&format!("127.0.0.{n}")), port);
        s.http_addr = free_addr();
        s.extra_toml = format!(
            "[topologies.dns]\nstrategy = \"dns\"\nquery = \"{name}\"\nnameservers = [\"{}\"]\ninterval = \"500ms\"\nprune_after = \"1s\"\n",
            server.addr()
        );
        s
    };
    let a = Daemon::start(spec(2)).await;
    let b = Daemon::start(spec(3)).await;
    let c = Daemon::start(spec(4)).await;
    let mut wa = a.watch().await;
    let mut wb = b.watch().await;
    wa.wait_members(&["app@127.0.0.3", "app@127.0.0.4"], WITHIN)
        .await;
    wb.wait_members(&["app@127.0.0.2", "app@127.0.0.4"], WITHIN)
        .await;

    // Pruning applies to peers an authoritative topology has listed: wait until both
    // have seen c in DNS (c may have dialled in before that).
    for d in [&a, &b] {
        d.wait_log("the dns topology lists app@127.0.0.4", WITHIN, |l| {
            l.contains("candidate peers changed")
                && l.contains("topology=dns")
                && l.contains("app@127.0.0.4")
        })
        .await;
    }
    // c's record goes; c itself keeps running and keeps dialling.
    server
        .set_ips(name, &[ip("127.0.0.2"), ip("127.0.0.3")], 1)
        .await;
    for w in [&mut wa, &mut wb] {
        let (node, reason) = w.wait_down("app@127.0.0.4", WITHIN).await;
        assert_eq!(node.name, "app@127.0.0.4");
        assert_eq!(reason, "pruned");
    }
    // It stays out while DNS does not list it.
    let quiet = wa.drain(Duration::from_secs(2)).await;
    assert!(quiet.is_empty(), "pruned node came back: {quiet:?}");
    drop(c);
}
