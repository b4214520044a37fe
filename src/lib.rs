//! rallypoint forms clusters: discovery strategies find peers, a membership supervisor
//! connects to them, authenticates each by the cluster's cookie, detects failure, heals
//! after partitions, and tells subscribers `NodeUp` / `NodeDown`. It is to Rust services
//! what libcluster is to Elixir.
//!
//! ```no_run
//! use rallypoint::strategies::static_hosts::StaticHosts;
//! use rallypoint::{Cluster, Event, Update};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = Cluster::builder()
//!     .name("app@10.0.0.5")
//!     .cluster_addr("0.0.0.0:45893".parse()?)
//!     .cookie("a shared secret, 16+ bytes")
//!     .topology("peers", StaticHosts::new(["10.0.0.6:45893", "node3:45893"]))
//!     .start()
//!     .await?;
//!
//! println!("members now: {:?}", cluster.members());
//! let mut events = cluster.subscribe();
//! while let Some(update) = events.recv().await {
//!     match update {
//!         Update::Event(Event::NodeUp(node)) => println!("up: {node}"),
//!         Update::Event(Event::NodeDown { node, reason }) => println!("down: {node} ({reason})"),
//!         Update::Resync(snapshot) => println!("fell behind; members: {:?}", snapshot.nodes()),
//!     }
//! }
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! And one that runs as it is: two nodes on loopback, the second seeded with the
//! first's address; the first hears it come up, then leave.
//!
//! ```
//! use rallypoint::strategies::static_hosts::StaticHosts;
//! use rallypoint::{Cluster, DownReason, Event, Update};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Cluster::builder()
//!     .name("a@127.0.0.1")
//!     .cluster_addr("127.0.0.1:0".parse()?)
//!     .cookie("the doc example's cookie")
//!     .start()
//!     .await?;
//! let mut events = a.subscribe();
//! let b = Cluster::builder()
//!     .name("b@127.0.0.1")
//!     .cluster_addr("127.0.0.1:0".parse()?)
//!     .cookie("the doc example's cookie")
//!     .topology("seed", StaticHosts::new([a.local().addr.to_string()]))
//!     .start()
//!     .await?;
//! match events.recv().await {
//!     Some(Update::Event(Event::NodeUp(node))) => assert_eq!(node.name.as_str(), "b@127.0.0.1"),
//!     other => panic!("expected b up, got {other:?}"),
//! }
//! assert_eq!(a.members().len(), 1);
//! b.shutdown().await;
//! match events.recv().await {
//!     Some(Update::Event(Event::NodeDown { reason, .. })) => assert_eq!(reason, DownReason::Left),
//!     other => panic!("expected b down, got {other:?}"),
//! }
//! a.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`node`]: node identity ([`NodeName`], [`Node`]).
//! - [`strategies`]: the [`Strategy`](strategies::Strategy) trait and the strategies
//!   (static hosts, gossip, Kubernetes, DNS).
//! - [`membership`]: the sans-IO core, the wire format, the tokio driver, the simulator.
//! - [`events`]: [`Event`], [`DownReason`], [`Subscription`].
//! - [`cluster`]: [`Cluster`] and its builder.
//! - [`pubsub`]: messages between members over the peer connections.
//! - `config` and `daemon` (feature `daemon`): the `rallypoint` binary's parts.

#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod backoff;
pub mod cluster;
#[cfg(feature = "daemon")]
pub mod config;
pub mod cookie;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod events;
pub mod membership;
pub mod netutil;
pub mod node;
pub mod peer;
pub mod pubsub;
pub mod strategies;
pub mod warn_limit;

pub use cluster::{Builder, Cluster, Error, SendError, TopologyOptions};
pub use cookie::Cookie;
pub use events::{DownReason, Event, Snapshot, Subscription, Update};
pub use node::{Node, NodeName};
pub use pubsub::{Message, TopicError, TopicSubscription};

/// The default UDP multicast group of the gossip strategy.
pub const DEFAULT_GOSSIP_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(230, 1, 1, 251);
/// The default UDP port of the gossip strategy.
pub const DEFAULT_GOSSIP_PORT: u16 = 45892;
/// The default TCP port for peer connections.
pub const DEFAULT_CLUSTER_PORT: u16 = 45893;
/// The default address of the daemon's HTTP API.
pub const DEFAULT_HTTP_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 45894);
