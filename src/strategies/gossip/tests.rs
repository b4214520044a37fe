//! Tests of the gossip strategy alone: configuration, and strategies on loopback.
//!
//! Loopback multicast needs `multicast_if = 127.0.0.1` (so nothing leaves the host); each
//! test uses its own port, shared by the strategies of that test.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use super::*;
use crate::cookie::{Cookie, Cookies};
use crate::node::Node;
use crate::strategies::{TopologyHandle, TopologyStatus};

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.multicast_addr, "230.1.1.251".parse::<IpAddr>().unwrap());
    assert_eq!(c.port, 45892);
    assert_eq!(c.ttl, 1);
    assert_eq!(c.interval, Duration::from_secs(1));
    assert_eq!(c.effective_replay_window(), Duration::from_secs(4));
    assert_eq!(c.live_for(), Duration::from_secs(3));
    assert!(!format!("{:?}", Gossip::default()).is_empty());
}

#[test]
fn config_reads_from_json_with_defaults_and_refuses_unknown_keys() {
    let c: Config = serde_json::from_str(
        r#"{"port": 50000, "interval": "200ms", "secret": "s", "replay_window": "3s",
            "multicast_addr": "ff02::1:251", "multicast_if": "eth0"}"#,
    )
    .unwrap();
    assert_eq!(c.port, 50000);
    assert_eq!(c.interval, Duration::from_millis(200));
    assert_eq!(c.replay_window, Some(Duration::from_secs(3)));
    assert_eq!(c.cluster_name, "rallypoint");
    c.validate().unwrap();
    assert!(!format!("{c:?}").contains("\"s\""), "secret redacted");
    let err = serde_json::from_str::<Config>(r#"{"prot": 1}"#).unwrap_err();
    assert!(err.to_string().contains("prot"), "{err}");
    let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn invalid_configs_name_the_key_at_fault() {
    let cases: Vec<(&str, Config)> = vec![
        (
            "multicast_addr",
            Config {
                multicast_addr: "10.0.0.1".parse().unwrap(),
                ..Config::default()
            },
        ),
        (
            "port",
            Config {
                port: 0,
                ..Config::default()
            },
        ),
        (
            "if_addr",
            Config {
                if_addr: Some("10.0.0.5".parse().unwrap()),
                ..Config::default()
            },
        ),
        (
            "if_addr",
            Config {
                if_addr: Some("::".parse().unwrap()),
                ..Config::default()
            },
        ),
        (
            "multicast_if",
            Config {
                multicast_if: Some(" ".into()),
                ..Config::default()
            },
        ),
        (
            "multicast_if",
            Config {
                broadcast_only: true,
                multicast_if: Some("eth0".into()),
                ..Config::default()
            },
        ),
        (
            "ttl",
            Config {
                ttl: 0,
                ..Config::default()
            },
        ),
        (
            "ttl",
            Config {
                ttl: 256,
                ..Config::default()
            },
        ),
        (
            "interval",
            Config {
                interval: Duration::from_millis(1),
                ..Config::default()
            },
        ),
        (
            "broadcast_addr",
            Config {
                broadcast_only: true,
                broadcast_addr: Ipv4Addr::UNSPECIFIED,
                ..Config::default()
            },
        ),
        (
            "secret",
            Config {
                secret: Some(String::new()),
                ..Config::default()
            },
        ),
        (
            "cluster_name",
            Config {
                cluster_name: String::new(),
                ..Config::default()
            },
        ),
        (
            "cluster_name",
            Config {
                cluster_name: "x".repeat(65),
                ..Config::default()
            },
        ),
        (
            "replay_window",
            Config {
                replay_window: Some(Duration::from_millis(5)),
                ..Config::default()
            },
        ),
    ];
    for (key, c) in cases {
        let e = Gossip::new(c.clone()).unwrap_err();
        assert_eq!(e.key, key, "{c:?}");
        assert!(
            e.to_string().starts_with(&format!("gossip.{key} = ")),
            "{e}"
        );
    }
    // Accepted variants.
    for c in [
        Config {
            if_addr: Some("0.0.0.0".parse().unwrap()),
            ..Config::default()
        },
        Config {
            if_addr: Some("230.1.1.251".parse().unwrap()),
            ..Config::default()
        },
        Config {
            broadcast_only: true,
            multicast_addr: "10.0.0.1".parse().unwrap(),
            broadcast_addr: "10.0.0.255".parse().unwrap(),
            if_addr: Some("10.0.0.255".parse().unwrap()),
            ..Config::default()
        },
    ] {
        Gossip::from_config(c).unwrap();
    }
}

#[test]
fn bind_address_defaults() {
    let c = Config::default();
    if cfg!(target_os = "linux") {
        assert_eq!(c.bind_ip(), c.multicast_addr);
    }
    let c = Config {
        broadcast_only: true,
        ..Config::default()
    };
    assert_eq!(c.bind_ip(), "0.0.0.0".parse::<IpAddr>().unwrap());
    let c = Config {
        multicast_addr: "ff02::1:251".parse().unwrap(),
        ..Config::default()
    };
    assert_eq!(c.bind_ip(), "::".parse::<IpAddr>().unwrap());
}

/// Records the level, `reason` field and message of every event: what a log would show.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Line>>>);

#[derive(Clone, Debug)]
struct Line {
    level: tracing::Level,
    reason: Option<String>,
    message: String,
}

impl Captured {
    fn warnings(&self) -> Vec<Line> {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (lines.iter())
            .filter(|l| l.level == tracing::Level::WARN)
            .cloned()
            .collect()
    }
}

impl tracing::field::Visit for Line {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "reason" {
            self.reason = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Line {
            level: *event.metadata().level(),
            reason: None,
            message: String::new(),
        };
        event.record(&mut line);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

fn heartbeat(cluster: &str, name: &str, timestamp_ms: u64) -> packet::Heartbeat {
    packet::Heartbeat {
        cluster: cluster.into(),
        name: name.parse().unwrap(),
        incarnation: 7,
        addr: "10.0.0.2:45893".parse().unwrap(),
        timestamp_ms,
    }
}

#[test]
fn a_flood_from_10000_sources_gives_a_bounded_number_of_warnings_and_counts_every_packet() {
    let (ctx, handle) = Context::new("lan", "gossip", node("a", 1001), Cookie::new("cookie"));
    let mut runner = Runner::new(Config::default(), Keys::new(None, ctx.cookies()));
    let key = Key::derive(b"cookie");
    let t0 = Instant::now();
    let now_ms = unix_ms(SystemTime::now());
    let other_cluster = packet::seal(&key, &heartbeat("elsewhere", "x@10.0.0.3", now_ms), [1; 12]);
    let replayed = packet::seal(
        &key,
        &heartbeat("rallypoint", "b@10.0.0.2", now_ms),
        [2; 12],
    );
    let (other_cluster, replayed) = (other_cluster.unwrap(), replayed.unwrap());
    let mut rng = StdRng::seed_from_u64(5);
    let log = Captured::default();
    tracing::subscriber::with_default(log.clone(), || {
        for i in 0..10_000u32 {
            // 10.0.0.0 + i: every packet from another source address.
            let src = SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 45892));
            let bytes = match i % 5 {
                0 => {
                    // Looks like a heartbeat, sealed with a key nobody has.
                    let mut b = vec![0u8; 80];
                    rng.fill(&mut b[..]);
                    b[0] = packet::VERSION;
                    b
                }
                1 => vec![packet::VERSION; 5],
                2 => vec![9; 80],
                3 => other_cluster.clone(),
                // The first is taken, every copy after it is a replay.
                _ => replayed.clone(),
            };
            let now = t0 + Duration::from_micros(u64::from(i));
            runner.on_packet(&ctx, &bytes, src, now, now_ms);
        }
    });
    runner.flush(&ctx);
    let st = handle.status.borrow().clone();
    for (name, n) in [
        ("gossip_rejected_auth", 2000),
        ("gossip_rejected_malformed", 2000),
        ("gossip_rejected_version", 2000),
        ("gossip_rejected_cluster", 2000),
        ("gossip_rejected_replay", 1999),
        ("gossip_accepted", 1),
    ] {
        assert_eq!(counter(&st, name), n, "{name}: {:?}", st.counters);
    }
    assert_eq!(names(&st), ["b@10.0.0.2"]);
    // Before: a warning per source address, 9,999 lines. Now: the budget of each of the
    // five reasons.
    let warnings = log.warnings();
    assert_eq!(warnings.len(), 5 * WARN_BURST as usize, "{warnings:#?}");
    for reason in [
        "gossip_rejected_auth",
        "gossip_rejected_malformed",
        "gossip_rejected_version",
        "gossip_rejected_cluster",
        "gossip_rejected_replay",
    ] {
        let n = (warnings.iter())
            .filter(|l| l.reason.as_deref() == Some(reason))
            .count();
        assert_eq!(n, WARN_BURST as usize, "{reason}: {warnings:#?}");
    }
    assert!(
        warnings[0]
            .message
            .contains("at most 5 warnings per 60s for this reason"),
        "{}",
        warnings[0].message
    );
    // After the window, the next warning says how many were held back.
    let later = t0 + WARN_WINDOW + Duration::from_secs(1);
    let log = Captured::default();
    tracing::subscriber::with_default(log.clone(), || {
        let src = SocketAddr::from(([10, 1, 0, 1], 45892));
        runner.on_packet(&ctx, &[9; 80], src, later, now_ms);
    });
    let warnings = log.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let held_back = 2000 - WARN_BURST;
    assert!(
        (warnings[0].message)
            .contains(&format!("({held_back} more like it logged at debug level)")),
        "{}",
        warnings[0].message
    );
}

#[test]
fn an_explicit_secret_is_the_only_key_and_cookies_give_one_each() {
    let cookies = Cookies::new(Cookie::new("new")).accept(Cookie::new("old"));
    let hb = heartbeat("rallypoint", "b@10.0.0.2", 1);
    let by = |secret: &[u8]| packet::seal(&Key::derive(secret), &hb, [0; 12]).unwrap();
    let keys = Keys::new(None, &cookies);
    assert_eq!(keys.open.len(), 2);
    assert_eq!(packet::open(&keys.seal, &by(b"new")).unwrap(), hb);
    assert!(packet::open_any(&keys.open, &by(b"old")).is_ok());
    let keys = Keys::new(Some("s"), &cookies);
    assert_eq!(keys.open.len(), 1);
    assert_eq!(packet::open(&keys.seal, &by(b"s")).unwrap(), hb);
    assert!(packet::open_any(&keys.open, &by(b"new")).is_err());
    assert!(packet::open_any(&keys.open, &by(b"old")).is_err());
}

// ---- strategies on loopback ----

/// A port for one test: distinct per test in this process, and spread by process id so
/// that two test runs on one host rarely share one.
fn test_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 2000) as u16 * 10;
    base + NEXT.fetch_add(1, Ordering::Relaxed)
}

