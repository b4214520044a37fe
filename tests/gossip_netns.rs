//! Gossip across hosts: each node in its own network namespace on a shared bridge (see
//! `support/netns.rs`), running a `rallypoint::Cluster` whose only topology is gossip.
//! Multicast, cuts and rogue senders are real.
//!
//! Needs root; without it each test prints why it skips, and fails under `CI=true`.
//! The tests run one at a time (they share a lock) so that timeouts are not disturbed by
//! the other tests' load.

#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netns::{Lab, require_root};
use rallypoint::strategies::TopologyStatus;
use rallypoint::strategies::gossip::{Config, Gossip};
use rallypoint::{Cluster, DownReason, Event, Node, Update};

const DEADLINE: Duration = Duration::from_secs(30);
/// The cookie of the test nodes.
const COOKIE: &str = "the gossip lab's cookie";
const GROUP: Ipv4Addr = rallypoint::DEFAULT_GOSSIP_GROUP;
const PORT: u16 = rallypoint::DEFAULT_GOSSIP_PORT;

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn membership() -> rallypoint::membership::Config {
    rallypoint::membership::Config {
        heartbeat_interval: Duration::from_millis(200),
        down_after: Duration::from_millis(1500),
        reconnect_initial: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(1000),
        ..Default::default()
    }
}

fn gossip() -> Config {
    Config {
        interval: Duration::from_millis(200),
        ..Config::default()
    }
}

enum Cmd {
    Status(mpsc::Sender<(Vec<Node>, TopologyStatus)>),
    Shutdown,
}

/// A cluster node running on a lab host, in its own thread.
struct NsNode {
    name: String,
    events: mpsc::Receiver<Update>,
    /// Every event seen so far, in order.
    seen: Vec<Event>,
    members: BTreeSet<String>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

fn start(lab: &Lab, i: usize, cookie: &str, cfg: Config) -> NsNode {
    let ip = lab.host(i).ip;
    let name = format!("n{i}@{ip}");
    let (ev_tx, events) = mpsc::channel();
    let (cmds, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let (cookie, node_name) = (cookie.to_owned(), name.clone());
    let thread = lab.block_on_in(i, move || async move {
        let cluster = Cluster::builder()
            .name(node_name)
            .cluster_addr(SocketAddr::from((ip, rallypoint::DEFAULT_CLUSTER_PORT)))
            .cookie(cookie)
            .membership(membership())
            .topology("lan", Gossip::new(cfg).expect("valid gossip config"))
            .start()
            .await
            .expect("cluster starts");
        let mut sub = cluster.subscribe();
        loop {
            tokio::select! {
                u = sub.recv() => match u {
                    Some(u) => { let _ = ev_tx.send(u); }
                    None => break,
                },
                c = cmd_rx.recv() => match c {
                    Some(Cmd::Status(reply)) => {
                        let lan = cluster.topologies().into_iter().next().map(|(_, s)| s).unwrap_or_default();
                        let _ = reply.send((cluster.members(), lan));
                    }
                    Some(Cmd::Shutdown) | None => {
                        cluster.shutdown().await;
                        break;
                    }
                },
            }
        }
    });
    NsNode {
        name,
        events,
        seen: Vec::new(),
        members: BTreeSet::new(),
        cmds,
        thread: Some(thread),
    }
}

impl NsNode {
    fn apply(&mut self, u: Update) {
        match u {
            Update::Event(e) => {
                match &e {
                    Event::NodeUp(n) => {
                        self.members.insert(n.name.to_string());
                    }
                    Event::NodeDown { node, .. } => {
                        self.members.remove(node.name.as_str());
                    }
                }
                self.seen.push(e);
            }
            Update::Resync(snap) => {
                self.members = snap.nodes().iter().map(|n| n.name.to_string()).collect();
            }
        }
    }

    /// Takes events until `done` holds (checked first), or fails at the deadline.
    fn wait(&mut self, what: &str, mut done: impl FnMut(&NsNode) -> bool) {
        let end = Instant::now() + DEADLINE;
        while !done(self) {
            let left = end.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(u) => self.apply(u),
                Err(_) => panic!(
                    "{}: timed out waiting for {what}; members {:?}, events {:?}",
                    self.name, self.members, self.seen
                ),
            }
        }
    }

    fn wait_members(&mut self, want: &BTreeSet<String>) {
        self.wait(&format!("members {want:?}"), |n| &n.members == want);
    }

    /// Takes the events that have come, without waiting.
    fn drain(&mut self) {
        while let Ok(u) = self.events.try_recv() {
            self.apply(u);
        }
    }

    fn status(&self) -> (Vec<Node>, TopologyStatus) {
        let (tx, rx) = mpsc::channel();
        self.cmds.send(Cmd::Status(tx)).expect("node running");
        rx.recv_timeout(DEADLINE).expect("node answers")
    }

    /// Asks the node for its gossip status until `ok` holds, or fails at the deadline.
    fn wait_status(&self, what: &str, ok: impl Fn(&TopologyStatus) -> bool) -> TopologyStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            let (_, st) = self.status();
            if ok(&st) {
                return st;
            }
            assert!(
                Instant::now() < end,
                "{}: timed out waiting for {what}; gossip status {st:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            t.join().expect("node thread ends cleanly");
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn counter(st: &TopologyStatus, name: &str) -> u64 {
    st.counters.get(name).copied().unwrap_or(0)
}

fn all_but(nodes: &[NsNode], i: usize) -> BTreeSet<String> {
    nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, n)| n.name.clone())
        .collect()
}

fn all_but_name(me: &str, lab: &Lab, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| format!("n{i}@{}", lab.host(i).ip))
        .filter(|x| x != me)
        .collect()
}

