//! The bodies of the HTTP API, as JSON. Shared by the server and the client.
//!
//! A node is written `{"name", "addr", "incarnation", "up_since"}`: the incarnation as a
//! decimal string (a `u64` does not fit a JavaScript number), `up_since` (RFC 3339, UTC)
//! only for members, when this node saw them come up.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::events::{DownReason, Member, Snapshot};

/// The SSE event name of a snapshot.
pub const SNAPSHOT: &str = "snapshot";
/// The SSE event name of a node coming up.
pub const NODEUP: &str = "nodeup";
/// The SSE event name of a node going down.
pub const NODEDOWN: &str = "nodedown";

/// A node as the API writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `basename@host`.
    pub name: String,
    /// The node's advertised cluster address.
    pub addr: SocketAddr,
    /// The node's incarnation, in decimal.
    pub incarnation: String,
    /// When this node saw it come up (RFC 3339, UTC); members only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since: Option<String>,
}

impl Node {
    /// A node without `up_since`.
    pub fn of(node: &crate::Node) -> Self {
        Node {
            name: node.name.to_string(),
            addr: node.addr,
            incarnation: node.incarnation.to_string(),
            up_since: None,
        }
    }

    /// A member, with `up_since`.
    pub fn member(member: &Member) -> Self {
        Node {
            up_since: Some(rfc3339(member.up_since)),
            ..Node::of(&member.node)
        }
    }
}

/// `GET /v1/members`, and the data of a `snapshot` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// This node.
    #[serde(rename = "self")]
    pub local: Node,
    /// The peers that are up, sorted by name.
    pub members: Vec<Node>,
    /// `GET /v1/members` only: the peers recently down or left (within the last hour,
    /// at most 256, sorted by name), omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed: Vec<Departed>,
}

/// A member's status, as `rallypoint members` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Connected and proved the cookie.
    Up,
    /// Went down: its connection closed, it fell silent, or it was pruned.
    Down,
    /// Left gracefully.
    Left,
}

impl Status {
    /// The status as written (`up`, `down`, `left`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Left => "left",
        }
    }
}

/// A peer recently down or left, in `GET /v1/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departed {
    /// The instance that went down.
    pub node: Node,
    /// `down` or `left`.
    pub status: Status,
    /// Why (as in a `nodedown` event); `null` when this node missed the event (it fell
    /// behind and found the peer gone).
    pub reason: Option<String>,
    /// When this node saw it go (RFC 3339, UTC).
    pub since: String,
}

impl Members {
    /// The body for a snapshot.
    pub fn of(snapshot: &Snapshot) -> Self {
        Members {
            local: Node::of(&snapshot.local),
            members: snapshot.members.values().map(Node::member).collect(),
            departed: Vec::new(),
        }
    }
}

/// The data of a `nodeup` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUp {
    /// The node that came up (with `up_since` when known).
    pub node: Node,
}

/// The data of a `nodedown` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDown {
    /// The instance that went down.
    pub node: Node,
    /// Why: `connection_closed`, `heartbeat_timeout`, `left` or `pruned`.
    pub reason: String,
}

impl NodeDown {
    /// The body for a node that went down.
    pub fn of(node: &crate::Node, reason: DownReason) -> Self {
        NodeDown {
            node: Node::of(node),
            reason: reason.as_str().to_owned(),
        }
    }
}

/// A time in RFC 3339, UTC, with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One topology in `GET /v1/topologies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The topology's name (`[topologies.NAME]`).
    pub name: String,
    /// The strategy that runs it (`static`, `dns`, …).
    pub strategy: String,
    /// The current candidate set (this node excluded), sorted.
    pub peers: Vec<Peer>,
    /// Whether the strategy has reported a set at least once.
    pub reported: bool,
    /// The last failure, while the strategy is failing; `null` once it succeeds again.
    pub last_error: Option<String>,
    /// When the strategy last reported a set (RFC 3339, UTC); `null` before the first.
    pub last_success: Option<String>,
    /// Since when the strategy has been failing (RFC 3339, UTC); `null` while healthy.
    #[serde(default)]
    pub failing_since: Option<String>,
    /// How many failures the strategy reported in all.
    pub errors_total: u64,
    /// Strategy-specific counters, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// A candidate peer: its cluster address, and its name when the strategy knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's cluster address.
    pub addr: SocketAddr,
    /// The peer's node name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Topology {
    /// The body for one topology's status.
    pub fn of(name: &str, status: &crate::strategies::TopologyStatus) -> Self {
        Topology {
            name: name.to_owned(),
            strategy: status.strategy.to_owned(),
            peers: status
                .peers
                .iter()
                .map(|p| Peer {
                    addr: p.addr,
                    name: p.name.as_ref().map(|n| n.to_string()),
                })
                .collect(),
            reported: status.reported,
            last_error: status.last_error.clone(),
            last_success: status.last_success.map(rfc3339),
            failing_since: status.failing_since.map(rfc3339),
            errors_total: status.errors_total,
            counters: status
                .counters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }
}

/// `GET /v1/topologies`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topologies {
    /// The topologies, sorted by name.
    pub topologies: Vec<Topology>,
}

/// `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Whether at least `min_members` peers are up.
    pub ready: bool,
    /// How many peers are up.
    pub members: usize,
    /// The configured `min_members`.
    pub min_members: usize,
}
