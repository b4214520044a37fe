//! Who is up, whom to dial and when, pruning and expiry.

use std::net::SocketAddr;
use std::time::Instant;

use super::*;

impl Core {
    // ----- membership -----

    pub(super) fn down(&mut self, now: Instant, name: &NodeName, reason: DownReason) {
        let Some(u) = self.up.remove(name) else {
            return;
        };
        if self.up_by_addr.get(&u.node.addr) == Some(name) {
            self.up_by_addr.remove(&u.node.addr);
        }
        self.ring.remove(&detect::ring_key(name));
        self.rebuild_ring(now);
        self.requesters.remove(name);
        self.digest ^= wire::member_hash(name.as_str(), u.node.incarnation);
        self.absent.remove(name);
        self.was_authoritative.remove(name);
        self.stats.nodedowns += 1;
        match reason {
            DownReason::Left => tracing::info!(
                peer = %u.node.name,
                peer_addr = %u.node.addr,
                incarnation = %u.node.incarnation,
                reason = reason.as_str(),
                "node down: left"
            ),
            _ => tracing::warn!(
                peer = %u.node.name,
                peer_addr = %u.node.addr,
                incarnation = %u.node.incarnation,
                reason = reason.as_str(),
                "node down"
            ),
        }
        self.actions.push_back(Action::Emit(Event::NodeDown {
            node: u.node.clone(),
            reason,
        }));
        if let Some(conn) = u.conn {
            self.close(conn);
        }
        // Redial after the initial backoff (not at once: a peer that just died is likely
        // still unreachable). A peer that went silent soon after it came up keeps its
        // growing backoff: a link that carries handshakes but not heartbeats must not
        // become a cut-and-redial loop.
        let delay = self.config.reconnect_initial;
        let stable =
            now.saturating_duration_since(u.since) >= self.config.down_after.saturating_mul(10);
        if let Some(t) = self.targets.get_mut(&u.node.addr) {
            if reason != DownReason::HeartbeatTimeout || stable {
                t.backoff.reset();
            }
            let d = t.backoff.next_delay(&mut self.rng).max(delay.mul_f64(0.5));
            t.retry_at = now + d;
        }
    }

    pub(super) fn member_list(&self) -> Vec<MemberEntry> {
        self.up
            .values()
            .map(|u| MemberEntry {
                name: u.node.name.to_string(),
                addr: u.node.addr,
                incarnation: u.node.incarnation,
            })
            .collect()
    }

    pub(super) fn learn(&mut self, now: Instant, list: Vec<MemberEntry>) {
        let mut fresh = Vec::new();
        for e in list {
            let Ok(name) = e.name.parse::<NodeName>() else {
                continue;
            };
            if name == self.local.name || e.addr == self.local.addr || self.up.contains_key(&name) {
                continue;
            }
            let node = Node {
                name: name.clone(),
                addr: e.addr,
                incarnation: e.incarnation,
            };
            if self.is_pruned(&node) {
                continue;
            }
            let t = self
                .targets
                .entry(e.addr)
                .or_insert_with(|| new_target(&self.config, now));
            t.learned = Some(now);
            t.name = Some(name);
            fresh.push(e.addr);
        }
        for addr in fresh {
            self.dial_if_due(now, addr);
        }
    }

    // ----- dialling -----

    pub(super) fn dial_due(&mut self, now: Instant) {
        let addrs: Vec<SocketAddr> = self.targets.keys().copied().collect();
        for addr in addrs {
            self.dial_if_due(now, addr);
        }
    }

    pub(super) fn dial_if_due(&mut self, now: Instant, addr: SocketAddr) {
        if self.left {
            return;
        }
        let Some(t) = self.targets.get(&addr) else {
            return;
        };
        if t.is_self
            || t.dialing.is_some()
            || t.retry_at > now
            || (t.topologies.is_empty() && t.learned.is_none())
        {
            return;
        }
        let satisfied = t.name.as_ref().is_some_and(|n| self.up.contains_key(n))
            || self.up_by_addr.contains_key(&addr);
        if satisfied
            || self.pruned.values().any(|(a, _)| *a == addr)
            || t.name.as_ref().is_some_and(|n| self.pruned.contains_key(n))
        {
            return;
        }
        let exchange = !t.topologies.is_empty();
        let id = self.new_conn(now, Some(addr), Phase::Dialing, exchange);
        if let Some(t) = self.targets.get_mut(&addr) {
            t.dialing = Some(id);
        }
        self.actions.push_back(Action::Connect { conn: id, addr });
    }

