//! Who has been heard, and when: the replay checks and the "heard within" peer set.
//! Pure: the caller passes the time in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::packet::Heartbeat;
use crate::node::NodeName;
use crate::strategies::{Peer, PeerSet};

/// Why an authentic heartbeat was refused as a possible replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stale {
    /// Its timestamp is further in the past than the replay window.
    #[error(
        "timestamp is {age_ms} ms old, outside the {window_ms} ms replay window (a replay, or clocks out of step)"
    )]
    TooOld {
        /// How old.
        age_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// Its timestamp is further in the future than the replay window.
    #[error(
        "timestamp is {ahead_ms} ms in the future, outside the {window_ms} ms replay window (clocks out of step)"
    )]
    TooNew {
        /// How far ahead.
        ahead_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// The sender has already been heard at this timestamp or a later one.
    #[error("timestamp is not newer than the sender's last heartbeat (a replay or a duplicate)")]
    NotNewer,
}

/// What an accepted heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// The sender was already in the peer set at this address: the set is unchanged.
    Refreshed,
    /// The sender is new to the peer set, or its address changed: report again.
    Changed,
}

#[derive(Debug, Clone)]
struct Entry {
    addr: SocketAddr,
    last_ts: u64,
    heard_at: Instant,
}

/// Senders heard, by (name, incarnation).
///
/// - A heartbeat is accepted when its timestamp is within `window` of the local clock
///   (either way) and newer than the last one accepted from the same (name,
///   incarnation); so neither an old packet nor a copy of a recent one gets in.
/// - The peer set is every sender heard within `live` (3 × interval), one entry per
///   name: the most recently heard instance.
/// - An entry is kept for `live + 2 × window` after it was last heard, long enough that
///   any copy of its packets has left the window before its last timestamp is forgotten.
#[derive(Debug, Clone)]
pub struct Heard {
    live: Duration,
    window_ms: u64,
    retain: Duration,
    senders: HashMap<(NodeName, u64), Entry>,
}

impl Heard {
    /// A table whose peers stay for `live` after last heard, with a replay window of
    /// `window` either side of the local clock.
    pub fn new(live: Duration, window: Duration) -> Self {
        Heard {
            live,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            retain: live.saturating_add(window.saturating_mul(2)),
            senders: HashMap::new(),
        }
    }

    /// Checks an authentic heartbeat against the replay window and the sender's last
    /// timestamp; on success records it. `now_ms` is the local wall clock (ms since the
    /// Unix epoch), `now` the monotonic clock. A refused heartbeat changes nothing.
    pub fn accept(&mut self, hb: &Heartbeat, now_ms: u64, now: Instant) -> Result<Accepted, Stale> {
        let window_ms = self.window_ms;
        if hb.timestamp_ms < now_ms.saturating_sub(window_ms) {
            return Err(Stale::TooOld {
                age_ms: now_ms - hb.timestamp_ms,
                window_ms,
            });
        }
        if hb.timestamp_ms > now_ms.saturating_add(window_ms) {
            return Err(Stale::TooNew {
                ahead_ms: hb.timestamp_ms - now_ms,
                window_ms,
            });
        }
        let key = (hb.name.clone(), hb.incarnation);
        if let Some(e) = self.senders.get(&key)
            && hb.timestamp_ms <= e.last_ts
        {
            return Err(Stale::NotNewer);
        }
        let before = self.current(&hb.name, now).map(|(_, e)| e.addr);
        self.senders.insert(
            key,
            Entry {
                addr: hb.addr,
                last_ts: hb.timestamp_ms,
                heard_at: now,
            },
        );
        let after = self.current(&hb.name, now).map(|(_, e)| e.addr);
        Ok(if before == after {
            Accepted::Refreshed
        } else {
            Accepted::Changed
        })
    }

    /// The live instance of `name` most recently heard.
    fn current(&self, name: &NodeName, now: Instant) -> Option<(u64, &Entry)> {
        self.senders
            .iter()
            .filter(|((n, _), e)| n == name && self.is_live(e, now))
            .max_by_key(|(_, e)| (e.heard_at, e.last_ts))
            .map(|((_, inc), e)| (*inc, e))
    }

