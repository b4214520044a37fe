//! Membership events and how they reach subscribers.
//!
//! The membership publishes twice:
//! - a [`watch`](tokio::sync::watch) of the current [`Snapshot`] (late readers, the HTTP
//!   API): sent after every event, with the event already applied;
//! - a [`broadcast`](tokio::sync::broadcast) of each [`Event`], sent right after the
//!   snapshot that includes it.
//!
//! A [`Subscription`] joins the two: it starts from an atomic snapshot, then yields every
//! later event exactly once, in order. Per node name, `NodeUp` and `NodeDown` strictly
//! alternate, starting from the snapshot; no event is ever about this node itself. A
//! subscriber that falls so far behind that the channel dropped events it had not read is
//! told so: it gets [`Update::Resync`] with a fresh snapshot instead of a silent gap.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::node::{Node, NodeName};

/// Why a node went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// Its connection closed (the process died, the host reset the connection, or a
    /// newer incarnation of the node replaced it).
    ConnectionClosed,
    /// No frame came from it for the heartbeat timeout (`down_after`).
    HeartbeatTimeout,
    /// It announced that it was leaving (graceful shutdown).
    Left,
    /// It left every authoritative topology and the grace period (`prune_after`) passed.
    Pruned,
}

impl DownReason {
    /// The reason as written in the HTTP API and logs (`connection_closed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::ConnectionClosed => "connection_closed",
            DownReason::HeartbeatTimeout => "heartbeat_timeout",
            DownReason::Left => "left",
            DownReason::Pruned => "pruned",
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A membership transition.
///
/// Order: for one node name, `NodeUp` and `NodeDown` alternate, `NodeDown` only after a
/// `NodeUp` for the same incarnation. A restarted node (same name, new incarnation) gives
/// `NodeDown` for the old incarnation, then `NodeUp` for the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A peer connected and proved that it knows the cookie.
    NodeUp(Node),
    /// A peer that was up is down.
    NodeDown {
        /// The instance that went down.
        node: Node,
        /// Why.
        reason: DownReason,
    },
}

impl Event {
    /// The node the event is about.
    pub fn node(&self) -> &Node {
        match self {
            Event::NodeUp(n) => n,
            Event::NodeDown { node, .. } => node,
        }
    }
}

/// A member as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The peer.
    pub node: Node,
    /// When this node saw it come up (wall clock).
    pub up_since: SystemTime,
}

/// The members at one point of the event sequence.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The sequence number of the last event applied (0: none yet).
    pub seq: u64,
    /// This node.
    pub local: Node,
    /// The peers that are up, by name (this node excluded).
    pub members: BTreeMap<NodeName, Member>,
}

impl Snapshot {
    /// The nodes that are up, sorted by name.
    pub fn nodes(&self) -> Vec<Node> {
        self.members.values().map(|m| m.node.clone()).collect()
    }
}

/// What a [`Subscription`] yields.
#[derive(Clone, Debug)]
pub enum Update {
    /// The next membership event.
    Event(Event),
    /// The subscriber fell behind and events were dropped: this is the membership now.
    /// Compare it with what you had; the events that follow continue from it.
    Resync(Arc<Snapshot>),
}

/// A stream of membership updates that starts from a snapshot (see the [module
/// docs](self)).
pub struct Subscription {
    snapshot: Arc<Snapshot>,
    last_seq: u64,
    rx: broadcast::Receiver<(u64, Event)>,
    members: watch::Receiver<Arc<Snapshot>>,
}

impl Subscription {
    /// The members when the subscription started: the events it yields come after it.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The sequence number of the last update yielded (of the snapshot before the
    /// first): the position in the cluster's event sequence this subscriber has reached,
    /// comparable with [`Snapshot::seq`].
    pub fn seq(&self) -> u64 {
        self.last_seq
    }

