//! The membership core inside an authenticated session: the input is the plaintext
//! frame stream a peer that holds the cookie sends (each frame a 4-byte big-endian
//! length and its postcard bytes, as inside the opened records), deframed as the
//! driver does (`Opener::next_frame`, then `wire::decode`; a bad frame ends the
//! stream), then the connection closes. The first byte picks the setting:
//!
//! - bit 0: the connection is inbound (clear) or one this node dialled (set);
//! - bit 1: the topology is authoritative (prunes);
//! - bit 2: a second connection of the other kind, every frame fed to both in turn
//!   (a rival connection of the same pair);
//! - bits 3-4: how far the clock moves per frame: 50 ms, 250 ms, 1 s, 4 s.
//!
//! Dials the core asks for beyond those fail at once. Whatever comes: no panic; the
//! core's first frame on a connection is its `Hello`, and it sends `Accept` only after
//! the peer's; a `NodeUp` is only ever emitted on feeding an `Accept` to a connection
//! that had a `Hello` before, and it is that `Hello`'s node; events are never about the
//! local node and, per peer, alternate up and down (the down for the instance that was
//! up); messages are delivered only from a peer that is up; after the connections
//! close and the timeouts pass, no peer is up and the core holds no connection.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rallypoint::events::Event;
use rallypoint::membership::Config;
use rallypoint::membership::core::{Action, ConnId, Core, TopologyInfo};
use rallypoint::membership::wire::{self, DecodeError, Frame};
use rallypoint::strategies::{Peer, PeerSet};
use rallypoint::{Node, NodeName};
use rallypoint_fuzz::{MAX_FRAME, PlainFrames};

const STEPS: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
];

/// What the harness fed a connection and what the core sent on it.
#[derive(Default)]
struct Track {
    /// The first `Hello` fed: its node when its name is valid.
    hello: Option<Option<Node>>,
    /// Whether the core has sent anything on it (its `Hello` must come first).
    sent: bool,
}

struct Harness {
    core: Core,
    local: Node,
    conns: HashMap<ConnId, Track>,
    /// The peers up, as the events tell.
    up: HashMap<NodeName, Node>,
    /// The frame just fed, while its actions are drained: the connection and whether it
    /// was an `Accept`.
    feeding: Option<(ConnId, bool)>,
}

impl Harness {
    /// Performs the core's actions; dials it asks for fail at once, except the one
    /// returned when `want_dial` (the connection under test).
    fn drain(&mut self, now: Instant, want_dial: bool) -> Option<ConnId> {
        let mut wanted = None;
        loop {
            let mut failed = Vec::new();
            while let Some(a) = self.core.poll_action() {
                match a {
                    Action::Connect { conn, .. } => {
                        if want_dial && wanted.is_none() {
                            wanted = Some(conn);
                        } else {
                            failed.push(conn);
                        }
                    }
                    Action::Send { conn, frame } => {
                        if let Some(t) = self.conns.get_mut(&conn) {
                            assert!(
                                t.sent || matches!(frame, Frame::Hello(_)),
                                "the core's first frame is not its Hello: {frame:?}"
                            );
                            t.sent = true;
                            if matches!(frame, Frame::Accept { .. }) {
                                assert!(t.hello.is_some(), "Accept before the peer's Hello");
                            }
                        }
                    }
                    Action::Close { .. } => {}
                    Action::Emit(event) => self.event(event),
                    Action::Deliver { from, .. } => {
                        assert_eq!(
                            self.up.get(&from.name),
                            Some(&from),
                            "a message delivered from a peer that is not up"
                        );
                    }
                }
            }
            if failed.is_empty() {
                return wanted;
            }
            for conn in failed {
                self.core.handle_dial_failed(now, conn, "refused");
            }
        }
    }

