//! Cluster pub/sub over the authenticated peer connections.
//!
//! [`Cluster::publish`](crate::Cluster::publish) sends a message to every member (and to
//! this node's own subscribers), [`Cluster::send`](crate::Cluster::send) to one member,
//! and [`Cluster::topic`](crate::Cluster::topic) subscribes to a topic on this node.
//!
//! Delivery is **at most once**, in order per sender and topic, to the members that are
//! up when the message is sent. Two bounded queues decide what happens under load:
//! - towards a peer: when a peer's write queue is more than three quarters full, further
//!   messages to it are dropped (and counted as `messages_dropped`) while heartbeats and
//!   membership frames still go through; a peer whose queue fills up entirely is cut off
//!   (it reconnects).
//! - towards a local subscriber: each topic subscription holds up to `capacity` messages
//!   (1024); one that falls further behind is told how many it missed
//!   ([`TopicError::Lagged`]) and continues with the newest.
//!
//! Applications that must not lose data re-read it from where it is stored when a message
//! arrives, and also on a timer (as the event-store example does): a message is a hint.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::node::Node;

/// A pub/sub message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The node that sent it.
    pub from: Node,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Why a topic subscription yielded no message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The subscriber fell behind; this many messages were dropped for it. The next
    /// `recv` continues with the oldest message still held.
    #[error("subscriber fell behind: {0} messages dropped")]
    Lagged(u64),
    /// The cluster has shut down.
    #[error("the cluster has shut down")]
    Closed,
}

/// A subscription to one topic on this node.
pub struct TopicSubscription {
    topic: String,
    rx: broadcast::Receiver<Message>,
}

impl TopicSubscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message.
    pub async fn recv(&mut self) -> Result<Message, TopicError> {
        match self.rx.recv().await {
            Ok(m) => Ok(m),
            Err(broadcast::error::RecvError::Lagged(n)) => Err(TopicError::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => Err(TopicError::Closed),
        }
    }
}

/// The topics this node's subscribers listen to.
pub(crate) struct Registry {
    capacity: usize,
    topics: Mutex<HashMap<String, broadcast::Sender<Message>>>,
}

impl Registry {
    pub(crate) fn new(capacity: usize) -> Self {
        Registry {
            capacity: capacity.max(1),
            topics: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn subscribe(&self, topic: &str) -> TopicSubscription {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let tx = topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0);
        TopicSubscription {
            topic: topic.to_owned(),
            rx: tx.subscribe(),
        }
    }

    /// Hands a message to the topic's subscribers; returns how many got it.
    pub(crate) fn deliver(&self, msg: Message) -> usize {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = topics.get(&msg.topic) else {
            return 0;
        };
        if tx.receiver_count() == 0 {
            topics.remove(&msg.topic);
            return 0;
        }
        tx.send(msg).unwrap_or(0)
    }

    /// Ends every subscription (they see [`TopicError::Closed`]).
    pub(crate) fn close(&self) {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