    /// The next update; `None` once the cluster has shut down and every event was read.
    pub async fn recv(&mut self) -> Option<Update> {
        loop {
            match self.rx.recv().await {
                Ok((seq, _)) if seq <= self.last_seq => continue,
                Ok((seq, ev)) => {
                    self.last_seq = seq;
                    return Some(Update::Event(ev));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Start again at the tail (the old position may be overwritten again
                    // before it is read), then read the snapshot: the same order as a new
                    // subscription, so nothing falls between the two.
                    self.rx = self.rx.resubscribe();
                    let snap = self.members.borrow().clone();
                    self.last_seq = snap.seq;
                    return Some(Update::Resync(snap));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The publishing side: owned by the membership task, which applies each event to the
/// snapshot, sends the snapshot, then broadcasts the event (in that order, which is what
/// makes [`Subscription`]'s start atomic).
pub(crate) struct Bus {
    members: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<(u64, Event)>,
}

impl Bus {
    /// A bus for `local`, holding up to `capacity` unread events per subscriber.
    pub(crate) fn new(local: Node, capacity: usize) -> Self {
        let (members, _) = watch::channel(Arc::new(Snapshot {
            seq: 0,
            local,
            members: BTreeMap::new(),
        }));
        let (events, _) = broadcast::channel(capacity.max(1));
        Bus { members, events }
    }

    /// Applies and publishes one event.
    pub(crate) fn publish(&self, event: Event, now: SystemTime) {
        let mut seq = 0;
        self.members.send_modify(|snap| {
            let s = Arc::make_mut(snap);
            s.seq += 1;
            seq = s.seq;
            match &event {
                Event::NodeUp(n) => {
                    s.members.insert(
                        n.name.clone(),
                        Member {
                            node: n.clone(),
                            up_since: now,
                        },
                    );
                }
                Event::NodeDown { node, .. } => {
                    s.members.remove(&node.name);
                }
            }
        });
        // No receivers is fine: nobody is subscribed.
        let _ = self.events.send((seq, event));
    }

    /// The current snapshot's receiver.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.members.subscribe()
    }

    /// A new subscription: subscribe to the events first, then read the snapshot.
    pub(crate) fn subscribe(&self) -> Subscription {
        let rx = self.events.subscribe();
        let members = self.members.subscribe();
        let snapshot = members.borrow().clone();
        Subscription {
            last_seq: snapshot.seq,
            snapshot,
            rx,
            members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str, inc: u64) -> Node {
        Node {
            name: n.parse().unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: inc,
        }
    }

    #[tokio::test]
    async fn subscription_starts_at_snapshot_and_yields_later_events_once() {
        let bus = Bus::new(node("me@h", 0), 16);
        bus.publish(Event::NodeUp(node("a@h", 1)), SystemTime::now());
        let mut sub = bus.subscribe();
        assert_eq!(sub.snapshot().members.len(), 1);
        bus.publish(
            Event::NodeDown {
                node: node("a@h", 1),
                reason: DownReason::Left,
            },
            SystemTime::now(),
        );
        match sub.recv().await {
            Some(Update::Event(Event::NodeDown {
                reason: DownReason::Left,
                ..
            })) => {}
            other => panic!("unexpected {other:?}"),
        }
        drop(bus);
        assert!(sub.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_fresh_snapshot() {
        let bus = Bus::new(node("me@h", 0), 2);
        let mut sub = bus.subscribe();
        for i in 0..10 {
            bus.publish(
                Event::NodeUp(node(&format!("n{i}@h"), i)),
                SystemTime::now(),
            );
        }
        match sub.recv().await {
            Some(Update::Resync(snap)) => {
                assert_eq!(snap.members.len(), 10);
                assert_eq!(snap.seq, 10);
            }
            other => panic!("expected resync, got {other:?}"),
        }
        bus.publish(Event::NodeUp(node("late@h", 1)), SystemTime::now());
        match sub.recv().await {
            Some(Update::Event(Event::NodeUp(n))) => assert_eq!(n.name.as_str(), "late@h"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