fn wait_full_mesh(nodes: &mut [NsNode]) {
    let names: Vec<BTreeSet<String>> = (0..nodes.len()).map(|i| all_but(nodes, i)).collect();
    for (n, want) in nodes.iter_mut().zip(&names) {
        n.wait_members(want);
    }
}

/// A UDP socket on lab host `i`, joined to the gossip group there.
fn listener_in(lab: &Lab, i: usize) -> UdpSocket {
    let ip = lab.host(i).ip;
    lab.spawn_in(i, move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&SocketAddr::from((GROUP, PORT)).into()).unwrap();
        s.join_multicast_v4(&GROUP, &ip).unwrap();
        s.set_multicast_if_v4(&ip).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        UdpSocket::from(s)
    })
    .join()
    .expect("listener set up")
}

#[test]
fn five_nodes_form_a_full_mesh_with_gossip_only() {
    if !require_root("five_nodes_form_a_full_mesh_with_gossip_only") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(5).expect("lab");
    let mut nodes: Vec<NsNode> = (0..5).map(|i| start(&lab, i, COOKIE, gossip())).collect();
    wait_full_mesh(&mut nodes);
    // Each node's gossip topology sees the four others, by name and cluster address.
    for (i, n) in nodes.iter().enumerate() {
        let st = n.wait_status("four gossip peers", |st| st.peers.len() == 4);
        let peers: BTreeSet<String> = st
            .peers
            .iter()
            .map(|p| p.name.as_ref().expect("gossip names its peers").to_string())
            .collect();
        assert_eq!(peers, all_but(&nodes, i));
        for p in st.peers.iter() {
            assert_eq!(p.addr.port(), rallypoint::DEFAULT_CLUSTER_PORT);
        }
        assert!(st.last_error.is_none(), "{:?}", st.last_error);
        assert_eq!(counter(&st, "gossip_rejected_auth"), 0);
    }
    for n in nodes {
        n.stop();
    }
}

/// Five nodes that find each other by gossip all dial each other at once. Each should see
/// exactly one `NodeUp` per peer and nothing else: the simultaneous-dial tie-break never
/// closes a connection the other side already counts as up.
#[test]
fn formation_has_no_flaps() {
    if !require_root("formation_has_no_flaps") {
        return;
    }
    let _serial = one_at_a_time();
    for _round in 0..5 {
        let lab = Lab::new(5).expect("lab");
        let mut nodes: Vec<NsNode> = (0..5).map(|i| start(&lab, i, COOKIE, gossip())).collect();
        wait_full_mesh(&mut nodes);
        // A flap already under way shows as more than four events.
        for n in nodes.iter_mut() {
            n.drain();
            assert_eq!(n.seen.len(), 4, "{}: {:?}", n.name, n.seen);
        }
        for n in nodes {
            n.stop();
        }
    }
}