    fn event(&mut self, event: Event) {
        assert_ne!(
            event.node().name,
            self.local.name,
            "an event about the local node: {event:?}"
        );
        match event {
            Event::NodeUp(node) => {
                let Some((conn, true)) = self.feeding else {
                    panic!("{node} came up but not on an Accept");
                };
                let hello = self.conns.get(&conn).and_then(|t| t.hello.clone());
                assert_eq!(
                    hello,
                    Some(Some(node.clone())),
                    "{node} came up without its Hello on that connection"
                );
                if let Some(old) = self.up.insert(node.name.clone(), node.clone()) {
                    panic!("{node} came up while {old} was up");
                }
            }
            Event::NodeDown { node, .. } => {
                assert_eq!(
                    self.up.remove(&node.name),
                    Some(node.clone()),
                    "{node} went down but was not up"
                );
            }
        }
    }

    fn feed(&mut self, now: Instant, conn: ConnId, frame: Result<Frame, DecodeError>) {
        match frame {
            Ok(frame) => {
                let t = self.conns.entry(conn).or_default();
                if let Frame::Hello(h) = &frame
                    && t.hello.is_none()
                {
                    t.hello = Some(h.name.parse().ok().map(|name| Node {
                        name,
                        addr: h.addr,
                        incarnation: h.incarnation,
                    }));
                }
                self.feeding = Some((conn, matches!(frame, Frame::Accept { .. })));
                self.core.handle_frame(now, conn, frame);
            }
            Err(e) => {
                self.feeding = Some((conn, false));
                self.core.handle_decode_error(now, conn, &e);
            }
        }
        self.drain(now, false);
        self.feeding = None;
    }

    fn tick(&mut self, now: Instant) {
        if let Some(t) = self.core.poll_timeout()
            && t <= now
        {
            self.core.handle_timeout(now);
            self.drain(now, false);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, stream)) = data.split_first() else {
        return;
    };
    let step = STEPS[usize::from(side >> 3) & 3];
    let mut now = Instant::now();
    let local = Node {
        name: "fuzz@10.0.0.1".parse().expect("valid name"),
        addr: "10.0.0.1:45893".parse().expect("valid address"),
        incarnation: 1,
    };
    let topology = TopologyInfo {
        authoritative: side & 2 != 0,
        prune_after: Duration::from_secs(1),
    };
    let config = Config::default();
    assert_eq!(config.max_frame as usize, MAX_FRAME);
    let mut h = Harness {
        core: Core::new(local.clone(), config, vec![topology], u64::from(side), now),
        local,
        conns: HashMap::new(),
        up: HashMap::new(),
        feeding: None,
    };
    let dialled = side & 1 != 0;
    let both = side & 4 != 0;
    let mut conns = Vec::new();
    if dialled || both {
        let peer: SocketAddr = "10.0.0.2:45893".parse().expect("valid address");
        let mut set = PeerSet::new();
        set.insert(Peer::new(peer));
        h.core.handle_candidates(now, 0, Arc::new(set));
        let Some(conn) = h.drain(now, true) else {
            panic!("the core does not dial its topology's peer");
        };
        h.conns.insert(conn, Track::default());
        h.core.handle_connected(now, conn);
        h.drain(now, false);
        conns.push(conn);
    }
    if !dialled || both {
        let conn = h
            .core
            .handle_accepted(now, "10.0.0.2:40000".parse().expect("valid address"));
        h.conns.insert(conn, Track::default());
        h.drain(now, false);
        conns.push(conn);
    }
    if !dialled {
        conns.reverse();
    }
    for frame in PlainFrames::new(stream, MAX_FRAME) {
        let (frame, last) = match frame {
            Ok(bytes) => match wire::decode(bytes) {
                Ok(f) => (Ok(f), false),
                Err(e) => (Err(e), true),
            },
            Err(e) => (Err(DecodeError::Sealed(e)), true),
        };
        for &conn in &conns {
            h.feed(now, conn, frame.clone());
        }
        now += step;
        h.tick(now);
        if last {
            break;
        }
    }
    for &conn in &conns {
        h.core.handle_closed(now, conn);
        h.drain(now, false);
    }
    for _ in 0..3 {
        now += Duration::from_secs(10);
        h.tick(now);
    }
    assert!(
        h.up.is_empty(),
        "still up after every connection closed: {:?}",
        h.up
    );
    assert_eq!(h.core.members().count(), 0);
    assert_eq!(
        h.core.connection_count(),
        0,
        "connections left after close and timeouts"
    );
});
