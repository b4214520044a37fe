//! The DNS strategy against a real DNS server on loopback (tests/support/dns_server.rs):
//! an authoritative server whose zone changes while the strategy polls it, behind a front
//! that can go silent or answer SERVFAIL, REFUSED, garbage, cut or truncated messages.

#![cfg(feature = "dns")]

#[path = "support/dns_server.rs"]
mod dns_server;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dns_server::{DnsServer, Mode};
use rallypoint::cookie::Cookie;
use rallypoint::membership;
use rallypoint::strategies::dns::{Dns, Query};
use rallypoint::strategies::{Context, Strategy, TopologyHandle, TopologyStatus};
use rallypoint::{Cluster, DownReason, Event, Node, TopologyOptions, Update};
use tokio::task::JoinHandle;

const PORT: u16 = 45893;
const DEADLINE: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A strategy task for `dns`, run as node `app@127.0.0.1` on the cluster port 45893.
struct Running {
    handle: TopologyHandle,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn start(dns: Dns) -> Self {
        let me = Node {
            name: "app@127.0.0.1".parse().unwrap(),
            addr: SocketAddr::new(ip("127.0.0.1"), PORT),
            incarnation: 1,
        };
        let (ctx, handle) = Context::new("dns", "dns", me, Cookie::new("dns-strategy-test-cookie"));
        Running {
            handle,
            task: Some(tokio::spawn(dns.run(ctx))),
        }
    }

    /// Waits for a status that satisfies `f`, at most [`DEADLINE`].
    async fn wait(&mut self, what: &str, f: impl Fn(&TopologyStatus) -> bool) -> TopologyStatus {
        let rx = &mut self.handle.status;
        let r = tokio::time::timeout(DEADLINE, async {
            loop {
                {
                    let st = rx.borrow_and_update();
                    if f(&st) {
                        return st.clone();
                    }
                }
                rx.changed().await.expect("strategy alive");
            }
        })
        .await;
        match r {
            Ok(st) => st,
            Err(_) => panic!(
                "timed out waiting for {what}; status: {:?}",
                *self.handle.status.borrow()
            ),
        }
    }

    /// Waits until the set is exactly these `name=addr` peers (and nothing is failing,
    /// when `healthy`).
    async fn wait_peers(&mut self, want: &[&str], healthy: bool) -> TopologyStatus {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.wait(&format!("peers {want:?}"), |st| {
            st.reported && peers(st) == want && (!healthy || st.last_error.is_none())
        })
        .await
    }

    async fn stop(mut self) {
        self.handle.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(DEADLINE, t)
                .await
                .expect("strategy stops on shutdown")
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The peers as `name=addr`, sorted.
fn peers(st: &TopologyStatus) -> Vec<String> {
    let mut v: Vec<String> = st
        .peers
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{n}={}", p.addr),
            None => format!("?={}", p.addr),
        })
        .collect();
    v.sort();
    v
}

