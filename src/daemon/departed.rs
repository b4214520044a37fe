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
