//! The handshake, driven by hand on one core.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::membership::Config;
use crate::membership::core::{Action, ConnId, Core};
use crate::membership::wire::{self, Frame, Hello, MAGIC, PROTOCOL_VERSION, RejectReason};
use crate::node::Node;

fn core(name: &str, now: Instant) -> Core {
    let local = Node {
        name: name.parse().unwrap(),
        addr: "10.0.0.1:45893".parse().unwrap(),
        incarnation: 1,
    };
    Core::new(local, Config::default(), vec![], 7, now)
}

fn drain(c: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn hello(name: &str, version: u16) -> Hello {
    Hello {
        magic: MAGIC,
        version,
        name: name.into(),
        incarnation: 2,
        addr: "10.0.0.2:45893".parse().unwrap(),
        nonce: [9; 32],
    }
}

fn sent_hello(actions: &[Action]) -> Hello {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send {
                frame: Frame::Hello(h),
                ..
            } => Some(h.clone()),
            _ => None,
        })
        .expect("a hello was sent")
}

fn rejected(actions: &[Action]) -> Option<RejectReason> {
    actions.iter().find_map(|a| match a {
        Action::Send {
            frame: Frame::Reject(r),
            ..
        } => Some(*r),
        _ => None,
    })
}

fn emitted(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Emit(_)))
}

fn accepted(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                frame: Frame::Accept { .. },
                ..
            }
        )
    })
}

#[test]
fn hello_then_accept_from_both_sides_brings_the_peer_up() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    sent_hello(&drain(&mut c));
    c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
    let acts = drain(&mut c);
    assert!(accepted(&acts));
    assert!(!emitted(&acts), "not up before the peer's accept");
    c.handle_frame(now, id, Frame::Accept { exchange: false });
    let acts = drain(&mut c);
    assert!(
        matches!(acts.first(), Some(Action::Emit(crate::Event::NodeUp(n))) if n.name.as_str() == "b@h")
    );
    assert_eq!(c.members().count(), 1);
}

/// Brings `b@h` (incarnation 2) up on an inbound connection; returns its id.
fn with_b_up(c: &mut Core, now: Instant) -> ConnId {
    let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
    c.handle_frame(now, id, Frame::Accept { exchange: false });
    drain(c);
    id
}

#[test]
fn a_second_live_instance_of_a_name_is_refused_before_anyone_reports_it_up() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    with_b_up(&mut c, now);
    let id = c.handle_accepted(now, "10.0.0.9:1".parse().unwrap());
    drain(&mut c);
    let mut twin = hello("b@h", PROTOCOL_VERSION);
    twin.incarnation = 3;
    twin.addr = "10.0.0.9:45893".parse().unwrap();
    c.handle_frame(now, id, Frame::Hello(twin));
    let acts = drain(&mut c);
    assert_eq!(rejected(&acts), Some(RejectReason::NameClash));
    assert!(
        !accepted(&acts),
        "the loser never gets an accept, so never reports us up"
    );
    assert!(!emitted(&acts));
    assert_eq!(
        c.members().next().map(|n| n.incarnation),
        Some(2),
        "the instance up first stays"
    );
}

#[test]
fn own_name_other_version_and_early_frames_are_refused() {
    let now = Instant::now();
    let cases: Vec<(Vec<Frame>, RejectReason)> = vec![
        (
            vec![Frame::Hello(hello("a@h", PROTOCOL_VERSION))],
            RejectReason::NameClash,
        ),
        (
            vec![Frame::Hello(hello("b@h", PROTOCOL_VERSION + 1))],
            RejectReason::BadVersion,
        ),
        (vec![Frame::Heartbeat], RejectReason::Protocol),
        (
            vec![Frame::Accept { exchange: true }],
            RejectReason::Protocol,
        ),
        (
            vec![
                Frame::Hello(hello("b@h", PROTOCOL_VERSION)),
                Frame::Members(vec![]),
            ],
            RejectReason::Protocol,
        ),
        (
            vec![Frame::Hello(hello("not a name", PROTOCOL_VERSION))],
            RejectReason::Protocol,
        ),
    ];
    for (frames, want) in cases {
        let mut c = core("a@h", now);
        let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
        drain(&mut c);
        let mut got = None;
        for f in frames.clone() {
            c.handle_frame(now, id, f);
            let acts = drain(&mut c);
            assert!(!emitted(&acts));
            got = got.or(rejected(&acts));
        }
        assert_eq!(got, Some(want), "{frames:?}");
        assert_eq!(c.connection_count(), 0);
    }
}

#[test]
fn a_silent_connection_is_cut_after_the_handshake_timeout() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    drain(&mut c);
    let mut t = now;
    while t < now + Config::default().handshake_timeout + Duration::from_secs(1) {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    assert_eq!(c.connection_count(), 0);
    assert_eq!(c.stats().handshake_failures.get("timeout"), Some(&1));
}

