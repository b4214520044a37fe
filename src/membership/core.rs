//! The membership state machine, sans IO.
//!
//! [`Core`] holds everything one node knows about its peers: the connections and their
//! handshakes, who is up, whom to dial and when, what each topology currently offers, and
//! who was pruned. It does no IO and never reads a clock: time comes in with every input,
//! and randomness comes from a seeded generator. That is what lets [`super::sim`] run a
//! thousand of them deterministically in virtual time.
//!
//! # The contract
//!
//! - **Getters**: [`Core::local`], [`Core::members`], [`Core::stats`],
//!   [`Core::connection_count`].
//! - **Inputs** (`handle_*`), each with the current time:
//!   [`handle_candidates`](Core::handle_candidates) (a topology's new set),
//!   [`handle_accepted`](Core::handle_accepted) (an inbound connection, authenticated),
//!   [`handle_connected`](Core::handle_connected) /
//!   [`handle_dial_failed`](Core::handle_dial_failed) /
//!   [`handle_auth_failed`](Core::handle_auth_failed) (an outbound dial's outcome),
//!   [`handle_frame`](Core::handle_frame), [`handle_decode_error`](Core::handle_decode_error),
//!   [`handle_closed`](Core::handle_closed) (the peer or the network closed it),
//!   [`handle_timeout`](Core::handle_timeout) (the deadline from `poll_timeout` passed),
//!   [`leave`](Core::leave) (graceful shutdown).
//! - **Outputs** (`poll_*`): after each input the driver drains
//!   [`poll_action`](Core::poll_action) until it returns `None`, performing each
//!   [`Action`] in order (a `Send` queued before a `Close` of the same connection must be
//!   written before the connection is closed), then asks
//!   [`poll_timeout`](Core::poll_timeout) for the next deadline and calls
//!   `handle_timeout` when it is reached.
//!
//! A connection the core closed (`Action::Close`) is forgotten at once: later inputs for it
//! are ignored, and the driver need not report its closing.
//!
//! Every connection the core hears of is authenticated: the driver runs the sealed
//! transport's handshake ([`super::seal`]) first, so the peer has proven the cookie and
//! every frame is sealed. Decisions between rival connections, name clashes and
//! self-dials are therefore made only on authenticated connections.
//!
//! # Events
//!
//! `Action::Emit` carries the [`Event`]s, in order. Per node name they alternate
//! `NodeUp`/`NodeDown`, and a `NodeDown` is always for the incarnation that was up. No
//! event is about the local node. On [`leave`](Core::leave) no events are emitted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::wire::{
    self, DecodeError, Frame, Hello, MAGIC, MemberEntry, PROTOCOL_VERSION, RejectReason,
};
use super::{Config, Stats};
use crate::events::{DownReason, Event};
use crate::node::{Node, NodeName};
use crate::peer::PeerSet;

mod detect;
mod handshake;
mod peers;
use crate::backoff::Backoff;

/// How many inbound connections may be in their handshake at once; more are closed at
/// once (counted as handshake failure `overload`) until some finish or time out.
pub const MAX_PENDING_HANDSHAKES: usize = 2048;

/// Identifies one connection of one core. Chosen by the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What the core asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `addr`; report `handle_connected` or `handle_dial_failed`.
    Connect {
        /// The id the core gave the connection.
        conn: ConnId,
        /// Where to dial.
        addr: SocketAddr,
    },
    /// Write a frame on a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// Close a connection (after writing what was queued before).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Publish a membership event.
    Emit(Event),
    /// Hand a pub/sub message from a peer to the local subscribers of its topic.
    Deliver {
        /// The peer that sent it.
        from: Node,
        /// The topic.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// How a topology takes part in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyInfo {
    /// Whether its set prunes (see DESIGN: discovery vs membership).
    pub authoritative: bool,
    /// Grace period before a peer absent from every authoritative set is pruned.
    pub prune_after: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Dialing,
    Handshake,
    Established,
}

