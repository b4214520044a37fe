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
}

impl Members {
    /// The body for a snapshot.
    pub fn of(snapshot: &Snapshot) -> Self {
        Members {
            local: Node::of(&snapshot.local),
            members: snapshot.members.values().map(Node::member).collect(),
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