#[test]
fn a_cut_link_gives_heartbeat_timeout_and_healing_rejoins() {
    if !require_root("a_cut_link_gives_heartbeat_timeout_and_healing_rejoins") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(5).expect("lab");
    let mut nodes: Vec<NsNode> = (0..5).map(|i| start(&lab, i, COOKIE, gossip())).collect();
    wait_full_mesh(&mut nodes);
    for n in nodes.iter_mut() {
        n.drain();
        n.seen.clear();
    }
    let cut = nodes[4].name.clone();
    let timed_out = |n: &NsNode, who: &str| {
        n.seen.iter().any(|e| {
            matches!(e, Event::NodeDown { node, reason: DownReason::HeartbeatTimeout }
                if node.name.as_str() == who)
        })
    };
    let t0 = Instant::now();
    lab.cut(4).expect("cut");
    for n in nodes[..4].iter_mut() {
        n.wait(&format!("nodedown of {cut} by heartbeat_timeout"), |n| {
            timed_out(n, &cut)
        });
    }
    eprintln!(
        "nodedown on all four others {:?} after the cut (down_after {:?})",
        t0.elapsed(),
        membership().down_after
    );
    // The cut node sees all others go down the same way.
    let others = all_but(&nodes, 4);
    nodes[4].wait("nodedown of everyone by heartbeat_timeout", |n| {
        others.iter().all(|o| timed_out(n, o)) && n.members.is_empty()
    });
    // The others still have each other.
    for n in nodes[..4].iter_mut() {
        let want: BTreeSet<String> = others.iter().filter(|o| **o != n.name).cloned().collect();
        n.wait_members(&want);
    }
    lab.heal(4).expect("heal");
    wait_full_mesh(&mut nodes);
    for n in nodes {
        n.stop();
    }
}

#[test]
fn a_node_with_another_secret_never_joins_and_is_counted() {
    if !require_root("a_node_with_another_secret_never_joins_and_is_counted") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(4).expect("lab");
    let mut nodes: Vec<NsNode> = (0..3).map(|i| start(&lab, i, COOKIE, gossip())).collect();
    let mut rogue = start(&lab, 3, "not the cluster's cookie", gossip());
    wait_full_mesh(&mut nodes);
    // Every member has dropped several of the rogue's heartbeats, and the rogue theirs.
    for n in &nodes {
        let st = n.wait_status("rejected heartbeats", |st| {
            counter(st, "gossip_rejected_auth") >= 3
        });
        assert_eq!(st.peers.len(), 2, "{:?}", st.peers);
    }
    let st = rogue.wait_status("rejected heartbeats", |st| {
        counter(st, "gossip_rejected_auth") >= 3
    });
    assert!(st.peers.is_empty());
    for n in nodes.iter_mut() {
        n.drain();
        assert!(
            n.seen.iter().all(|e| e.node().name.as_str() != rogue.name),
            "{}: {:?}",
            n.name,
            n.seen
        );
    }
    rogue.drain();
    assert!(rogue.seen.is_empty(), "{:?}", rogue.seen);
    rogue.stop();
    // The same secret under another cluster name is not heard either.
    let elsewhere = start(
        &lab,
        3,
        COOKIE,
        Config {
            cluster_name: "elsewhere".into(),
            ..gossip()
        },
    );
    for n in &nodes {
        n.wait_status("another cluster's heartbeats dropped", |st| {
            counter(st, "gossip_rejected_cluster") >= 3 && st.peers.len() == 2
        });
    }
    for n in nodes.iter_mut() {
        n.drain();
        assert!(
            n.seen
                .iter()
                .all(|e| e.node().name.as_str() != elsewhere.name),
            "{}: {:?}",
            n.name,
            n.seen
        );
    }
    elsewhere.stop();
    for n in nodes {
        n.stop();
    }
}