fn loopback(port: u16) -> Config {
    Config {
        port,
        multicast_if: Some("127.0.0.1".into()),
        interval: Duration::from_millis(100),
        ..Config::default()
    }
}

fn node(name: &str, port: u16) -> Node {
    Node {
        name: format!("{name}@127.0.0.1").parse().unwrap(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        incarnation: rand::random(),
    }
}

struct Running {
    handle: TopologyHandle,
    task: JoinHandle<()>,
}

fn start(cfg: Config, me: Node, cookie: &str) -> Running {
    start_holding(cfg, me, Cookies::new(Cookie::new(cookie)))
}

fn start_holding(cfg: Config, me: Node, cookies: Cookies) -> Running {
    let (ctx, handle) = Context::with_cookies("lan", "gossip", me, cookies);
    let task = tokio::spawn(Gossip::new(cfg).unwrap().run(ctx));
    Running { handle, task }
}

impl Running {
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&TopologyStatus) -> bool,
    ) -> TopologyStatus {
        let rx = &mut self.handle.status;
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                {
                    let st = rx.borrow_and_update();
                    if pred(&st) {
                        return st.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    panic!("strategy ended while waiting for {what}");
                }
            }
        })
        .await;
        match r {
            Ok(st) => st,
            Err(_) => panic!(
                "timed out waiting for {what}; status: {:?}",
                self.handle.status.borrow()
            ),
        }
    }

    async fn stop(self) {
        self.handle.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("strategy stops on shutdown")
            .unwrap();
    }
}

