//! The handshake inside the sealed transport: hello, accept, refusals.

use std::net::SocketAddr;
use std::time::Instant;

use rand::RngCore;

use super::*;

impl Core {
    // ----- handshake -----

    pub(super) fn new_conn(
        &mut self,
        now: Instant,
        target: Option<SocketAddr>,
        phase: Phase,
        exchange: bool,
    ) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        self.conns.insert(
            id,
            Conn {
                target,
                phase,
                opened: now,
                last_recv: now,
                nonce,
                peer: None,
                exchange,
                peer_nonce: [0; 32],
                remote: None,
                probe: None,
                suspected: false,
            },
        );
        id
    }

    pub(super) fn send_hello(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let frame = Frame::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            name: self.local.name.to_string(),
            incarnation: self.local.incarnation,
            addr: self.local.addr,
            nonce: c.nonce,
        });
        self.actions.push_back(Action::Send { conn, frame });
    }

    pub(super) fn on_hello(&mut self, now: Instant, conn: ConnId, h: Hello) {
        if h.magic != MAGIC || h.version != PROTOCOL_VERSION {
            return self.refuse(
                now,
                conn,
                RejectReason::BadVersion,
                &format!("protocol version {}", h.version),
            );
        }
        let name: NodeName = match h.name.parse() {
            Ok(n) => n,
            Err(e) => return self.refuse(now, conn, RejectReason::Protocol, &e.to_string()),
        };
        let peer = Node {
            name: name.clone(),
            addr: h.addr,
            incarnation: h.incarnation,
        };
        let target = self.conns.get(&conn).and_then(|c| c.target);
        if let Some(addr) = target
            && let Some(t) = self.targets.get_mut(&addr)
        {
            t.name = Some(name.clone());
        }
        if name == self.local.name && h.incarnation == self.local.incarnation {
            // This node talking to itself. When the address dialled is its own (its port,
            // on loopback or its advertised IP), a strategy listed it: never dial it
            // again, quietly. Otherwise something at that address relayed this node's
            // own connection back to it: only a failed dial (with backoff), so a real
            // peer that starts there later is reached.
            self.count_failure("self");
            let closed = self.close(conn);
            if let Some(addr) = closed.and_then(|c| c.target) {
                if self.is_own_address(addr) {
                    tracing::debug!(%addr, "dialled itself; ignoring that address");
                    if let Some(t) = self.targets.get_mut(&addr) {
                        t.is_self = true;
                    }
                } else {
                    tracing::debug!(%addr, "a dial came back to this node; retrying later");
                    if let Some(t) = self.targets.get_mut(&addr) {
                        t.retry_at = now + t.backoff.next_delay(&mut self.rng);
                    }
                }
            }
            return;
        }
        if name == self.local.name {
            return self.refuse(
                now,
                conn,
                RejectReason::NameClash,
                &format!("{} uses this node's name", h.addr),
            );
        }
        if self.is_pruned(&peer) {
            return self.refuse(
                now,
                conn,
                RejectReason::Pruned,
                "pruned by an authoritative topology",
            );
        }
        if let Some(old) = self.up.get(&name)
            && old.node.incarnation != peer.incarnation
            && let Some(heard) = self.still_alive(now, old.conn)
        {
            // Another instance with this name is up and was heard from just now: two
            // live nodes share a name. The one up first stays; the newcomer is refused
            // before either side reports anything (it retries with growing backoff), so
            // observers see no flapping. A real restart gets in as soon as the old
            // instance's connection closes or times out.
            let detail = format!(
                "{} is up here as another instance (incarnation {}, {}, heard {} ms ago); \
                 give every node its own name (--name)",
                peer.name,
                old.node.incarnation,
                old.node.addr,
                heard.as_millis()
            );
            if let Some(e) = old.conn {
                self.probe_if_quiet(now, e);
            }
            return self.refuse(now, conn, RejectReason::NameClash, &detail);
        }
        let exchange =
            self.conns.get(&conn).is_some_and(|c| c.exchange) || self.in_any_topology(&peer);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.exchange = exchange;
        c.peer = Some(peer.clone());
        c.peer_nonce = h.nonce;
        // Two connections between the same pair (simultaneous dials, a redial): both sides
        // keep the one with the smaller key (dialler's name, dialler's nonce), which both
        // know. A rival still handshaking is refused now; an established one is only
        // replaced once this connection has proven itself (in `on_proof`).
        let mine = self.conn_key(conn);
        let mut rivals: Vec<ConnId> = self.handshaking.get(&name).cloned().unwrap_or_default();
        // An established connection that has gone quiet is no rival: the peer dialling
        // again means it gave that one up (its side is closed; ours is half-open).
        if let Some(u) = self.up.get(&name)
            && u.node.incarnation == peer.incarnation
            && let Some(e) = u.conn
            && self.still_alive(now, Some(e)).is_some()
        {
            self.probe_if_quiet(now, e);
            rivals.push(e);
        }
        for rival in rivals {
            let same_instance = self
                .conns
                .get(&rival)
                .and_then(|r| r.peer.as_ref())
                .is_some_and(|p| p.incarnation == peer.incarnation);
            if rival == conn || !same_instance {
                continue;
            }
            if self.conn_key(rival) < mine {
                return self.refuse(
                    now,
                    conn,
                    RejectReason::Duplicate,
                    "a connection to this peer exists",
                );
            }
            if self
                .conns
                .get(&rival)
                .is_some_and(|r| r.phase == Phase::Handshake)
            {
                self.refuse(
                    now,
                    rival,
                    RejectReason::Duplicate,
                    "superseded by a simultaneous dial",
                );
            }
        }
        self.handshaking.entry(name).or_default().push(conn);
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Accept { exchange },
        });
    }

    /// The peer took the connection (its `Accept`, after this side sent its own).
    pub(super) fn on_accept(&mut self, now: Instant, conn: ConnId, peer_exchange: bool) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let Some(peer) = c.peer.clone() else {
            return self.refuse(now, conn, RejectReason::Protocol, "accept before hello");
        };
        let exchange = c.exchange || peer_exchange;
        self.unlist_handshaking(conn, &peer.name);
        let mut already_up = false;
        if let Some(old) = self.up.get(&peer.name) {
            if old.node.incarnation == peer.incarnation {
                // The same instance over a second connection: keep one, silently.
                match old.conn {
                    Some(e)
                        if self.conn_key(e) < self.conn_key(conn)
                            && self.still_alive(now, Some(e)).is_some() =>
                    {
                        self.probe_if_quiet(now, e);
                        self.count_failure("duplicate");
                        self.actions.push_back(Action::Send {
                            conn,
                            frame: Frame::Reject(RejectReason::Duplicate),
                        });
                        self.close(conn);
                        return;
                    }
                    Some(e) => {
                        self.actions.push_back(Action::Send {
                            conn: e,
                            frame: Frame::Reject(RejectReason::Duplicate),
                        });
                        self.close(e);
                    }
                    None => {}
                }
                already_up = true;
            } else if let Some(heard) = self.still_alive(now, old.conn) {
                // The other instance came up (here) while this connection's handshake
                // ran: the one up first stays, as in `on_hello`.
                let detail = format!(
                    "{} is up here as another instance (incarnation {}, heard {} ms ago)",
                    peer.name,
                    old.node.incarnation,
                    heard.as_millis()
                );
                if let Some(e) = old.conn {
                    self.probe_if_quiet(now, e);
                }
                return self.refuse(now, conn, RejectReason::NameClash, &detail);
            } else {
                tracing::info!(peer = %peer.name, "peer restarted: replacing the old incarnation");
                self.down(now, &peer.name, DownReason::ConnectionClosed);
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Established;
        }
        // Bookkeeping of the dial targets that lead to this peer.
        for addr in [
            self.conns.get(&conn).and_then(|c| c.target),
            Some(peer.addr),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(t) = self.targets.get_mut(&addr) {
                if t.dialing == Some(conn) {
                    t.dialing = None;
                }
                if t.warned {
                    tracing::info!(peer = %peer.name, %addr, "peer reachable again");
                }
                // The backoff is reset when the peer goes down after a stable run (see
                // `down`), not here: a link that lets handshakes through but then goes
                // silent keeps backing off.
                t.warned = false;
                t.name = Some(peer.name.clone());
            }
        }
        if self.in_any_authoritative(&peer) {
            self.was_authoritative.insert(peer.name.clone());
        }
        if already_up {
            if let Some(u) = self.up.get_mut(&peer.name) {
                u.conn = Some(conn);
                u.transfer_until = None;
            }
            tracing::debug!(peer = %peer.name, "moved to another connection");
            return;
        }
        self.up_by_addr.insert(peer.addr, peer.name.clone());
        self.digest ^= wire::member_hash(peer.name.as_str(), peer.incarnation);
        self.up.insert(
            peer.name.clone(),
            UpPeer {
                node: peer.clone(),
                conn: Some(conn),
                transfer_until: None,
                since: now,
            },
        );
        self.ring.insert(detect::ring_key(&peer.name));
        self.rebuild_ring(now);
        self.stats.nodeups += 1;
        tracing::info!(peer = %peer.name, peer_addr = %peer.addr, incarnation = %peer.incarnation, "node up");
        self.actions.push_back(Action::Emit(Event::NodeUp(peer)));
        if exchange {
            let list = self.member_list();
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Members(list),
            });
        }
    }

    /// The peer closed our established connection because another connection between
    /// us won the tie-break. The peer stays up while that connection completes its
    /// handshake here; if none does within the handshake timeout, it is down.
    fn on_duplicate_cut(&mut self, now: Instant, conn: ConnId, peer: &Node) {
        self.close(conn);
        if let Some(u) = self.up.get_mut(&peer.name)
            && u.conn == Some(conn)
        {
            u.conn = None;
            u.transfer_until = Some(now + self.config.handshake_timeout);
        }
    }

    /// How long ago an established connection last brought a frame, when that is recent
    /// enough (within three heartbeats, and within `down_after`) to say its peer is alive
    /// on it. A quiet one loses to a new connection of the same instance (the peer gave
    /// it up), and a live one keeps its name from another instance (a name clash).
    fn still_alive(&self, now: Instant, conn: Option<ConnId>) -> Option<std::time::Duration> {
        let c = self.conns.get(&conn?)?;
        if c.phase != Phase::Established {
            return None;
        }
        let fresh = self
            .config
            .heartbeat_interval
            .saturating_mul(3)
            .min(self.config.down_after);
        let heard = now.saturating_duration_since(c.last_recv);
        // A connection this node does not watch carries no heartbeats: it counts as
        // alive until a probe says otherwise (the caller sends one).
        let watched = c
            .peer
            .as_ref()
            .is_some_and(|p| self.watching.contains(&p.name));
        (heard < fresh || !watched).then_some(heard)
    }

    /// The order both sides agree on between two connections of the same pair: the
    /// dialler's name, then the dialler's nonce. Smaller wins.
    fn conn_key(&self, conn: ConnId) -> Option<(NodeName, [u8; 32])> {
        let c = self.conns.get(&conn)?;
        let peer = c.peer.as_ref()?;
        Some(if c.target.is_some() {
            (self.local.name.clone(), c.nonce)
        } else {
            (peer.name.clone(), c.peer_nonce)
        })
    }

    /// Refuses a connection during the handshake: tells the peer why, closes, counts, logs
    /// (see [`log_refusal`](Self::log_refusal)).
    pub(super) fn refuse(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: RejectReason,
        detail: &str,
    ) {
        let peer = self.conns.get(&conn).and_then(|c| c.peer.clone());
        let remote = self.conns.get(&conn).and_then(|c| c.remote);
        let target = self.conns.get(&conn).and_then(|c| c.target);
        self.count_failure(reason.as_str());
        self.log_refusal(now, target, reason, || {
            format!(
                "refused {}{}: {} ({detail}){}",
                peer.as_ref()
                    .map(|p| format!("peer {}", p.name))
                    .unwrap_or_else(|| "a peer".into()),
                remote.map(|r| format!(" from {r}")).unwrap_or_default(),
                reason.as_str(),
                if detail.contains("--name") {
                    ""
                } else {
                    reason.fix()
                }
            )
        });
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Reject(reason),
        });
        let target = self.close(conn).and_then(|c| c.target);
        self.after_refusal(now, target, reason);
    }

    /// After a refused handshake on a connection we dialled: back off (a duplicate only
    /// waits the initial delay, in case the connection that won fails).
    pub(super) fn after_refusal(
        &mut self,
        now: Instant,
        target: Option<SocketAddr>,
        reason: RejectReason,
    ) {
        let Some(addr) = target else { return };
        if reason == RejectReason::Duplicate {
            if let Some(t) = self.targets.get_mut(&addr) {
                t.retry_at = now + self.config.reconnect_initial;
            }
        } else {
            self.target_failed(now, addr, reason.as_str());
        }
    }

    pub(super) fn rejected_by_peer(&mut self, now: Instant, conn: ConnId, reason: RejectReason) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let peer = c.peer.clone();
        let target = c.target;
        if c.phase == Phase::Established {
            if let Some(p) = &peer {
                if reason == RejectReason::Duplicate {
                    return self.on_duplicate_cut(now, conn, p);
                }
                tracing::warn!(peer = %p.name, reason = reason.as_str(), "peer cut the connection");
                self.down(now, &p.name, DownReason::ConnectionClosed);
            }
            self.close(conn);
            return;
        }
        self.count_failure(reason.as_str());
        let addr = peer.as_ref().map(|p| p.addr).or(target);
        self.log_refusal(now, target, reason, || {
            format!(
                "peer {} refused this node: {}{}",
                peer.as_ref()
                    .map(|p| p.name.to_string())
                    .or(addr.map(|a| a.to_string()))
                    .unwrap_or_default(),
                reason.as_str(),
                reason.fix()
            )
        });
        let target = self.close(conn).and_then(|c| c.target);
        self.after_refusal(now, target, reason);
    }

    /// Logs a refusal: a warning within the per-reason budget, else debug. Never keyed
    /// by the source, which an attacker can vary at will. On a connection this node
    /// dialled, one warning per run of failures of that address (then debug until it
    /// succeeds). A duplicate (two connections of one pair) is routine: always debug.
    pub(super) fn log_refusal(
        &mut self,
        now: Instant,
        target: Option<SocketAddr>,
        reason: RejectReason,
        msg: impl FnOnce() -> String,
    ) {
        if reason == RejectReason::Duplicate {
            tracing::debug!("{}", msg());
            return;
        }
        if let Some(t) = target.and_then(|a| self.targets.get_mut(&a)) {
            if t.warned {
                tracing::debug!("{}", msg());
                return;
            }
            t.warned = true;
        }
        crate::warn_limit::log(&mut self.warn_limit, now, reason.as_str(), msg);
    }

    /// Whether `addr` is this node's own listener: its advertised address; or, with the
    /// address it is bound to known ([`Core::set_listen_addr`]), that address, and on a
    /// wildcard bind its port on a loopback or the advertised IP. (A loopback address
    /// with its port is not its own when it is bound to another one: something else may
    /// listen there.)
    pub(super) fn is_own_address(&self, addr: SocketAddr) -> bool {
        if addr == self.local.addr {
            return true;
        }
        let Some(bound) = self.listen else {
            return false;
        };
        addr.port() == bound.port()
            && (addr.ip() == bound.ip()
                || (bound.ip().is_unspecified()
                    && (addr.ip().is_loopback()
                        || addr.ip().is_unspecified()
                        || addr.ip() == self.local.addr.ip())))
    }

    pub(super) fn count_failure(&mut self, reason: &'static str) {
        *self.stats.handshake_failures.entry(reason).or_default() += 1;
    }
}