#[test]
fn a_replayed_heartbeat_is_rejected() {
    if !require_root("a_replayed_heartbeat_is_rejected") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(4).expect("lab");
    let mut nodes: Vec<NsNode> = (0..3).map(|i| start(&lab, i, COOKIE, gossip())).collect();
    wait_full_mesh(&mut nodes);
    // The attacker (host 3) captures heartbeats from the wire: it cannot read them, but
    // the source address says whose they are.
    let sock = listener_in(&lab, 3);
    let victim_ip = lab.host(2).ip;
    let mut captured = Vec::new();
    let mut buf = [0u8; 2048];
    while captured.len() < 3 {
        let (n, src) = sock.recv_from(&mut buf).expect("a heartbeat");
        if src.ip() == victim_ip {
            captured.push(buf[..n].to_vec());
        }
    }
    // Replayed at once: copies of heartbeats already taken.
    for p in &captured {
        sock.send_to(p, (GROUP, PORT)).unwrap();
    }
    for n in &nodes[..2] {
        n.wait_status("replays rejected", |st| {
            counter(st, "gossip_rejected_replay") >= 3
        });
    }
    // The victim leaves; replaying its heartbeats does not bring it back.
    let victim = nodes.pop().expect("three nodes");
    let victim_name = victim.name.clone();
    victim.stop();
    for n in nodes.iter_mut() {
        n.wait("the victim's nodedown", |n| {
            !n.members.contains(&victim_name)
        });
        n.wait_status("the victim gone from gossip", |st| st.peers.len() == 1);
    }
    let before: Vec<u64> = nodes
        .iter()
        .map(|n| counter(&n.status().1, "gossip_rejected_replay"))
        .collect();
    for _ in 0..10 {
        for p in &captured {
            sock.send_to(p, (GROUP, PORT)).unwrap();
        }
    }
    for (n, before) in nodes.iter().zip(before) {
        let st = n.wait_status("later replays rejected", |st| {
            counter(st, "gossip_rejected_replay") >= before + 30
        });
        assert_eq!(st.peers.len(), 1, "{:?}", st.peers);
        assert!(
            st.peers
                .iter()
                .all(|p| p.name.as_ref().map(|n| n.as_str()) != Some(victim_name.as_str()))
        );
    }
    for n in nodes.iter_mut() {
        n.drain();
        assert!(
            !n.members.contains(&victim_name),
            "{}: {:?}",
            n.name,
            n.seen
        );
    }
    for n in nodes {
        n.stop();
    }
}

#[test]
fn random_bytes_to_the_port_change_nothing() {
    if !require_root("random_bytes_to_the_port_change_nothing") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(4).expect("lab");
    let mut nodes: Vec<NsNode> = (0..3).map(|i| start(&lab, i, COOKIE, gossip())).collect();
    wait_full_mesh(&mut nodes);
    for n in nodes.iter_mut() {
        n.drain();
        n.seen.clear();
    }
    let sock = listener_in(&lab, 3);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let targets: Vec<SocketAddr> = std::iter::once(SocketAddr::from((GROUP, PORT)))
        .chain((0..3).map(|i| SocketAddr::from((lab.host(i).ip, PORT))))
        .collect();
    for round in 0..200usize {
        let len = [0, 1, 13, 29, 64, 300, 1024, 1400][round % 8];
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && len > 0 {
            bytes[0] = rallypoint::strategies::gossip::packet::VERSION;
        }
        for t in &targets {
            sock.send_to(&bytes, t).unwrap();
        }
    }
    for n in &nodes {
        let st = n.wait_status("garbage counted", |st| {
            counter(st, "gossip_rejected_auth") >= 20
                && counter(st, "gossip_rejected_malformed") >= 20
                && counter(st, "gossip_rejected_version") >= 20
        });
        assert_eq!(st.peers.len(), 2);
        assert!(st.last_error.is_none(), "{:?}", st.last_error);
    }
    // Still a full mesh, and no peer timed out or was pruned. (Connections closed by
    // the core's simultaneous-dial race are not the garbage's doing: see
    // `formation_has_no_flaps`.)
    for n in nodes.iter_mut() {
        n.drain();
        assert!(
            n.seen.iter().all(|e| matches!(
                e,
                Event::NodeUp(_)
                    | Event::NodeDown {
                        reason: DownReason::ConnectionClosed,
                        ..
                    }
            )),
            "{}: {:?}",
            n.name,
            n.seen
        );
        let want = all_but_name(&n.name, &lab, 3);
        n.wait_members(&want);
    }
    for n in nodes {
        n.stop();
    }
}

