//! Candidate peers: what a strategy reports and the membership dials. Ground types,
//! below both (re-exported as [`crate::strategies::Peer`] and
//! [`crate::strategies::PeerSet`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use crate::node::NodeName;

/// A candidate peer: the address to dial, and the node's name where the strategy knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The peer's cluster address (TCP).
    pub addr: SocketAddr,
    /// The peer's node name, when the strategy knows it (gossip, Kubernetes, DNS do).
    pub name: Option<NodeName>,
}

impl Peer {
    /// A peer known only by its address.
    pub fn new(addr: SocketAddr) -> Self {
        Peer { addr, name: None }
    }

    /// A peer known by name and address.
    pub fn named(name: NodeName, addr: SocketAddr) -> Self {
        Peer {
            addr,
            name: Some(name),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n} ({})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// The full set of candidate peers a strategy currently sees.
pub type PeerSet = BTreeSet<Peer>;