#[derive(Debug)]
struct Conn {
    /// For an outbound connection, the target address dialled.
    target: Option<SocketAddr>,
    phase: Phase,
    opened: Instant,
    last_recv: Instant,
    nonce: [u8; 32],
    /// The peer, once its `Hello` came.
    peer: Option<Node>,
    /// Whether this side wants member lists exchanged.
    exchange: bool,
    /// The peer's nonce, from its `Hello` (set together with `peer`).
    peer_nonce: [u8; 32],
    /// For an inbound connection, the address it came from (for logs of refusals
    /// before the peer has said who it is).
    remote: Option<SocketAddr>,
    /// A probe sent on it and not answered yet (see [`detect`]).
    probe: Option<detect::Probe>,
    /// Whether this node told the others that it suspects the peer on it.
    suspected: bool,
}

#[derive(Debug)]
struct Target {
    /// Topologies whose current set contains this address.
    topologies: BTreeSet<usize>,
    /// When a peer's member list last mentioned it (`None`: never learned that way).
    learned: Option<Instant>,
    /// The node's name, once known (from a strategy or a handshake).
    name: Option<NodeName>,
    dialing: Option<ConnId>,
    retry_at: Instant,
    backoff: Backoff,
    /// Whether the current run of failures was already logged as a warning.
    warned: bool,
    /// The address turned out to be this node's own.
    is_self: bool,
}

#[derive(Debug)]
struct UpPeer {
    node: Node,
    /// The one established connection to it; `None` for a moment while the peer moves
    /// the pair onto another connection (see `on_duplicate_cut`).
    conn: Option<ConnId>,
    /// With `conn == None`: when the peer counts as down if no connection took over.
    transfer_until: Option<Instant>,
    /// When it came up (a peer that goes silent soon after keeps its redial backoff).
    since: Instant,
}

#[derive(Debug, Default)]
struct TopologyState {
    info: Option<TopologyInfo>,
    peers: Arc<PeerSet>,
    names: HashSet<NodeName>,
    addrs: HashSet<SocketAddr>,
}

/// The membership state machine of one node. See the [module docs](self).
pub struct Core {
    config: Config,
    local: Node,
    /// The address the listener is bound to, when the driver said.
    listen: Option<SocketAddr>,
    rng: StdRng,
    topologies: Vec<TopologyState>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    /// Handshaking connections by the peer name their `Hello` gave.
    handshaking: HashMap<NodeName, Vec<ConnId>>,
    up: BTreeMap<NodeName, UpPeer>,
    up_by_addr: HashMap<SocketAddr, NodeName>,
    targets: BTreeMap<SocketAddr, Target>,
    /// Up peers that have been in an authoritative set (only those can be pruned).
    was_authoritative: HashSet<NodeName>,
    /// Up peers absent from every authoritative set, with their prune deadline.
    absent: BTreeMap<NodeName, Instant>,
    /// Pruned peers: name, advertised address, when. Refused by name or address until
    /// an authoritative set lists either again (or `forget_after` passes).
    pruned: HashMap<NodeName, (SocketAddr, Instant)>,
    /// Warnings about refusals, rate-limited per reason (never per source: sources can
    /// be many).
    warn_limit: crate::warn_limit::WarnLimit,
    digest: u64,
    actions: VecDeque<Action>,
    next_tick: Instant,
    next_sync: Instant,
    stats: Stats,
    left: bool,
    // ----- failure detection (see `detect`) -----
    /// The members up, and this node, by ring position.
    ring: BTreeSet<(u64, NodeName)>,
    /// The peers this node watches (the ones after it on the ring).
    watching: HashSet<NodeName>,
    /// The peers this node sends heartbeats to (its monitors: the ones before it).
    beat_to: HashSet<NodeName>,
    /// Peers that probed this node lately, and until when they get heartbeats.
    requesters: HashMap<NodeName, Instant>,
    /// The local-health score (0–8): how starved this node is.
    health: u32,
    /// When this node last swept its quiet members with probes.
    last_sweep: Option<Instant>,
    /// The detector's next deadline.
    next_check: Instant,
    /// The earliest deadline of the probes sent during one `detect`.
    pending_deadline: Option<Instant>,
}

