//! Failure detection whose cost per node does not grow with the cluster.
//!
//! - **A ring of monitors.** Every node places the members it has up (and itself) on a
//!   ring, ordered by a hash of each name, so every node that has the same members up
//!   draws the same ring. A node *watches* the [`Config::monitored_by`] nodes that follow
//!   it and sends heartbeats to the ones that precede it (its monitors). Only watched
//!   connections are timed; the others stay quiet, and a closed connection is still
//!   `nodedown` at once.
//! - **A monitor that hears nothing** from a watched peer for half of `down_after` sends it
//!   a [`Frame::Probe`] (which the peer answers at once, and which makes it send
//!   heartbeats to the asker for a while, in case their rings differ). After
//!   `down_after` minus the probe timeout it tells every other member
//!   ([`Frame::Suspect`]); at `down_after` it reports the peer down.
//! - **Confirmation.** A node told of a suspect probes it on its own connection and
//!   reports it down only if no answer comes within the probe timeout. So one bad link
//!   takes a node out of that link's two views, never out of everyone's.
//! - **Partitions.** A monitor that suspects a peer also probes, once per `down_after`,
//!   every member it has not heard from lately (a *sweep*): the nodes behind a partition
//!   that nobody on this side watches are found too, and told to the others.
//! - **Local health** (after Lifeguard): a node whose own timer fires late is starved
//!   (CPU, scheduling); each late tick raises a score (0–8) and each punctual one lowers
//!   it, and every timeout of the detector is multiplied by `1 + score`. A starved node
//!   slows its own accusations down instead of cutting healthy peers.
//!
//! See `docs/membership.md` ("Failure detection") for the bounds and the rules the
//! simulator checks.

use std::time::{Duration, Instant};

use super::*;

/// The highest local-health score: timeouts stretch at most ninefold.
const MAX_HEALTH_SCORE: u32 = 8;

/// Why a probe is outstanding on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProbeKind {
    /// This node watches the peer and heard nothing for half of `down_after`.
    Watch,
    /// Another node suspects the peer (or a rival connection needs an answer).
    Confirm,
    /// A sweep after a suspicion: a quiet member that nobody may be watching.
    Sweep,
}

/// An outstanding probe: when it was sent and why.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    pub sent: Instant,
    pub kind: ProbeKind,
}

/// The ring position of a node: a hash of its name (the same on every node).
pub(super) fn ring_key(name: &NodeName) -> (u64, NodeName) {
    (wire::member_hash(name.as_str(), 0), name.clone())
}

impl Core {
    /// `down_after`, stretched by the local-health score.
    pub(super) fn down_after_eff(&self) -> Duration {
        self.config.down_after.saturating_mul(1 + self.health)
    }

    /// How long a probe may go unanswered: a sixth of `down_after` (at least one
    /// heartbeat interval), stretched by the local-health score.
    pub(super) fn probe_timeout_eff(&self) -> Duration {
        (self.config.down_after / 6)
            .max(self.config.heartbeat_interval)
            .min(self.config.down_after / 2)
            .saturating_mul(1 + self.health)
    }

