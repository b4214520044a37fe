//! The peers recently down or left, for `GET /v1/members` and `rallypoint members`
//! (as Serf and Consul list failed and left members beside the alive ones).
//!
//! Fed by its own subscription: a `nodedown` records the node with its reason and the
//! time; the same name coming up again removes it. `GET /v1/members` waits (briefly)
//! for the list to catch up with its snapshot, so the two agree. At most [`CAPACITY`] names are
//! held, each for [`RETENTION`]; the oldest go first. A resync (this subscriber fell
//! behind) records the members that vanished in between with no reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api;
use crate::events::{DownReason, Event, Update};
use crate::{Cluster, Node, NodeName};

/// How long a departed peer is listed.
pub const RETENTION: Duration = Duration::from_secs(3600);
/// The most departed peers listed.
pub const CAPACITY: usize = 256;

/// One departed peer.
#[derive(Clone, Debug)]
struct Entry {
    node: Node,
    /// `None`: seen gone in a resync, the reason unknown.
    reason: Option<DownReason>,
    at: SystemTime,
}

/// How long [`Departed::caught_up`] waits for the list to reach a snapshot.
const CATCH_UP: Duration = Duration::from_secs(1);

/// The peers recently down or left, by name.
pub struct Departed {
    entries: Mutex<BTreeMap<NodeName, Entry>>,
    /// The sequence number of the last update applied.
    applied: watch::Sender<u64>,
}

impl Departed {
    /// Starts recording the cluster's departures until `stop` is cancelled or the
    /// cluster shuts down.
    pub fn start(cluster: &Cluster, stop: CancellationToken) -> Arc<Departed> {
        let mut sub = cluster.subscribe();
        let departed = Arc::new(Departed {
            entries: Mutex::default(),
            applied: watch::Sender::new(sub.seq()),
        });
        let members_of = |s: &crate::events::Snapshot| -> BTreeMap<NodeName, Node> {
            s.members
                .iter()
                .map(|(n, m)| (n.clone(), m.node.clone()))
                .collect()
        };
        let mut known = members_of(sub.snapshot());
        let d = departed.clone();
        tokio::spawn(async move {
            while let Some(update) = super::recv_until(&mut sub, &stop).await {
                match update {
                    Update::Event(Event::NodeUp(node)) => {
                        d.lock().remove(&node.name);
                        known.insert(node.name.clone(), node);
                    }
                    Update::Event(Event::NodeDown { node, reason }) => {
                        known.remove(&node.name);
                        d.record(node, Some(reason), SystemTime::now());
                    }
                    Update::Resync(snapshot) => {
                        let now = SystemTime::now();
                        for (name, node) in known {
                            if !snapshot.members.contains_key(&name) {
                                d.record(node, None, now);
                            }
                        }
                        let mut entries = d.lock();
                        for name in snapshot.members.keys() {
                            entries.remove(name);
                        }
                        known = members_of(&snapshot);
                    }
                }
                d.applied.send_replace(sub.seq());
            }
        });
        departed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeName, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a departure, dropping the oldest beyond [`CAPACITY`].
    fn record(&self, node: Node, reason: Option<DownReason>, at: SystemTime) {
        let mut entries = self.lock();
        entries.insert(node.name.clone(), Entry { node, reason, at });
        while entries.len() > CAPACITY {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(n) => entries.remove(&n),
                None => break,
            };
        }
    }

    /// Waits (at most a second) until the list has applied every event up to `seq`, so
    /// that it agrees with a snapshot of that sequence number: a peer whose `nodedown`
    /// the snapshot already reflects is listed.
    pub async fn caught_up(&self, seq: u64) {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(CATCH_UP, applied.wait_for(|a| *a >= seq)).await;
    }

    /// The departed peers within [`RETENTION`] of `now` and not up again (`up`: the
    /// names up now), sorted by name.
    pub fn list(&self, now: SystemTime, up: &BTreeSet<&NodeName>) -> Vec<api::Departed> {
        let mut entries = self.lock();
        entries.retain(|_, e| now.duration_since(e.at).unwrap_or_default() < RETENTION);
        entries
            .values()
            .filter(|e| !up.contains(&e.node.name))
            .map(|e| api::Departed {
                node: api::Node::of(&e.node),
                status: match e.reason {
                    Some(DownReason::Left) => api::Status::Left,
                    _ => api::Status::Down,
                },
                reason: e.reason.map(|r| r.as_str().to_owned()),
                since: api::rfc3339(e.at),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> Departed {
        Departed {
            entries: Mutex::default(),
            applied: watch::Sender::new(0),
        }
    }

    fn node(i: u32) -> Node {
        Node {
            name: format!("n{i:03}@127.0.0.1").parse().expect("name"),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16)),
            incarnation: u64::from(i),
        }
    }

    #[test]
    fn lists_status_and_reason_hides_those_up_again_and_expires_after_the_retention() {
        let d = empty();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        d.record(node(1), Some(DownReason::Left), t0);
        d.record(node(2), Some(DownReason::HeartbeatTimeout), t0);
        d.record(node(3), None, t0 + Duration::from_secs(10));
        let listed = d.list(t0 + Duration::from_secs(60), &BTreeSet::new());
        let rows: Vec<(String, api::Status, Option<String>)> = listed
            .iter()
            .map(|r| (r.node.name.clone(), r.status, r.reason.clone()))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "n001@127.0.0.1".into(),
                    api::Status::Left,
                    Some("left".into())
                ),
                (
                    "n002@127.0.0.1".into(),
                    api::Status::Down,
                    Some("heartbeat_timeout".into())
                ),
                ("n003@127.0.0.1".into(), api::Status::Down, None),
            ]
        );
        // A name that is up again is not listed (whatever the list still holds).
        let up_name = node(2).name;
        let up = BTreeSet::from([&up_name]);
        let names: Vec<String> = d
            .list(t0 + Duration::from_secs(60), &up)
            .into_iter()
            .map(|r| r.node.name)
            .collect();
        assert_eq!(names, ["n001@127.0.0.1", "n003@127.0.0.1"]);
        // An hour after: the first two expire, the third (10 s younger) stays.
        let names: Vec<String> = d
            .list(t0 + RETENTION + Duration::from_secs(5), &BTreeSet::new())
            .into_iter()
            .map(|r| r.node.name)
            .collect();
        assert_eq!(names, ["n003@127.0.0.1"]);
    }

    #[test]
    fn holds_at_most_the_capacity_dropping_the_oldest_first() {
        let d = empty();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let n = CAPACITY as u32 + 10;
        // Recorded newest first, so the order of names is not the order of age.
        for i in 0..n {
            d.record(node(i), None, t0 + Duration::from_secs(u64::from(n - i)));
        }
        let names: BTreeSet<String> = d
            .list(t0 + Duration::from_secs(u64::from(n) + 1), &BTreeSet::new())
            .into_iter()
            .map(|r| r.node.name)
            .collect();
        assert_eq!(names.len(), CAPACITY);
        // The ten oldest are the ten last recorded.
        for i in (n - 10)..n {
            assert!(!names.contains(&node(i).name.to_string()), "n{i} kept");
        }
        assert!(names.contains(&node(0).name.to_string()));
    }
}