impl Core {
    /// A core for `local`, with one [`TopologyInfo`] per topology (indexed as in
    /// [`handle_candidates`](Self::handle_candidates)) and a seed for its randomness
    /// (nonces, jitter). In production the seed must come from the OS's entropy.
    pub fn new(
        local: Node,
        config: Config,
        topologies: Vec<TopologyInfo>,
        seed: u64,
        now: Instant,
    ) -> Self {
        let digest = wire::member_hash(local.name.as_str(), local.incarnation);
        let local_name = local.name.clone();
        let next_tick = now + config.heartbeat_interval;
        let next_sync = now + config.sync_interval;
        Core {
            topologies: topologies
                .into_iter()
                .map(|info| TopologyState {
                    info: Some(info),
                    ..TopologyState::default()
                })
                .collect(),
            config,
            local,
            listen: None,
            rng: StdRng::seed_from_u64(seed),
            conns: BTreeMap::new(),
            next_conn: 0,
            handshaking: HashMap::new(),
            up: BTreeMap::new(),
            up_by_addr: HashMap::new(),
            targets: BTreeMap::new(),
            was_authoritative: HashSet::new(),
            absent: BTreeMap::new(),
            pruned: HashMap::new(),
            warn_limit: crate::warn_limit::WarnLimit::default(),
            digest,
            actions: VecDeque::new(),
            next_tick,
            next_sync,
            stats: Stats::default(),
            left: false,
            ring: BTreeSet::from([detect::ring_key(&local_name)]),
            watching: HashSet::new(),
            beat_to: HashSet::new(),
            requesters: HashMap::new(),
            health: 0,
            last_sweep: None,
            next_check: next_tick,
            pending_deadline: None,
        }
    }

    /// Tells the core the address its listener is bound to (a wildcard IP included), so
    /// that it recognises a dial of its own listener by another of its addresses.
    pub fn set_listen_addr(&mut self, addr: SocketAddr) {
        self.listen = Some(addr);
    }

    // ----- getters -----

    /// This node.
    pub fn local(&self) -> &Node {
        &self.local
    }