    /// The current local-health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.health
    }

    /// Recomputes whom this node watches and whom it sends heartbeats to, from the ring
    /// of the members it has up. A peer watched from now on is timed from now.
    pub(super) fn rebuild_ring(&mut self, now: Instant) {
        let before = std::mem::take(&mut self.watching);
        self.beat_to.clear();
        self.fill_ring_sets();
        for name in self.watching.difference(&before) {
            if let Some(c) = self
                .up
                .get(name)
                .and_then(|u| u.conn)
                .and_then(|c| self.conns.get_mut(&c))
                && c.last_recv < now
            {
                c.last_recv = now;
                c.suspected = false;
            }
        }
    }

    fn fill_ring_sets(&mut self) {
        let k = self.config.monitored_by.max(1);
        let me = ring_key(&self.local.name);
        let n = self.ring.len();
        if n <= k + 1 {
            // Everyone watches everyone.
            for (_, name) in &self.ring {
                if *name != self.local.name {
                    self.watching.insert(name.clone());
                    self.beat_to.insert(name.clone());
                }
            }
            return;
        }
        let after = self
            .ring
            .range((std::ops::Bound::Excluded(&me), std::ops::Bound::Unbounded));
        let before = self.ring.range(..&me);
        for (_, name) in after.chain(before.clone()).take(k) {
            self.watching.insert(name.clone());
        }
        let before_rev = self.ring.range(..&me).rev();
        let after_rev = self
            .ring
            .range((std::ops::Bound::Excluded(&me), std::ops::Bound::Unbounded))
            .rev();
        for (_, name) in before_rev.chain(after_rev).take(k) {
            self.beat_to.insert(name.clone());
        }
    }

    /// Whether this node watches the named peer (expects its heartbeats).
    pub fn watches(&self, name: &NodeName) -> bool {
        self.watching.contains(name)
    }

    /// Liveness noted by the driver where the bytes arrive (a heartbeat need not come
    /// through the core): the connection brought something at `at`.
    pub fn note_heard(&mut self, conn: ConnId, at: Instant) {
        if let Some(c) = self.conns.get_mut(&conn)
            && at > c.last_recv
        {
            c.last_recv = at;
        }
    }

    /// Sends a probe on an established connection unless one is outstanding.
    pub(super) fn probe(&mut self, now: Instant, conn: ConnId, kind: ProbeKind) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.phase != Phase::Established || c.probe.is_some() {
            return;
        }
        c.probe = Some(Probe { sent: now, kind });
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Probe,
        });
        let probe = Probe { sent: now, kind };
        if let Some(at) = probe_deadline(probe, self.down_after_eff(), self.probe_timeout_eff()) {
            self.pending_deadline = Some(self.pending_deadline.map_or(at, |p| p.min(at)));
            self.next_check = self.next_check.min(at);
        }
    }

    /// Probes a connection that has been quiet for a heartbeat interval or more, so that
    /// a decision that favours it (a rival, a name clash) is confirmed within the probe
    /// timeout: a dead one is then down, and the newcomer gets in on its next try.
    pub(super) fn probe_if_quiet(&mut self, now: Instant, conn: ConnId) {
        if self.conns.get(&conn).is_some_and(|c| {
            now.saturating_duration_since(c.last_recv) >= self.config.heartbeat_interval
        }) {
            self.probe(now, conn, ProbeKind::Confirm);
        }
    }

    /// The peer on `conn` asked for a sign of life.
    pub(super) fn on_probe(&mut self, now: Instant, conn: ConnId, from: &NodeName) {
        self.actions.push_back(Action::Send {
            conn,
            frame: Frame::Heartbeat,
        });
        if !self.beat_to.contains(from) {
            self.requesters
                .insert(from.clone(), now + self.config.down_after);
        }
    }

    /// A member says it suspects `name`: confirm on this node's own connection.
    pub(super) fn on_suspect(&mut self, now: Instant, name: &str, incarnation: u64) {
        let Ok(name) = name.parse::<NodeName>() else {
            return;
        };
        let Some(u) = self.up.get(&name) else {
            return;
        };
        if u.node.incarnation != incarnation {
            return;
        }
        let Some(conn) = u.conn else { return };
        let recent = self.probe_timeout_eff();
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| now.saturating_duration_since(c.last_recv) < recent)
        {
            return;
        }
        self.probe(now, conn, ProbeKind::Confirm);
    }

    /// Tells every other member that this node suspects `peer`.
    fn spread_suspicion(&mut self, peer: &Node) {
        let conns: Vec<ConnId> = self
            .up
            .values()
            .filter(|u| u.node.name != peer.name)
            .filter_map(|u| u.conn)
            .collect();
        for conn in conns {
            self.actions.push_back(Action::Send {
                conn,
                frame: Frame::Suspect {
                    name: peer.name.to_string(),
                    incarnation: peer.incarnation,
                },
            });
        }
    }

    /// Probes every member not heard from lately (at most once per `down_after`).
    fn sweep(&mut self, now: Instant, except: &NodeName) {
        let d = self.down_after_eff();
        if self.last_sweep.is_some_and(|at| now < at + d) {
            return;
        }
        self.last_sweep = Some(now);
        let quiet = d - self.probe_timeout_eff();
        let conns: Vec<ConnId> = self
            .up
            .values()
            .filter(|u| u.node.name != *except && !self.watching.contains(&u.node.name))
            .filter_map(|u| u.conn)
            .filter(|c| {
                self.conns
                    .get(c)
                    .is_some_and(|c| now.saturating_duration_since(c.last_recv) >= quiet)
            })
            .collect();
        for conn in conns {
            self.probe(now, conn, ProbeKind::Sweep);
        }
    }

    /// Adjusts the local-health score from how late the periodic tick fired.
    pub(super) fn note_tick_lateness(&mut self, late: Duration) {
        if late > self.config.heartbeat_interval / 2 {
            if self.health < MAX_HEALTH_SCORE {
                self.health += 1;
                tracing::debug!(
                    late_ms = late.as_millis() as u64,
                    score = self.health,
                    "this node is starved: stretching its failure detector's timeouts"
                );
            }
        } else {
            self.health = self.health.saturating_sub(1);
        }
        self.stats.local_health = self.health;
    }

    /// The failure detector's part of a timeout: probes that went unanswered, silent
    /// watched peers, heartbeats (on a tick). Sets the next deadline it needs.
    pub(super) fn detect(&mut self, now: Instant, tick: bool) {
        let d = self.down_after_eff();
        let p = self.probe_timeout_eff();
        let mut next = now + d;
        self.pending_deadline = None;
        let mut failed: Vec<(ConnId, ProbeKind)> = Vec::new();
        // Outstanding probes. A watching probe has no deadline of its own: the watched
        // peer is down at `down_after` of silence, answered or not.
        for (id, c) in self.conns.iter_mut() {
            let Some(probe) = c.probe else { continue };
            if c.last_recv > probe.sent {
                c.probe = None;
                continue;
            }
            let Some(deadline) = probe_deadline(probe, d, p) else {
                continue;
            };
            if now >= deadline {
                failed.push((*id, probe.kind));
            } else {
                next = next.min(deadline);
            }
        }
        // Watched peers.
        let watched: Vec<(NodeName, ConnId)> = self
            .watching
            .iter()
            .filter_map(|n| Some((n.clone(), self.up.get(n)?.conn?)))
            .collect();
        for (name, conn) in watched {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let silence = now.saturating_duration_since(c.last_recv);
            if silence < d / 2 {
                c.suspected = false;
                next = next.min(c.last_recv + d / 2);
                continue;
            }
            if silence >= d {
                if !failed.iter().any(|(f, _)| *f == conn) {
                    failed.push((conn, ProbeKind::Watch));
                }
                continue;
            }
            if c.probe.is_none() {
                self.probe(now, conn, ProbeKind::Watch);
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if silence >= d.saturating_sub(p) {
                next = next.min(c.last_recv + d);
                if !c.suspected {
                    c.suspected = true;
                    if let Some(peer) = self.up.get(&name).map(|u| u.node.clone()) {
                        tracing::debug!(peer = %peer.name, peer_addr = %peer.addr, incarnation = %peer.incarnation, silent_ms = silence.as_millis() as u64, "suspecting a silent peer");
                        self.spread_suspicion(&peer);
                        self.sweep(now, &peer.name);
                    }
                }
            } else {
                next = next.min(c.last_recv + d.saturating_sub(p));
            }
        }
        // Heartbeats to this node's monitors, and to those that asked lately.
        if tick {
            self.requesters.retain(|_, until| now < *until);
            let to: Vec<ConnId> = self
                .beat_to
                .iter()
                .chain(self.requesters.keys())
                .filter_map(|n| self.up.get(n)?.conn)
                .collect();
            for conn in to {
                self.actions.push_back(Action::Send {
                    conn,
                    frame: Frame::Heartbeat,
                });
            }
        }
        for (conn, kind) in failed {
            let Some(peer) = self.conns.get(&conn).and_then(|c| c.peer.clone()) else {
                continue;
            };
            if self.up.get(&peer.name).is_none_or(|u| u.conn != Some(conn)) {
                self.close(conn);
                continue;
            }
            if kind == ProbeKind::Sweep {
                self.spread_suspicion(&peer);
            }
            self.down(now, &peer.name, DownReason::HeartbeatTimeout);
            self.close(conn);
        }
        self.next_check = match self.pending_deadline.take() {
            Some(at) => next.min(at),
            None => next,
        };
    }
}

/// When an outstanding probe counts as unanswered (`None`: never by itself).
fn probe_deadline(probe: Probe, down_after: Duration, timeout: Duration) -> Option<Instant> {
    match probe.kind {
        ProbeKind::Watch => None,
        ProbeKind::Confirm => Some(probe.sent + timeout),
        ProbeKind::Sweep => Some(probe.sent + down_after / 2),
    }
}