#[test]
fn a_hello_without_an_accept_is_cut_after_the_handshake_timeout() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    drain(&mut c);
    c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
    assert!(!emitted(&drain(&mut c)));
    let mut t = now;
    while t < now + Config::default().handshake_timeout + Duration::from_secs(1) {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        assert!(!emitted(&drain(&mut c)), "never up without an accept");
    }
    assert_eq!(c.connection_count(), 0);
    assert_eq!(c.stats().handshake_failures.get("timeout"), Some(&1));
}

#[test]
fn pending_handshakes_are_capped() {
    use crate::membership::core::MAX_PENDING_HANDSHAKES;
    let now = Instant::now();
    let mut c = core("a@h", now);
    for i in 0..MAX_PENDING_HANDSHAKES + 10 {
        let port = 1 + (i % 60000) as u16;
        c.handle_accepted(now, std::net::SocketAddr::from(([10, 0, 0, 2], port)));
    }
    drain(&mut c);
    assert_eq!(c.connection_count(), MAX_PENDING_HANDSHAKES);
    assert_eq!(c.stats().handshake_failures.get("overload"), Some(&10));
    // Once the stalled ones time out, connections are taken again.
    let mut t = now;
    while c.connection_count() > 0 {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
    }
    c.handle_accepted(t, "10.0.0.3:1".parse().unwrap());
    assert_eq!(c.connection_count(), 1);
}

proptest! {
    /// Whatever frames arrive (inside an authenticated session), in whatever order, the
    /// core neither panics nor lets a peer up but on an `Accept` after its `Hello`.
    #[test]
    fn random_frames_bring_a_peer_up_only_by_hello_and_accept(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
        let now = Instant::now();
        let mut c = core("a@h", now);
        let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
        drain(&mut c);
        // A valid hello first, so the random bytes also reach the accept stage.
        c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
        let mut accept_seen = false;
        for bytes in chunks {
            match wire::decode(&bytes) {
                Ok(f) => {
                    accept_seen |= matches!(f, Frame::Accept { .. });
                    c.handle_frame(now, id, f)
                }
                Err(e) => c.handle_decode_error(now, id, &e),
            }
            let acts = drain(&mut c);
            prop_assert!(!emitted(&acts) || accept_seen);
        }
        prop_assert!(c.members().count() == 0 || accept_seen);
        let _ = ConnId(0);
    }
}

/// A core (advertising 10.0.0.1:45893, bound to `listen` when given) with one topology
/// listing `target`, that dials it and gets its own `Hello` back on that connection.
/// Returns the core and the actions after that `Hello`.
fn own_hello_back_from(target: &str, listen: Option<&str>) -> (Core, Vec<Action>) {
    use std::sync::Arc;
    let now = Instant::now();
    let local = Node {
        name: "a@h".parse().unwrap(),
        addr: "10.0.0.1:45893".parse().unwrap(),
        incarnation: 1,
    };
    let topo = crate::membership::core::TopologyInfo {
        authoritative: false,
        prune_after: Duration::from_secs(30),
    };
    let mut c = Core::new(local, Config::default(), vec![topo], 7, now);
    if let Some(l) = listen {
        c.set_listen_addr(l.parse().unwrap());
    }
    let target: std::net::SocketAddr = target.parse().unwrap();
    c.handle_candidates(now, 0, Arc::new([crate::peer::Peer::new(target)].into()));
    let acts = drain(&mut c);
    let Some(Action::Connect { conn, .. }) = acts.first().cloned() else {
        panic!("{acts:?}")
    };
    c.handle_connected(now, conn);
    let ours = sent_hello(&drain(&mut c));
    c.handle_frame(now, conn, Frame::Hello(ours));
    let acts = drain(&mut c);
    (c, acts)
}

#[test]
fn a_node_that_dials_itself_stops_quietly() {
    // Another address of this same node (127.0.0.1 while it advertises 10.0.0.1 and is
    // bound to the wildcard).
    let (mut c, acts) = own_hello_back_from("127.0.0.1:45893", Some("0.0.0.0:45893"));
    assert_eq!(rejected(&acts), None);
    assert_eq!(c.stats().handshake_failures.get("self"), Some(&1));
    // Never dialled again.
    for _ in 0..100 {
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        assert!(
            !drain(&mut c)
                .iter()
                .any(|a| matches!(a, Action::Connect { .. }))
        );
    }
}

/// Something at a peer's address that relays this node's own connection back to it (a
/// reflection) must not make the node give that address up: the real peer may start
/// there later.
#[test]
fn a_dial_reflected_back_from_another_address_is_retried() {
    let peer: std::net::SocketAddr = "10.0.0.7:45893".parse().unwrap();
    let (mut c, _) = own_hello_back_from("10.0.0.7:45893", None);
    let mut redialled = false;
    for _ in 0..100 {
        let t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        redialled |= drain(&mut c)
            .iter()
            .any(|a| matches!(a, Action::Connect { addr, .. } if *addr == peer));
    }
    assert!(redialled, "the address is dialled again");
}
