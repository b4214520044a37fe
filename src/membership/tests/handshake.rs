//! The handshake, driven by hand on one core.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::cookie::Cookie;
use crate::membership::Config;
use crate::membership::core::{Action, ConnId, Core};
use crate::membership::wire::{
    self, Frame, Hello, MAGIC, PROTOCOL_VERSION, ProofSide, RejectReason,
};
use crate::node::Node;

fn core(name: &str, now: Instant) -> Core {
    let local = Node {
        name: name.parse().unwrap(),
        addr: "10.0.0.1:45893".parse().unwrap(),
        incarnation: 1,
    };
    Core::new(
        local,
        Cookie::new("secret"),
        Config::default(),
        vec![],
        7,
        now,
    )
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

#[test]
fn a_correct_proof_brings_the_peer_up() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    let ours = sent_hello(&drain(&mut c));
    c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
    let acts = drain(&mut c);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send {
            frame: Frame::Proof { .. },
            ..
        }
    )));
    let mac = wire::proof_mac(
        &Cookie::new("secret"),
        &ProofSide {
            name: "b@h",
            incarnation: 2,
            nonce: &[9; 32],
        },
        &ProofSide {
            name: "a@h",
            incarnation: 1,
            nonce: &ours.nonce,
        },
    );
    c.handle_frame(
        now,
        id,
        Frame::Proof {
            mac,
            exchange: false,
        },
    );
    let acts = drain(&mut c);
    assert!(
        matches!(acts.first(), Some(Action::Emit(crate::Event::NodeUp(n))) if n.name.as_str() == "b@h")
    );
    assert_eq!(c.members().count(), 1);
}

#[test]
fn a_wrong_proof_is_refused_as_bad_cookie() {
    let now = Instant::now();
    let mut c = core("a@h", now);
    let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
    drain(&mut c);
    c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
    drain(&mut c);
    c.handle_frame(
        now,
        id,
        Frame::Proof {
            mac: [0; 32],
            exchange: false,
        },
    );
    let acts = drain(&mut c);
    assert_eq!(rejected(&acts), Some(RejectReason::BadCookie));
    assert!(!emitted(&acts));
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Close { conn } if *conn == id))
    );
    assert_eq!(c.stats().handshake_failures.get("bad_cookie"), Some(&1));
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
            vec![Frame::Proof {
                mac: [0; 32],
                exchange: true,
            }],
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
fn a_hello_without_a_proof_is_cut_after_the_handshake_timeout() {
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
        assert!(!emitted(&drain(&mut c)), "never up without a proof");
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
    /// Whatever bytes arrive, in whatever order, the core neither panics nor lets a
    /// peer up without a proof.
    #[test]
    fn random_frames_never_bring_a_peer_up(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..20)) {
        let now = Instant::now();
        let mut c = core("a@h", now);
        let id = c.handle_accepted(now, "10.0.0.2:1".parse().unwrap());
        drain(&mut c);
        // A valid hello first, so the random bytes also reach the proof stage.
        c.handle_frame(now, id, Frame::Hello(hello("b@h", PROTOCOL_VERSION)));
        for bytes in chunks {
            match wire::decode(&bytes) {
                Ok(f) => c.handle_frame(now, id, f),
                Err(e) => c.handle_decode_error(now, id, &e),
            }
            prop_assert!(!emitted(&drain(&mut c)));
        }
        prop_assert_eq!(c.members().count(), 0);
        let _ = ConnId(0);
    }
}

#[test]
fn a_node_that_dials_itself_stops_quietly() {
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
    let mut c = Core::new(
        local,
        Cookie::new("secret"),
        Config::default(),
        vec![topo],
        7,
        now,
    );
    // Another address of this same node (say 127.0.0.1 while it advertises 10.0.0.1).
    let other: std::net::SocketAddr = "127.0.0.1:45893".parse().unwrap();
    c.handle_candidates(
        now,
        0,
        Arc::new([crate::strategies::Peer::new(other)].into()),
    );
    let acts = drain(&mut c);
    let Some(Action::Connect { conn, .. }) = acts.first().cloned() else {
        panic!("{acts:?}")
    };
    c.handle_connected(now, conn);
    let ours = sent_hello(&drain(&mut c));
    c.handle_frame(now, conn, Frame::Hello(ours));
    let acts = drain(&mut c);
    assert_eq!(rejected(&acts), None);
    assert!(c.stats().handshake_failures.is_empty());
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