    /// The peers that are up, by name.
    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.up.values().map(|u| &u.node)
    }

    /// Whether the named peer is up.
    pub fn is_up(&self, name: &NodeName) -> bool {
        self.up.contains_key(name)
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// How many connections the core tracks (dialling, handshaking, established).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Queues a pub/sub message to one peer. Returns `false` (and sends nothing) when the
    /// peer is not up.
    pub fn send_message(&mut self, to: &NodeName, topic: &str, payload: &[u8]) -> bool {
        let Some(conn) = self.up.get(to).and_then(|u| u.conn) else {
            return false;
        };
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Message {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            },
        });
        true
    }

    /// Queues a pub/sub message to every peer that is up. Returns how many.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> usize {
        let conns: Vec<ConnId> = self.up.values().filter_map(|u| u.conn).collect();
        for conn in &conns {
            self.actions.push_back(Action::Send {
                conn: *conn,
                frame: Frame::Message {
                    topic: topic.to_owned(),
                    payload: payload.to_vec(),
                },
            });
        }
        conns.len()
    }

    /// The established connection to the named peer, if it is up.
    pub fn connection_of(&self, name: &NodeName) -> Option<ConnId> {
        self.up.get(name).and_then(|u| u.conn)
    }

    // ----- outputs -----

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called. `None` after
    /// [`leave`](Self::leave).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.left).then_some(self.next_tick.min(self.next_check))
    }

    // ----- inputs -----

    /// A topology's strategy reported a new full set of candidates.
    pub fn handle_candidates(&mut self, now: Instant, topology: usize, peers: Arc<PeerSet>) {
        if self.left {
            return;
        }
        if topology >= self.topologies.len() {
            self.topologies
                .resize_with(topology + 1, TopologyState::default);
        }
        let old = std::mem::replace(&mut self.topologies[topology].peers, peers.clone());
        if Arc::ptr_eq(&old, &peers) || *old == *peers {
            // The same set again (a strategy's set came back to the one held): only
            // what is due.
            self.dial_due(now);
            return;
        }
        let old_addrs: HashSet<SocketAddr> = old.iter().map(|p| p.addr).collect();
        let new_addrs: HashSet<SocketAddr> = peers.iter().map(|p| p.addr).collect();
        let removed: Vec<SocketAddr> = old_addrs.difference(&new_addrs).copied().collect();
        for addr in removed {
            if let Some(t) = self.targets.get_mut(&addr) {
                t.topologies.remove(&topology);
            }
            self.drop_target_if_unwanted(addr);
        }
        let st = &mut self.topologies[topology];
        st.names = peers.iter().filter_map(|p| p.name.clone()).collect();
        st.addrs = peers.iter().map(|p| p.addr).collect();
        let authoritative = st.info.as_ref().is_some_and(|i| i.authoritative);
        if authoritative && !self.pruned.is_empty() {
            let (names, addrs) = (&st.names, &st.addrs);
            self.pruned
                .retain(|name, (addr, _)| !names.contains(name) && !addrs.contains(addr));
        }
        for p in peers.iter() {
            if p.name.as_ref() == Some(&self.local.name) || p.addr == self.local.addr {
                continue;
            }
            let t = self
                .targets
                .entry(p.addr)
                .or_insert_with(|| new_target(&self.config, now));
            t.topologies.insert(topology);
            if p.name.is_some() {
                t.name = p.name.clone();
            }
            if !old_addrs.contains(&p.addr) {
                // Listed again (heard by gossip again, back in a strategy's set): it is
                // likely reachable now, so it is dialled at once, not after the backoff
                // its failures built up.
                t.retry_at = now;
            }
        }
        self.check_pruning(now);
        self.dial_due(now);
    }

    /// An inbound connection was accepted from `remote`. Returns its id; the core queues
    /// its `Hello` at once.
    pub fn handle_accepted(&mut self, now: Instant, remote: SocketAddr) -> ConnId {
        let pending = self
            .conns
            .values()
            .filter(|c| c.target.is_none() && c.phase == Phase::Handshake)
            .count();
        let id = self.new_conn(now, None, Phase::Handshake, false);
        if let Some(c) = self.conns.get_mut(&id) {
            c.remote = Some(remote);
        }
        if pending >= MAX_PENDING_HANDSHAKES {
            // A flood of connections that never finish their handshake: refuse new ones
            // until the stalled ones time out, rather than hold without bound.
            self.count_failure("overload");
            self.log_refusal(now, None, RejectReason::Protocol, || {
                format!(
                    "refused a connection from {remote}: {MAX_PENDING_HANDSHAKES} handshakes \
                     are already pending"
                )
            });
            self.close(id);
            return id;
        }
        if self.left {
            self.close(id);
            return id;
        }
        self.send_hello(id);
        id
    }

    /// An outbound connection the core asked for is open.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // Closed by the core meanwhile: make sure the driver drops it.
            self.actions.push_back(Action::Close { conn });
            return;
        };
        if c.phase != Phase::Dialing {
            return;
        }
        c.phase = Phase::Handshake;
        c.last_recv = now;
        *self.stats.connect_attempts.entry("ok").or_default() += 1;
        self.send_hello(conn);
    }

    /// An outbound connection was opened but its sealed handshake failed; `reason` is
    /// the counter's name (`bad_cookie`, `bad_version`, …), `detail` says what happened.
    /// The address is retried with backoff; the failure is one warning per run.
    pub fn handle_auth_failed(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: &'static str,
        detail: &str,
    ) {
        let Some(c) = self.close(conn) else {
            return;
        };
        *self.stats.connect_attempts.entry("ok").or_default() += 1;
        self.count_failure(reason);
        let Some(addr) = c.target else { return };
        let hint = match reason {
            "bad_cookie" => RejectReason::BadCookie.fix(),
            "bad_version" => RejectReason::BadVersion.fix(),
            _ => "",
        };
        if let Some(t) = self.targets.get_mut(&addr)
            && !t.warned
        {
            t.warned = true;
            let peer = t.name.as_ref().map(|n| n.to_string());
            crate::warn_limit::log(&mut self.warn_limit, now, reason, || {
                format!(
                    "peer at {addr}{} reached but refused: {detail}{hint}",
                    peer.map(|p| format!(" ({p})")).unwrap_or_default()
                )
            });
        }
        self.target_failed(now, addr, reason);
    }

    /// An outbound dial failed; `kind` says how (`refused`, `timeout`, `error`).
    pub fn handle_dial_failed(&mut self, now: Instant, conn: ConnId, kind: &'static str) {
        let Some(c) = self.close(conn) else {
            return;
        };
        *self.stats.connect_attempts.entry(kind).or_default() += 1;
        if let Some(addr) = c.target {
            self.target_failed(now, addr, &format!("connect: {kind}"));
        }
    }

    /// The connection closed, or failed, without the core asking.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match c.phase {
            Phase::Established => {
                if let Some(name) = c.peer.as_ref().map(|p| p.name.clone()) {
                    self.down(now, &name, DownReason::ConnectionClosed);
                }
                self.close(conn);
            }
            Phase::Dialing => self.handle_dial_failed(now, conn, "error"),
            Phase::Handshake => {
                self.count_failure("closed");
                if let Some(addr) = self.close(conn).and_then(|c| c.target) {
                    self.target_failed(now, addr, "closed during handshake");
                }
            }
        }
    }

    /// The bytes of a frame could not be decoded: the connection is cut.
    pub fn handle_decode_error(&mut self, now: Instant, conn: ConnId, error: &DecodeError) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let reason = match error {
            DecodeError::BadVersion(_) => RejectReason::BadVersion,
            DecodeError::Malformed(_) | DecodeError::Sealed(_) => RejectReason::Protocol,
        };
        *self
            .stats
            .transport_errors
            .entry(error.reason())
            .or_default() += 1;
        if c.phase == Phase::Established {
            self.stats.protocol_errors += 1;
            let peer = c.peer.clone();
            match &peer {
                Some(p) => tracing::warn!(peer = %p.name, %error, "cutting connection: bad frame"),
                None => tracing::warn!(%error, "cutting connection: bad frame"),
            }
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Reject(reason),
            });
            if let Some(p) = peer {
                self.down(now, &p.name, DownReason::ConnectionClosed);
            }
            self.close(conn);
        } else {
            self.refuse(now, conn, reason, &error.to_string());
        }
    }

    /// A frame arrived on a connection.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_recv = now;
        let phase = c.phase;
        match (phase, frame) {
            (_, Frame::Reject(reason)) => self.rejected_by_peer(now, conn, reason),
            (Phase::Handshake, Frame::Hello(h)) if c.peer.is_none() => self.on_hello(now, conn, h),
            (Phase::Handshake, Frame::Accept { exchange }) if c.peer.is_some() => {
                self.on_accept(now, conn, exchange)
            }
            (Phase::Established, Frame::Heartbeat) => {}
            (Phase::Established, Frame::Probe) => {
                if let Some(p) = c.peer.as_ref().map(|p| p.name.clone()) {
                    self.on_probe(now, conn, &p);
                }
            }
            (Phase::Established, Frame::Suspect { name, incarnation }) => {
                self.on_suspect(now, &name, incarnation)
            }
            (Phase::Established, Frame::Members(list)) => self.learn(now, list),
            (Phase::Established, Frame::Sync { digest, reply }) => {
                if digest != self.digest {
                    let list = self.member_list();
                    self.actions.push_back(Action::Send {
                        conn,
                        frame: Frame::Members(list),
                    });
                    if !reply {
                        self.actions.push_back(Action::Send {
                            conn,
                            frame: Frame::Sync {
                                digest: self.digest,
                                reply: true,
                            },
                        });
                    }
                }
            }
            (Phase::Established, Frame::Leave) => {
                if let Some(p) = c.peer.clone() {
                    // It is gone: do not keep dialling it because some peer listed it.
                    if let Some(t) = self.targets.get_mut(&p.addr) {
                        t.learned = None;
                    }
                    self.down(now, &p.name, DownReason::Left);
                }
                self.close(conn);
            }
            (Phase::Established, Frame::Message { topic, payload }) => {
                if let Some(from) = c.peer.clone() {
                    self.actions.push_back(Action::Deliver {
                        from,
                        topic,
                        payload,
                    });
                }
            }
            (phase, frame) => {
                let kind = frame_kind(&frame);
                if phase == Phase::Established {
                    self.stats.protocol_errors += 1;
                    *self.stats.transport_errors.entry("unexpected").or_default() += 1;
                    let peer = c.peer.clone();
                    match &peer {
                        Some(p) => {
                            tracing::warn!(peer = %p.name, frame = kind, "cutting connection: unexpected frame")
                        }
                        None => {
                            tracing::warn!(frame = kind, "cutting connection: unexpected frame")
                        }
                    }
                    self.actions.push_back(Action::Send {
                        conn,
                        frame: Frame::Reject(RejectReason::Protocol),
                    });
                    if let Some(p) = peer {
                        self.down(now, &p.name, DownReason::ConnectionClosed);
                    }
                    self.close(conn);
                } else {
                    self.refuse(
                        now,
                        conn,
                        RejectReason::Protocol,
                        &format!("unexpected {kind} frame"),
                    );
                }
            }
        }
    }

    /// The deadline from [`poll_timeout`](Self::poll_timeout) passed: heartbeats,
    /// timeouts, pruning, anti-entropy, redials.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left || now < self.next_tick.min(self.next_check) {
            return;
        }
        let tick = now >= self.next_tick;
        if !tick {
            // Only the failure detector's own deadline.
            self.detect(now, false);
            return;
        }
        self.note_tick_lateness(now.saturating_duration_since(self.next_tick));
        self.next_tick = now + self.config.heartbeat_interval;
        let pending: Vec<(ConnId, Phase, Instant)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Established)
            .map(|(id, c)| (*id, c.phase, c.opened))
            .collect();
        for (id, phase, opened) in pending {
            if now < opened + self.config.handshake_timeout {
                continue;
            }
            if phase == Phase::Dialing {
                self.handle_dial_failed(now, id, "timeout");
            } else {
                self.count_failure("timeout");
                tracing::debug!(conn = id.0, "handshake timed out");
                if let Some(addr) = self.close(id).and_then(|c| c.target) {
                    self.target_failed(now, addr, "handshake timed out");
                }
            }
        }
        self.detect(now, true);
        let stranded: Vec<NodeName> = self
            .up
            .iter()
            .filter(|(_, u)| u.conn.is_none() && u.transfer_until.is_some_and(|t| now >= t))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stranded {
            self.down(now, &name, DownReason::ConnectionClosed);
        }
        self.check_pruning(now);
        self.expire(now);
        if now >= self.next_sync {
            let jitter = self.rng.gen_range(0.8..1.2);
            self.next_sync = now + self.config.sync_interval.mul_f64(jitter);
            if !self.up.is_empty() {
                let i = self.rng.gen_range(0..self.up.len());
                if let Some(conn) = self.up.values().nth(i).and_then(|u| u.conn) {
                    self.actions.push_back(Action::Send {
                        conn,
                        frame: Frame::Sync {
                            digest: self.digest,
                            reply: false,
                        },
                    });
                }
            }
        }
        self.dial_due(now);
    }

    /// Graceful shutdown: tells every peer this node is leaving, closes every connection.
    /// Emits no events; the core is inert afterwards.
    pub fn leave(&mut self, _now: Instant) {
        if self.left {
            return;
        }
        self.left = true;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if self
                .conns
                .get(&id)
                .is_some_and(|c| c.phase == Phase::Established)
            {
                self.actions.push_back(Action::Send {
                    conn: id,
                    frame: Frame::Leave,
                });
            }
            self.close(id);
        }
        self.up.clear();
        self.up_by_addr.clear();
        self.targets.clear();
        self.ring.clear();
        self.watching.clear();
        self.beat_to.clear();
    }
}

fn new_target(config: &Config, now: Instant) -> Target {
    Target {
        topologies: BTreeSet::new(),
        learned: None,
        name: None,
        dialing: None,
        retry_at: now,
        backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
        warned: false,
        is_self: false,
    }
}

fn frame_kind(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Accept { .. } => "accept",
        Frame::Reject(_) => "reject",
        Frame::Heartbeat => "heartbeat",
        Frame::Members(_) => "members",
        Frame::Sync { .. } => "sync",
        Frame::Leave => "leave",
        Frame::Message { .. } => "message",
        Frame::Probe => "probe",
        Frame::Suspect { .. } => "suspect",
    }
}
