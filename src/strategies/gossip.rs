//! gossip strategy (being written).
