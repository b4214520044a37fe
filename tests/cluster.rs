//! In-process clusters on loopback: formation, transitive mesh, leave, kill, restart,
//! wrong cookie, bad bytes on the cluster port.

use std::collections::BTreeSet;
use std::time::Duration;

use rallypoint::membership::Config;
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, DownReason, Event, Update};
use tokio::io::AsyncWriteExt;

const DEADLINE: Duration = Duration::from_secs(20);
/// The cookie of the test clusters.
const COOKIE: &str = "the test cluster's cookie";

fn fast() -> Config {
    Config {
        heartbeat_interval: Duration::from_millis(100),
        down_after: Duration::from_millis(800),
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..Config::default()
    }
}

async fn node(name: &str, cookie: &str, peers: Vec<String>) -> Cluster {
    Cluster::builder()
        .name(format!("{name}@127.0.0.1"))
        .cluster_addr("127.0.0.1:0".parse().unwrap())
        .cookie(cookie)
        .membership(Config {
            handshake_timeout: Duration::from_millis(500),
            ..fast()
        })
        .topology(
            "peers",
            StaticHosts::new(peers).resolve_interval(Duration::from_millis(200)),
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

async fn wait_stat(c: &Cluster, ok: impl Fn(&rallypoint::membership::Stats) -> bool) {
    let mut w = c.stats_watch();
    tokio::time::timeout(DEADLINE, async {
        loop {
            if ok(&w.borrow_and_update()) {
                return;
            }
            w.changed().await.expect("cluster alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: counters never matched: {:?}",
            c.local().name,
            c.stats()
        )
    });
}

async fn next_event(sub: &mut rallypoint::Subscription) -> Event {
    match tokio::time::timeout(DEADLINE, sub.recv()).await {
        Ok(Some(Update::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn transitive_full_mesh_and_graceful_leave() {
    let a = node("a", COOKIE, vec![]).await;
    let a_addr = a.local().addr.to_string();
    let b = node("b", COOKIE, vec![a_addr.clone()]).await;
    let c = node("c", COOKIE, vec![a_addr]).await;
    wait_members(&a, &["b", "c"]).await;
    wait_members(&b, &["a", "c"]).await;
    wait_members(&c, &["a", "b"]).await;

    let mut sa = a.subscribe();
    let mut sc = c.subscribe();
    b.shutdown().await;
    for sub in [&mut sa, &mut sc] {
        match next_event(sub).await {
            Event::NodeDown { node, reason } => {
                assert_eq!(node.name.as_str(), "b@127.0.0.1");
                assert_eq!(reason, DownReason::Left);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn wrong_cookie_never_joins() {
    let a = node("a", COOKIE, vec![]).await;
    let x = node(
        "x",
        "another-cluster-cookie",
        vec![a.local().addr.to_string()],
    )
    .await;
    let b = node("b", COOKIE, vec![a.local().addr.to_string()]).await;
    wait_members(&a, &["b"]).await;
    // Wait until a has refused x at least twice (x retries with backoff).
    wait_stat(&a, |s| {
        s.handshake_failures.get("bad_cookie").copied().unwrap_or(0) >= 2
    })
    .await;
    wait_stat(&x, |s| {
        s.handshake_failures.get("bad_cookie").copied().unwrap_or(0) >= 1
    })
    .await;
    assert!(x.members().is_empty());
    assert_eq!(names(&a), BTreeSet::from(["b@127.0.0.1".to_string()]));
    for c in [a, x, b] {
        c.shutdown().await;
    }
}

#[tokio::test]
async fn a_dropped_node_is_down_and_its_restart_is_a_new_incarnation() {
    let a = node("a", COOKIE, vec![]).await;
    let a_addr = a.local().addr.to_string();
    let b = node("b", COOKIE, vec![a_addr.clone()]).await;
    wait_members(&a, &["b"]).await;
    let mut sa = a.subscribe();
    let b_addr = b.local().addr;
    let old = b.local().clone();
    drop(b); // aborts the tasks: the sockets close without a Leave
    match next_event(&mut sa).await {
        Event::NodeDown { node, reason } => {
            assert_eq!(node, old);
            assert_eq!(reason, DownReason::ConnectionClosed);
        }
        e => panic!("unexpected {e:?}"),
    }
    let b2 = Cluster::builder()
        .name("b@127.0.0.1")
        .cluster_addr(b_addr)
        .cookie(COOKIE)
        .membership(fast())
        .topology("peers", StaticHosts::new([a_addr]))
        .start()
        .await
        .unwrap();
    match next_event(&mut sa).await {
        Event::NodeUp(n) => {
            assert_eq!(n.name, old.name);
            assert_ne!(n.incarnation, old.incarnation);
        }
        e => panic!("unexpected {e:?}"),
    }
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test]
async fn garbage_on_the_cluster_port_disturbs_nothing() {
    let a = node("a", COOKIE, vec![]).await;
    let b = node("b", COOKIE, vec![a.local().addr.to_string()]).await;
    wait_members(&a, &["b"]).await;
    let mut sa = a.subscribe();
    let addr = a.local().addr;
    // Garbage bytes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    // The sealed handshake's preamble, then an oversized handshake message.
    let mut s2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    s2.write_all(&rallypoint::membership::seal::PREAMBLE)
        .await
        .unwrap();
    s2.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
    // An oversized frame header, as protocol 1 would have read it: too short a preamble.
    let mut s3 = tokio::net::TcpStream::connect(addr).await.unwrap();
    s3.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // A half-open handshake: connect, say nothing.
    let _s4 = tokio::net::TcpStream::connect(addr).await.unwrap();
    wait_stat(&a, |s| {
        s.handshake_failures
            .get("not_rallypoint")
            .copied()
            .unwrap_or(0)
            >= 1
            && s.handshake_failures.get("protocol").copied().unwrap_or(0) >= 1
    })
    .await;
    // The silent connections are cut by the handshake timeout.
    wait_stat(&a, |s| {
        s.handshake_failures.get("timeout").copied().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(names(&a), BTreeSet::from(["b@127.0.0.1".to_string()]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sa.recv())
            .await
            .is_err(),
        "no event"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn pubsub_reaches_every_member_and_one_member() {
    let a = node("a", COOKIE, vec![]).await;
    let b = node("b", COOKIE, vec![a.local().addr.to_string()]).await;
    let c = node("c", COOKIE, vec![a.local().addr.to_string()]).await;
    wait_members(&a, &["b", "c"]).await;
    let mut tb = b.topic("news");
    let mut tc = c.topic("news");
    let mut ta = a.topic("news");
    assert_eq!(a.publish("news", &b"hello"[..]).await.unwrap(), 2);
    for t in [&mut ta, &mut tb, &mut tc] {
        let m = tokio::time::timeout(DEADLINE, t.recv())
            .await
            .expect("delivered")
            .unwrap();
        assert_eq!(m.from.name.as_str(), "a@127.0.0.1");
        assert_eq!(&m.payload[..], b"hello");
    }
    a.send(&b.local().name, "news", &b"only b"[..])
        .await
        .unwrap();
    let m = tokio::time::timeout(DEADLINE, tb.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(&m.payload[..], b"only b");
    let stranger: rallypoint::NodeName = "z@127.0.0.1".parse().unwrap();
    assert_eq!(
        a.send(&stranger, "news", &b"x"[..]).await,
        Err(rallypoint::SendError::NotMember(stranger))
    );
    // Order per sender is kept.
    for i in 0..100u32 {
        a.publish("news", i.to_be_bytes().to_vec()).await.unwrap();
    }
    for i in 0..100u32 {
        let m = tokio::time::timeout(DEADLINE, tc.recv())
            .await
            .expect("delivered")
            .unwrap();
        assert_eq!(&m.payload[..], &i.to_be_bytes()[..]);
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_message_too_large_for_a_frame_is_refused_and_cuts_nothing() {
    let a = node("a", COOKIE, vec![]).await;
    let b = node("b", COOKIE, vec![a.local().addr.to_string()]).await;
    wait_members(&a, &["b"]).await;
    let mut sa = a.subscribe();
    let huge = vec![0u8; 2 << 20];
    assert!(matches!(
        a.publish("t", huge.clone()).await,
        Err(rallypoint::SendError::TooLarge { .. })
    ));
    assert!(matches!(
        a.send(&b.local().name, "t", huge).await,
        Err(rallypoint::SendError::TooLarge { .. })
    ));
    // The connection is intact: a normal message still arrives, and nobody went down.
    let mut tb = b.topic("t");
    a.publish("t", &b"small"[..]).await.unwrap();
    let m = tokio::time::timeout(DEADLINE, tb.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(&m.payload[..], b"small");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sa.recv())
            .await
            .is_err(),
        "no event"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_cookie_shorter_than_16_bytes_is_refused_at_start() {
    use rallypoint::cookie::{CookieError, CookieSource};
    let builder = || {
        Cluster::builder()
            .name("a@127.0.0.1")
            .cluster_addr("127.0.0.1:0".parse().unwrap())
    };
    match builder().cookie("short").start().await {
        Err(rallypoint::Error::Cookie(
            e @ CookieError::TooShort {
                len: 5,
                origin: CookieSource::Builder,
            },
        )) => {
            let text = e.to_string();
            assert!(text.contains("`Builder::cookie`"), "{text}");
            assert!(text.contains("head -c 32 /dev/urandom | base64"), "{text}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a 5-byte cookie was accepted"),
    }
    match builder().cookie(COOKIE).accept_cookie("x").start().await {
        Err(rallypoint::Error::Cookie(CookieError::TooShort {
            len: 1,
            origin: CookieSource::BuilderAccepted,
        })) => {}
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a 1-byte accepted cookie was accepted"),
    }
    // 16 bytes, taken as they are (no trimming in the library).
    let a = builder()
        .cookie(" 14 bytes, then ")
        .accept_cookie([0u8; 16])
        .start()
        .await
        .expect("16 bytes are enough");
    a.shutdown().await;
}