fn names(st: &TopologyStatus) -> Vec<String> {
    st.peers
        .iter()
        .filter_map(|p| p.name.as_ref().map(|n| n.to_string()))
        .collect()
}

fn counter(st: &TopologyStatus, name: &str) -> u64 {
    st.counters.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn two_strategies_on_loopback_hear_each_other_and_a_quiet_one_leaves() {
    let port = test_port();
    let mut a = start(loopback(port), node("a", 1001), "cookie");
    let mut b = start(loopback(port), node("b", 1002), "cookie");
    let st = a
        .wait_for("a hears b", |st| names(st) == ["b@127.0.0.1"])
        .await;
    let p = st.peers.iter().next().unwrap();
    assert_eq!(p.addr, SocketAddr::from(([127, 0, 0, 1], 1002)));
    assert!(st.last_error.is_none());
    b.wait_for("b hears a", |st| names(st) == ["a@127.0.0.1"])
        .await;
    let st = a
        .wait_for("counters flushed", |st| {
            counter(st, "gossip_sent") >= 2 && counter(st, "gossip_accepted") >= 2
        })
        .await;
    assert!(counter(&st, "gossip_sent_bytes") >= 2 * 40);
    assert_eq!(counter(&st, "gossip_rejected_replay"), 0);
    assert_eq!(counter(&st, "gossip_rejected_auth"), 0);
    b.stop().await;
    a.wait_for("b leaves a's set", |st| st.peers.is_empty())
        .await;
    a.stop().await;
}

#[tokio::test]
async fn another_secret_or_cluster_is_not_heard_and_is_counted() {
    let port = test_port();
    let mut a = start(loopback(port), node("a", 1001), "cookie");
    let other_secret = start(loopback(port), node("x", 1003), "another cookie");
    let other_cluster = start(
        Config {
            cluster_name: "elsewhere".into(),
            ..loopback(port)
        },
        node("y", 1004),
        "cookie",
    );
    // The explicit secret overrides the cookie: this one is heard.
    let _friend = start(
        Config {
            secret: Some("cookie".into()),
            ..loopback(port)
        },
        node("z", 1005),
        "not the cookie",
    );
    let st = a
        .wait_for("rejections counted", |st| {
            counter(st, "gossip_rejected_auth") >= 2
                && counter(st, "gossip_rejected_cluster") >= 2
                && names(st) == ["z@127.0.0.1"]
        })
        .await;
    assert!(st.last_error.is_none());
    other_secret.stop().await;
    other_cluster.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn during_a_cookie_rotation_a_node_holding_new_and_old_hears_both() {
    let port = test_port();
    let (old, new) = (Cookie::new("old cookie"), Cookie::new("new cookie"));
    let mut both = start_holding(
        loopback(port),
        node("both", 1001),
        Cookies::new(new.clone()).accept(old.clone()),
    );
    let mut on_old = start_holding(loopback(port), node("old", 1002), Cookies::new(old));
    let mut on_new = start_holding(loopback(port), node("new", 1003), Cookies::new(new));
    let sorted = |st: &TopologyStatus| {
        let mut n = names(st);
        n.sort();
        n
    };
    // [new, old] hears a node on [old] and one on [new].
    both.wait_for("both hears old and new", |st| {
        sorted(st) == ["new@127.0.0.1", "old@127.0.0.1"]
    })
    .await;
    // It seals with the primary, new: the node on [new] hears it, and not the node on
    // [old] (which seals with old).
    on_new
        .wait_for("new hears both and refuses old", |st| {
            names(st) == ["both@127.0.0.1"] && counter(st, "gossip_rejected_auth") >= 2
        })
        .await;
    // [old] alone refuses everything sealed with new.
    let st = on_old
        .wait_for("old refuses both and new", |st| {
            counter(st, "gossip_rejected_auth") >= 4
        })
        .await;
    assert!(st.peers.is_empty(), "{:?}", st.peers);
    let st = both
        .wait_for("counters flushed", |st| counter(st, "gossip_accepted") >= 4)
        .await;
    assert_eq!(counter(&st, "gossip_rejected_auth"), 0, "{:?}", st.counters);
    for n in [both, on_old, on_new] {
        n.stop().await;
    }
}

#[tokio::test]
async fn garbage_and_replayed_packets_change_nothing() {
    let port = test_port();
    let group = SocketAddr::from((crate::DEFAULT_GOSSIP_GROUP, port));
    let mut a = start(loopback(port), node("a", 1001), "cookie");
    let mut b = start(loopback(port), node("b", 1002), "cookie");
    a.wait_for("a hears b", |st| names(st) == ["b@127.0.0.1"])
        .await;

    // A listener on the group, to capture a real heartbeat of b.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.set_reuse_port(true).unwrap();
    sock.bind(&SocketAddr::from((crate::DEFAULT_GOSSIP_GROUP, port)).into())
        .unwrap();
    sock.join_multicast_v4(&crate::DEFAULT_GOSSIP_GROUP, &Ipv4Addr::LOCALHOST)
        .unwrap();
    sock.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let sock: UdpSocket = sock.into();
    let key = Key::derive(b"cookie");
    let captured = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = sock.recv_from(&mut buf).expect("a heartbeat within 5 s");
            if let Ok(hb) = packet::open(&key, &buf[..n])
                && hb.name.as_str() == "b@127.0.0.1"
            {
                return (sock, buf[..n].to_vec());
            }
        }
    })
    .await
    .unwrap();
    let (sock, captured) = captured;

    // Garbage of every size, and the captured packet replayed, from another socket.
    let mut rng = StdRng::seed_from_u64(3);
    for len in [0usize, 1, 5, 13, 28, 29, 60, 200, 1024, 1025, 1500] {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        sock.send_to(&bytes, group).unwrap();
        if len > 0 {
            bytes[0] = packet::VERSION;
            sock.send_to(&bytes, group).unwrap();
        }
    }
    for _ in 0..3 {
        sock.send_to(&captured, group).unwrap();
    }
    let st = a
        .wait_for("garbage and replays counted", |st| {
            counter(st, "gossip_rejected_malformed") >= 3
                && counter(st, "gossip_rejected_auth") >= 4
                && counter(st, "gossip_rejected_version") >= 1
                && counter(st, "gossip_rejected_replay") >= 3
        })
        .await;
    assert_eq!(names(&st), ["b@127.0.0.1"]);
    assert!(st.last_error.is_none());
    b.wait_for("b still hears a", |st| names(st) == ["a@127.0.0.1"])
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_taken_port_is_a_failure_naming_the_key_and_it_recovers() {
    let port = test_port();
    // Bound without SO_REUSEPORT: nobody else can bind the port.
    let blocker = UdpSocket::bind(("0.0.0.0", port)).unwrap();
    let mut a = start(loopback(port), node("a", 1001), "cookie");
    let st = a
        .wait_for("a bind failure", |st| st.last_error.is_some())
        .await;
    let err = st.last_error.unwrap();
    assert!(
        err.contains("cannot bind") && err.contains("`port`"),
        "{err}"
    );
    assert!(!st.reported);
    drop(blocker);
    a.wait_for("recovery", |st| st.reported && st.last_error.is_none())
        .await;
    a.stop().await;
}

#[tokio::test]
async fn an_unknown_interface_is_a_failure_naming_multicast_if() {
    let port = test_port();
    let mut a = start(
        Config {
            multicast_if: Some("no-such-if0".into()),
            ..loopback(port)
        },
        node("a", 1001),
        "cookie",
    );
    let st = a
        .wait_for("an interface failure", |st| st.last_error.is_some())
        .await;
    let err = st.last_error.unwrap();
    assert!(
        err.contains("multicast_if") && err.contains("no such interface"),
        "{err}"
    );
    a.stop().await;
}