    /// A dial or handshake to `addr` failed: back off, log the first failure of a run.
    pub(super) fn target_failed(&mut self, now: Instant, addr: SocketAddr, why: &str) {
        let Some(t) = self.targets.get_mut(&addr) else {
            return;
        };
        let delay = t.backoff.next_delay(&mut self.rng);
        t.retry_at = now + delay;
        if !t.warned {
            t.warned = true;
            match &t.name {
                Some(name) => {
                    tracing::warn!(peer = %name, peer_addr = %addr, error = why, "cannot reach peer; retrying with backoff")
                }
                None => {
                    tracing::warn!(peer_addr = %addr, error = why, "cannot reach peer; retrying with backoff")
                }
            }
        } else {
            tracing::debug!(%addr, error = why, retry_in = ?delay, "still cannot reach peer");
        }
    }

    /// Stops tracking a connection and tells the driver to close it. Returns what it was.
    pub(super) fn close(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        if let Some(p) = &c.peer {
            self.unlist_handshaking(conn, &p.name.clone());
        }
        if let Some(addr) = c.target
            && let Some(t) = self.targets.get_mut(&addr)
            && t.dialing == Some(conn)
        {
            t.dialing = None;
        }
        self.actions.push_back(Action::Close { conn });
        Some(c)
    }

    pub(super) fn unlist_handshaking(&mut self, conn: ConnId, name: &NodeName) {
        if let Some(v) = self.handshaking.get_mut(name) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.handshaking.remove(name);
            }
        }
    }

    pub(super) fn drop_target_if_unwanted(&mut self, addr: SocketAddr) {
        if let Some(t) = self.targets.get(&addr)
            && t.topologies.is_empty()
            && t.learned.is_none()
            && t.dialing.is_none()
        {
            self.targets.remove(&addr);
        }
    }

    // ----- pruning and expiry -----

    pub(super) fn in_any_topology(&self, node: &Node) -> bool {
        self.topologies
            .iter()
            .any(|t| t.names.contains(&node.name) || t.addrs.contains(&node.addr))
    }

    pub(super) fn in_any_authoritative(&self, node: &Node) -> bool {
        self.topologies.iter().any(|t| {
            t.info.as_ref().is_some_and(|i| i.authoritative)
                && (t.names.contains(&node.name) || t.addrs.contains(&node.addr))
        })
    }

    pub(super) fn is_pruned(&self, node: &Node) -> bool {
        self.pruned.contains_key(&node.name) || self.pruned.values().any(|(a, _)| *a == node.addr)
    }

    pub(super) fn check_pruning(&mut self, now: Instant) {
        let grace = self
            .topologies
            .iter()
            .filter_map(|t| t.info.as_ref())
            .filter(|i| i.authoritative)
            .map(|i| i.prune_after)
            .max();
        let Some(grace) = grace else { return };
        let mut to_prune = Vec::new();
        let nodes: Vec<Node> = self.up.values().map(|u| u.node.clone()).collect();
        for node in nodes {
            if self.in_any_authoritative(&node) {
                self.was_authoritative.insert(node.name.clone());
                self.absent.remove(&node.name);
                continue;
            }
            if !self.was_authoritative.contains(&node.name) {
                continue;
            }
            let deadline = *self.absent.entry(node.name.clone()).or_insert(now + grace);
            if now >= deadline {
                to_prune.push(node);
            }
        }
        for node in to_prune {
            tracing::info!(peer = %node.name, peer_addr = %node.addr, incarnation = %node.incarnation, "pruning: gone from every authoritative topology");
            self.pruned.insert(node.name.clone(), (node.addr, now));
            if let Some(t) = self.targets.get_mut(&node.addr) {
                t.learned = None;
            }
            self.down(now, &node.name, DownReason::Pruned);
            self.drop_target_if_unwanted(node.addr);
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let forget = self.config.forget_after;
        self.pruned.retain(|_, (_, at)| now < *at + forget);
        // Learned targets stay while up, and for `forget_after` after they were last
        // mentioned or seen up.
        let up_addrs: HashSet<SocketAddr> = self.up.values().map(|u| u.node.addr).collect();
        let mut gone = Vec::new();
        for (addr, t) in self.targets.iter_mut() {
            if up_addrs.contains(addr) || t.name.as_ref().is_some_and(|n| self.up.contains_key(n)) {
                if t.learned.is_some() {
                    t.learned = Some(now);
                }
                continue;
            }
            if let Some(at) = t.learned
                && now >= at + forget
            {
                t.learned = None;
                if t.topologies.is_empty() && t.dialing.is_none() {
                    gone.push(*addr);
                }
            }
        }
        for addr in gone {
            self.targets.remove(&addr);
        }
    }
}