#[test]
fn ipv6_link_local_group_forms_a_mesh() {
    if !require_root("ipv6_link_local_group_forms_a_mesh") {
        return;
    }
    if !std::path::Path::new("/proc/net/if_inet6").exists() {
        eprintln!("SKIPPED ipv6_link_local_group_forms_a_mesh: IPv6 is disabled on this kernel");
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(3).expect("lab");
    let cfg = Config {
        multicast_addr: "ff02::1:251".parse().unwrap(),
        multicast_if: Some("eth0".into()),
        ..gossip()
    };
    let mut nodes: Vec<NsNode> = (0..3)
        .map(|i| start(&lab, i, COOKIE, cfg.clone()))
        .collect();
    wait_full_mesh(&mut nodes);
    for n in nodes {
        n.stop();
    }
}

#[test]
fn broadcast_only_forms_a_mesh() {
    if !require_root("broadcast_only_forms_a_mesh") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(3).expect("lab");
    let cfg = Config {
        broadcast_only: true,
        broadcast_addr: lab.broadcast(),
        ..gossip()
    };
    let mut nodes: Vec<NsNode> = (0..3)
        .map(|i| start(&lab, i, COOKIE, cfg.clone()))
        .collect();
    wait_full_mesh(&mut nodes);
    for n in nodes {
        n.stop();
    }
}

#[test]
fn a_host_without_a_multicast_route_is_told_to_set_multicast_if_and_recovers() {
    if !require_root("a_host_without_a_multicast_route_is_told_to_set_multicast_if_and_recovers") {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::new(1).expect("lab");
    let ns = lab.host(0).ns.clone();
    netns::ip(&["netns", "exec", &ns, "ip", "route", "del", "224.0.0.0/4"]).expect("route del");
    let ip = lab.host(0).ip;
    let (tx, rx) = mpsc::channel::<TopologyStatus>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = lab.block_on_in(0, move || async move {
        use rallypoint::strategies::{Context, Strategy};
        let me = Node {
            name: format!("n0@{ip}").parse().unwrap(),
            addr: SocketAddr::from((ip, rallypoint::DEFAULT_CLUSTER_PORT)),
            incarnation: 1,
        };
        let (ctx, mut handle) = Context::new("lan", "gossip", me, rallypoint::Cookie::new(COOKIE));
        let task = tokio::spawn(Gossip::new(gossip()).unwrap().run(ctx));
        let forward = async {
            loop {
                let st = handle.status.borrow_and_update().clone();
                if tx.send(st).is_err() || handle.status.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = forward => {}
            _ = stop_rx => {}
        }
        handle.shutdown.cancel();
        let _ = task.await;
    });
    let wait = |what: &str, ok: &dyn Fn(&TopologyStatus) -> bool| -> TopologyStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            let st = rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if ok(&st) {
                return st;
            }
        }
    };
    let st = wait("a join failure", &|st| st.last_error.is_some());
    let err = st.last_error.unwrap();
    assert!(
        err.contains("cannot join multicast group") && err.contains("`multicast_if`"),
        "{err}"
    );
    assert!(!st.reported);
    netns::ip(&[
        "netns",
        "exec",
        &ns,
        "ip",
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "eth0",
    ])
    .expect("route add");
    wait("recovery", &|st| st.reported && st.last_error.is_none());
    let _ = stop_tx.send(());
    thread.join().expect("host thread");
}