    fn is_live(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.heard_at) < self.live
    }

    /// Every name heard within `live`, with the address of its most recently heard
    /// instance.
    pub fn peers(&self, now: Instant) -> PeerSet {
        let mut best: HashMap<&NodeName, &Entry> = HashMap::new();
        for ((name, _), e) in &self.senders {
            if !self.is_live(e, now) {
                continue;
            }
            let slot = best.entry(name).or_insert(e);
            if (e.heard_at, e.last_ts) > (slot.heard_at, slot.last_ts) {
                *slot = e;
            }
        }
        best.into_iter()
            .map(|(name, e)| Peer::named(name.clone(), e.addr))
            .collect()
    }

    /// Forgets senders not heard for the retention span.
    pub fn forget_old(&mut self, now: Instant) {
        let retain = self.retain;
        self.senders
            .retain(|_, e| now.saturating_duration_since(e.heard_at) < retain);
    }

    /// The first time after `checked` at which a sender stops being live, if any does.
    /// Pass the time of the last [`Heard::peers`] call: a sender that expired since then
    /// gives a time already past, so that no expiry is missed however late the caller
    /// looks.
    pub fn next_expiry(&self, checked: Instant) -> Option<Instant> {
        self.senders
            .values()
            .map(|e| e.heard_at + self.live)
            .filter(|&t| t > checked)
            .min()
    }

    /// How many senders are remembered (live or kept for the replay check).
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn hb(name: &str, inc: u64, port: u16, ts: u64) -> Heartbeat {
        Heartbeat {
            cluster: "c".into(),
            name: name.parse().unwrap(),
            incarnation: inc,
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            timestamp_ms: ts,
        }
    }

    fn table() -> Heard {
        Heard::new(Duration::from_secs(3), Duration::from_secs(4))
    }

    #[test]
    fn a_new_sender_changes_the_set_and_a_refresh_does_not() {
        let mut h = table();
        let t = Instant::now();
        assert_eq!(h.accept(&hb("a@h", 1, 1, T0), T0, t), Ok(Accepted::Changed));
        assert_eq!(
            h.accept(
                &hb("a@h", 1, 1, T0 + 1000),
                T0 + 1000,
                t + Duration::from_secs(1)
            ),
            Ok(Accepted::Refreshed)
        );
        let peers = h.peers(t + Duration::from_secs(1));
        assert_eq!(peers.len(), 1);
        let p = peers.iter().next().unwrap();
        assert_eq!(p.name.as_ref().unwrap().as_str(), "a@h");
    }

    #[test]
    fn copies_and_old_packets_are_refused_and_change_nothing() {
        let mut h = table();
        let t = Instant::now();
        h.accept(&hb("a@h", 1, 1, T0), T0, t).unwrap();
        assert_eq!(h.accept(&hb("a@h", 1, 1, T0), T0, t), Err(Stale::NotNewer));
        assert_eq!(
            h.accept(&hb("a@h", 1, 1, T0 - 1), T0, t),
            Err(Stale::NotNewer)
        );
        assert!(matches!(
            h.accept(&hb("b@h", 1, 2, T0 - 4001), T0, t),
            Err(Stale::TooOld { age_ms: 4001, .. })
        ));
        assert!(matches!(
            h.accept(&hb("b@h", 1, 2, T0 + 4001), T0, t),
            Err(Stale::TooNew { ahead_ms: 4001, .. })
        ));
        // At the window's edges, accepted.
        assert!(h.accept(&hb("b@h", 1, 2, T0 - 4000), T0, t).is_ok());
        assert!(h.accept(&hb("c@h", 1, 3, T0 + 4000), T0, t).is_ok());
        assert_eq!(h.peers(t).len(), 3);
    }

    #[test]
    fn a_quiet_sender_leaves_after_live_and_its_copies_stay_refused() {
        let mut h = table();
        let t = Instant::now();
        h.accept(&hb("a@h", 1, 1, T0), T0, t).unwrap();
        assert_eq!(h.next_expiry(t), Some(t + Duration::from_secs(3)));
        let later = t + Duration::from_secs(3);
        // Looked at late, the expiry is still due (in the past) until the set is checked.
        assert_eq!(
            h.next_expiry(t + Duration::from_secs(1)),
            Some(t + Duration::from_secs(3))
        );
        assert!(h.peers(later).is_empty());
        assert_eq!(h.next_expiry(later), None);
        // Still remembered: a copy within the window is refused.
        h.forget_old(later);
        assert_eq!(
            h.accept(&hb("a@h", 1, 1, T0), T0 + 3000, later),
            Err(Stale::NotNewer)
        );
        // Forgotten only once any copy is outside the window anyway.
        let much_later = t + Duration::from_secs(3 + 8);
        h.forget_old(much_later);
        assert_eq!(h.remembered(), 0);
        assert!(matches!(
            h.accept(&hb("a@h", 1, 1, T0), T0 + 11_000, much_later),
            Err(Stale::TooOld { .. })
        ));
    }

    #[test]
    fn a_restarted_node_is_one_peer_at_its_newest_address() {
        let mut h = table();
        let t = Instant::now();
        h.accept(&hb("a@h", 1, 1, T0), T0, t).unwrap();
        let t1 = t + Duration::from_millis(500);
        assert_eq!(
            h.accept(&hb("a@h", 2, 7, T0 + 500), T0 + 500, t1),
            Ok(Accepted::Changed)
        );
        let peers = h.peers(t1);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.iter().next().unwrap().addr.port(), 7);
        // The old incarnation's copies are still refused.
        assert_eq!(
            h.accept(&hb("a@h", 1, 1, T0), T0 + 500, t1),
            Err(Stale::NotNewer)
        );
    }

    #[test]
    fn an_address_change_is_a_change() {
        let mut h = table();
        let t = Instant::now();
        h.accept(&hb("a@h", 1, 1, T0), T0, t).unwrap();
        assert_eq!(
            h.accept(&hb("a@h", 1, 2, T0 + 1), T0, t),
            Ok(Accepted::Changed)
        );
    }
}