/// A strategy asking `server` only, polling every 200 ms, waiting 300 ms per query.
fn dns<Q: Into<Query>>(server: &DnsServer, queries: impl IntoIterator<Item = Q>) -> Dns {
    Dns::new(queries)
        .nameservers([server.addr()])
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn records_added_become_candidates_and_removed_ones_leave() {
    let server = DnsServer::start().await;
    let mut s = Running::start(dns(&server, ["nodes.rp.test."]));

    // The name does not exist yet: an empty answer, not a failure.
    let st = s.wait_peers(&[], true).await;
    assert!(st.counters["empty_answers"] >= 1);

    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.2"), ip("127.0.0.3")], 60)
        .await;
    s.wait_peers(
        &[
            "app@127.0.0.2=127.0.0.2:45893",
            "app@127.0.0.3=127.0.0.3:45893",
        ],
        true,
    )
    .await;

    // One more, with this node's own address among them: this node is left out.
    server
        .set_ips(
            "nodes.rp.test.",
            &[
                ip("127.0.0.1"),
                ip("127.0.0.2"),
                ip("127.0.0.3"),
                ip("127.0.0.4"),
            ],
            60,
        )
        .await;
    s.wait_peers(
        &[
            "app@127.0.0.2=127.0.0.2:45893",
            "app@127.0.0.3=127.0.0.3:45893",
            "app@127.0.0.4=127.0.0.4:45893",
        ],
        true,
    )
    .await;

    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.2"), ip("127.0.0.4")], 60)
        .await;
    s.wait_peers(
        &[
            "app@127.0.0.2=127.0.0.2:45893",
            "app@127.0.0.4=127.0.0.4:45893",
        ],
        true,
    )
    .await;

    // The name is gone (NXDOMAIN): a real empty answer.
    server.remove("nodes.rp.test.").await;
    let st = s.wait_peers(&[], true).await;
    assert_eq!(st.errors_total, 0, "no failure at any point");
    s.stop().await;
}

#[tokio::test]
async fn a_and_aaaa_together() {
    let server = DnsServer::start().await;
    server
        .set_ips(
            "dual.rp.test.",
            &[ip("127.0.0.2"), ip("fd00:0:0:0::2"), ip("fd00::3")],
            60,
        )
        .await;
    // Only AAAA under this one: its A query gets "no data", an empty answer.
    server.set_ips("six.rp.test.", &[ip("fd00::6")], 60).await;
    let mut s = Running::start(dns(&server, ["dual.rp.test.", "six.rp.test."]));
    s.wait_peers(
        &[
            "app@127.0.0.2=127.0.0.2:45893",
            "app@fd00::2=[fd00::2]:45893",
            "app@fd00::3=[fd00::3]:45893",
            "app@fd00::6=[fd00::6]:45893",
        ],
        true,
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn srv_targets_with_their_ports() {
    let server = DnsServer::start().await;
    let service = "_cluster._tcp.store.rp.test.";
    server
        .set_srv(
            service,
            &[
                ("store-0.store.rp.test.", 7000),
                ("store-1.store.rp.test.", 7001),
            ],
            60,
        )
        .await;
    server
        .set_ips("store-0.store.rp.test.", &[ip("127.0.0.2")], 60)
        .await;
    server
        .set_ips("store-1.store.rp.test.", &[ip("127.0.0.3")], 60)
        .await;
    let mut s = Running::start(dns(&server, [Query::new(service).node_basename("store")]).srv());
    s.wait_peers(
        &[
            "store@store-0.store.rp.test=127.0.0.2:7000",
            "store@store-1.store.rp.test=127.0.0.3:7001",
        ],
        true,
    )
    .await;

    // A new target, a port change, a target that leaves, an address that changes.
    server
        .set_srv(
            service,
            &[
                ("store-0.store.rp.test.", 7100),
                ("store-2.store.rp.test.", 7002),
            ],
            60,
        )
        .await;
    server
        .set_ips("store-2.store.rp.test.", &[ip("127.0.0.4")], 60)
        .await;
    s.wait_peers(
        &[
            "store@store-0.store.rp.test=127.0.0.2:7100",
            "store@store-2.store.rp.test=127.0.0.4:7002",
        ],
        true,
    )
    .await;
    server
        .set_ips("store-0.store.rp.test.", &[ip("127.0.0.5")], 60)
        .await;
    s.wait_peers(
        &[
            "store@store-0.store.rp.test=127.0.0.5:7100",
            "store@store-2.store.rp.test=127.0.0.4:7002",
        ],
        true,
    )
    .await;

    server.remove(service).await;
    s.wait_peers(&[], true).await;
    s.stop().await;
}

/// Puts the server in `mode` once the strategy has a set, and checks that the set is kept
/// through several failed polls (while the zone changes underneath), that the failure is
/// reported and counted, and that the strategy recovers when the server answers again.
async fn failure_keeps_the_set(mode: Mode, counter: &str) {
    let server = DnsServer::start().await;
    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.2"), ip("127.0.0.3")], 1)
        .await;
    let mut s = Running::start(dns(&server, ["nodes.rp.test."]));
    let want = [
        "app@127.0.0.2=127.0.0.2:45893",
        "app@127.0.0.3=127.0.0.3:45893",
    ];
    s.wait_peers(&want, true).await;

    server.set_mode(mode);
    // The zone now says something else, which the strategy cannot see.
    server.remove("nodes.rp.test.").await;
    let st = s
        .wait(&format!("{mode:?} reported"), |st| st.last_error.is_some())
        .await;
    let error = st.last_error.clone().unwrap();
    eprintln!("{mode:?}: {error}");
    assert!(error.contains("nodes.rp.test."), "{error}");
    let errors = st.errors_total;
    // Several more failed polls, the set unchanged throughout.
    let st = s
        .wait("more failures", |st| st.errors_total >= errors + 3)
        .await;
    assert_eq!(peers(&st), want, "{mode:?} keeps the last good set");
    assert!(
        st.counters.get(counter).copied().unwrap_or(0) >= 1,
        "{mode:?} counted under {counter}: {:?}",
        st.counters
    );

    server.set_mode(Mode::Answer);
    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.4")], 1)
        .await;
    s.wait_peers(&["app@127.0.0.4=127.0.0.4:45893"], true).await;
    s.stop().await;
}

#[tokio::test]
async fn a_server_that_stops_answering_keeps_the_set() {
    failure_keeps_the_set(Mode::Silent, "errors_timeout").await;
}

#[tokio::test]
async fn servfail_keeps_the_set() {
    failure_keeps_the_set(Mode::ServFail, "errors_response_code").await;
}

#[tokio::test]
async fn refused_keeps_the_set() {
    failure_keeps_the_set(Mode::Refused, "errors_response_code").await;
}

#[tokio::test]
async fn garbage_answers_keep_the_set() {
    failure_keeps_the_set(Mode::Garbage, "errors_other").await;
}

#[tokio::test]
async fn answers_cut_short_keep_the_set() {
    failure_keeps_the_set(Mode::Cut, "errors_other").await;
}

#[tokio::test]
async fn truncated_answers_without_tcp_keep_the_set() {
    failure_keeps_the_set(Mode::TruncatedNoTcp, "errors_other").await;
}

#[tokio::test]
async fn truncated_answers_are_asked_again_over_tcp() {
    let server = DnsServer::start().await;
    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.2")], 60)
        .await;
    let mut s = Running::start(dns(&server, ["nodes.rp.test."]));
    s.wait_peers(&["app@127.0.0.2=127.0.0.2:45893"], true).await;
    server.set_mode(Mode::Truncated);
    server
        .set_ips("nodes.rp.test.", &[ip("127.0.0.3")], 60)
        .await;
    let st = s.wait_peers(&["app@127.0.0.3=127.0.0.3:45893"], true).await;
    assert_eq!(st.errors_total, 0);
    s.stop().await;
}

#[tokio::test]
async fn the_ttl_is_respected() {
    let server = DnsServer::start().await;
    server
        .set_ips("short.rp.test.", &[ip("127.0.0.2")], 1)
        .await;
    // Polled once an hour: only the 1 s TTL can make the strategy ask again.
    let mut s =
        Running::start(dns(&server, ["short.rp.test."]).interval(Duration::from_secs(3600)));
    s.wait_peers(&["app@127.0.0.2=127.0.0.2:45893"], true).await;
    server
        .set_ips("short.rp.test.", &[ip("127.0.0.3")], 1)
        .await;
    s.wait_peers(&["app@127.0.0.3=127.0.0.3:45893"], true).await;
    // Let it ask a few more times, then look at when it asked.
    let wait_queries = async {
        loop {
            let n = server
                .queries()
                .iter()
                .filter(|(_, n, t)| n == "short.rp.test." && t.to_string() == "A")
                .count();
            if n >= 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait_queries)
        .await
        .expect("asked again as the TTL ran out");
    let times: Vec<_> = server
        .queries()
        .into_iter()
        .filter(|(_, n, t)| n == "short.rp.test." && t.to_string() == "A")
        .map(|(at, _, _)| at)
        .collect();
    // An answer is used for its TTL (1 s) and then asked again: never for the hour of the
    // interval. (Generous slack for a loaded machine; the point is 1 s, not 3600 s.)
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(900) && gap <= Duration::from_secs(5),
            "asked again after {gap:?}: {times:?}"
        );
    }
    s.stop().await;
}

/// A port free on 127.0.0.2, .3 and .4 alike.
async fn free_port_on_three() -> u16 {
    for _ in 0..50 {
        let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let others = (
            tokio::net::TcpListener::bind(("127.0.0.3", port)).await,
            tokio::net::TcpListener::bind(("127.0.0.4", port)).await,
        );
        if let (Ok(_), Ok(_)) = others {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

async fn dns_node(n: u8, port: u16, server: &DnsServer) -> Cluster {
    let ip = format!("127.0.0.{n}");
    Cluster::builder()
        .name(format!("app@{ip}"))
        .cluster_addr(SocketAddr::new(self::ip(&ip), port))
        .cookie("dns-end-to-end-cookie")
        .membership(membership::Config {
            heartbeat_interval: Duration::from_millis(100),
            down_after: Duration::from_millis(800),
            reconnect_initial: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            ..membership::Config::default()
        })
        .topology_with(
            "dns",
            dns(server, ["nodes.rp.test."]),
            TopologyOptions {
                prune_after: Duration::from_secs(1),
                ..TopologyOptions::default()
            },
        )
        .start()
        .await
        .expect("cluster starts")
}

fn member_names(c: &Cluster) -> Vec<String> {
    c.members().iter().map(|n| n.name.to_string()).collect()
}

async fn wait_members(c: &Cluster, want: &[&str]) {
    let mut w = c.watch();
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            if member_names(c) == want {
                return;
            }
            w.changed().await.expect("cluster alive");
        }
    })
    .await;
    if r.is_err() {
        panic!(
            "{} never saw {want:?}; has {:?}; topologies {:?}",
            c.local().name,
            member_names(c),
            c.topologies()
        );
    }
}

#[tokio::test]
async fn three_nodes_form_a_cluster_by_dns_and_a_removed_record_is_pruned() {
    let server = DnsServer::start().await;
    let three = [ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")];
    server.set_ips("nodes.rp.test.", &three, 1).await;
    let port = free_port_on_three().await;
    let n2 = dns_node(2, port, &server).await;
    let n3 = dns_node(3, port, &server).await;
    let n4 = dns_node(4, port, &server).await;
    wait_members(&n2, &["app@127.0.0.3", "app@127.0.0.4"]).await;
    wait_members(&n3, &["app@127.0.0.2", "app@127.0.0.4"]).await;
    wait_members(&n4, &["app@127.0.0.2", "app@127.0.0.3"]).await;

    // 127.0.0.4 leaves DNS (its process still runs and its connections are open): after
    // the grace period the others prune it.
    let mut s2 = n2.subscribe();
    let mut s3 = n3.subscribe();
    server.set_ips("nodes.rp.test.", &three[..2], 1).await;
    for sub in [&mut s2, &mut s3] {
        match tokio::time::timeout(DEADLINE, sub.recv()).await {
            Ok(Some(Update::Event(Event::NodeDown { node, reason }))) => {
                assert_eq!(node.name.as_str(), "app@127.0.0.4");
                assert_eq!(reason, DownReason::Pruned);
            }
            other => panic!("expected app@127.0.0.4 pruned, got {other:?}"),
        }
    }
    wait_members(&n2, &["app@127.0.0.3"]).await;
    wait_members(&n3, &["app@127.0.0.2"]).await;

    // Back in DNS, it is let in again.
    server.set_ips("nodes.rp.test.", &three, 1).await;
    wait_members(&n2, &["app@127.0.0.3", "app@127.0.0.4"]).await;
    wait_members(&n3, &["app@127.0.0.2", "app@127.0.0.4"]).await;

    for n in [n2, n3, n4] {
        n.shutdown().await;
    }
}
