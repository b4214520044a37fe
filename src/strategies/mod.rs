//! Discovery strategies: the [`Strategy`] trait, the [`Context`] a strategy runs in, and
//! the strategies that ship with rallypoint.
//!
//! A strategy only discovers. It reports the full set of peers it currently sees
//! ([`PeerSet`]) each time that set changes, through [`Context::report`]; it never connects
//! anything. When discovery fails (an API is down, a query times out) it calls
//! [`Context::failing`] and keeps its last good set: a failure never empties the set.
//! The shared code here diffs the sets, logs transitions and counts, so a strategy is
//! only the code that computes its set.
//!
//! Writing your own:
//!
//! ```
//! use rallypoint::strategies::{Context, Peer, PeerSet, Strategy};
//!
//! /// Reads `host:port` lines from a file every few seconds.
//! struct FromFile(std::path::PathBuf);
//!
//! impl Strategy for FromFile {
//!     fn kind(&self) -> &'static str {
//!         "file"
//!     }
//!
//!     async fn run(self, ctx: Context) {
//!         loop {
//!             match std::fs::read_to_string(&self.0) {
//!                 Ok(text) => {
//!                     let peers: PeerSet = text
//!                         .lines()
//!                         .filter_map(|l| l.trim().parse().ok())
//!                         .map(Peer::new)
//!                         .collect();
//!                     ctx.report(peers);
//!                 }
//!                 Err(e) => ctx.failing(&e),
//!             }
//!             tokio::select! {
//!                 _ = ctx.shutdown() => return,
//!                 _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
//!             }
//!         }
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cookie::{Cookie, Cookies};
use crate::node::Node;

/// Retry timing (moved below the strategies and the membership, which both use it).
pub use crate::backoff;
pub use crate::peer::{Peer, PeerSet};
#[cfg(feature = "dns")]
pub mod dns;
pub mod gossip;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod static_hosts;

/// A discovery strategy. It runs as its own task, for as long as the cluster runs, and
/// reports through its [`Context`].
///
/// Implement it with `async fn run(self, ctx: Context)`; the future must be `Send`.
pub trait Strategy: Send + 'static {
    /// A short name for the kind of strategy (`"static"`, `"gossip"`, …), shown in logs,
    /// metrics and the HTTP API.
    fn kind(&self) -> &'static str;

    /// Whether this strategy's set is authoritative unless configured otherwise: a peer
    /// that has left every authoritative set is pruned (disconnected and refused) after
    /// the topology's `prune_after`. Kubernetes and DNS are; static hosts and gossip are
    /// not.
    fn authoritative(&self) -> bool {
        false
    }

    /// Runs discovery until [`Context::shutdown`] resolves. Reports each new full set
    /// with [`Context::report`], and failures with [`Context::failing`]. Should not
    /// return before shutdown; if it does, its last reported set stays in force.
    fn run(self, ctx: Context) -> impl Future<Output = ()> + Send;
}

/// What a topology has reported, as the membership, the HTTP API and the metrics see it.
#[derive(Clone, Debug, Default)]
pub struct TopologyStatus {
    /// The strategy's kind (see [`Strategy::kind`]).
    pub strategy: &'static str,
    /// The current candidate set (this node excluded).
    pub peers: Arc<PeerSet>,
    /// Whether the strategy has reported a set at least once.
    pub reported: bool,
    /// The last failure, while the strategy is failing; `None` once it succeeds again.
    pub last_error: Option<String>,
    /// When the strategy last reported a set (success).
    pub last_success: Option<SystemTime>,
    /// Since when the strategy has been failing (the start of the current run of
    /// failures); `None` while it is healthy.
    pub failing_since: Option<SystemTime>,
    /// How many failures the strategy reported in all.
    pub errors_total: u64,
    /// Strategy-specific counters (for example gossip's packets by result), by name.
    pub counters: BTreeMap<&'static str, u64>,
}

/// What a running strategy is handed: who this node is, the cluster's cookies, the sink
/// for its peer sets and its health, and the shutdown signal.
#[derive(Clone)]
pub struct Context {
    topology: Arc<str>,
    local: Node,
    cookies: Cookies,
    status: watch::Sender<TopologyStatus>,
    candidates: watch::Sender<Option<Arc<PeerSet>>>,
    shutdown: CancellationToken,
}

/// The other end of a [`Context`]: observes what the strategy reports and stops it.
/// The cluster holds one per topology; tests of a strategy use it directly.
pub struct TopologyHandle {
    /// The strategy's reports: the set and its health and counters (for the API and
    /// metrics); changes with every counter bump.
    pub status: watch::Receiver<TopologyStatus>,
    /// The candidate set alone: `None` until the strategy first reports, then changes
    /// only when the set does (what the membership follows).
    pub candidates: watch::Receiver<Option<Arc<PeerSet>>>,
    /// Cancel to stop the strategy.
    pub shutdown: CancellationToken,
}

impl Context {
    /// A context for running a strategy named `topology` on behalf of `local`, holding
    /// just `cookie`, and the handle that observes it. Tests of a strategy make these.
    pub fn new(
        topology: &str,
        strategy: &'static str,
        local: Node,
        cookie: Cookie,
    ) -> (Context, TopologyHandle) {
        Self::with_cookies(topology, strategy, local, Cookies::new(cookie))
    }

    /// As [`new`](Self::new), holding several cookies (the primary and those also
    /// accepted, as during a rotation). The cluster makes its contexts with this.
    pub fn with_cookies(
        topology: &str,
        strategy: &'static str,
        local: Node,
        cookies: Cookies,
    ) -> (Context, TopologyHandle) {
        let (tx, rx) = watch::channel(TopologyStatus {
            strategy,
            ..TopologyStatus::default()
        });
        let (candidates_tx, candidates_rx) = watch::channel(None);
        let shutdown = CancellationToken::new();
        (
            Context {
                topology: Arc::from(topology),
                local,
                cookies,
                status: tx,
                candidates: candidates_tx,
                shutdown: shutdown.clone(),
            },
            TopologyHandle {
                status: rx,
                candidates: candidates_rx,
                shutdown,
            },
        )
    }

    /// The topology's name (the key in the configuration).
    pub fn topology(&self) -> &str {
        &self.topology
    }

    /// This node: name, advertised cluster address, incarnation.
    pub fn local(&self) -> &Node {
        &self.local
    }

    /// The cluster's primary cookie: the one this node dials and sends with (gossip
    /// seals its packets with a key derived from it by default).
    pub fn cookie(&self) -> &Cookie {
        self.cookies.primary()
    }

    /// Every cookie this node accepts from peers, the primary first (gossip opens
    /// packets sealed with a key derived from any of them).
    pub fn cookies(&self) -> &Cookies {
        &self.cookies
    }

    /// Reports the full set of peers the strategy sees now. This node itself (by name or
    /// address) is left out. Logs what was added and removed when the set changed, and a
    /// recovery when the strategy had been failing.
    pub fn report(&self, peers: PeerSet) {
        self.set_peers(peers, true);
    }

    /// Reports the set as [`report`](Self::report) does, for a strategy that is still
    /// failing in part (one host of several does not resolve, heartbeats cannot be sent
    /// but some arrive): the set is replaced, the error stays, and no recovery is logged,
    /// so a lasting failure is one warning, not one per report.
    pub fn report_degraded(&self, peers: PeerSet) {
        self.set_peers(peers, false);
    }

    fn set_peers(&self, peers: PeerSet, recovered: bool) {
        let me = &self.local;
        let peers: PeerSet = peers
            .into_iter()
            .filter(|p| p.addr != me.addr && p.name.as_ref() != Some(&me.name))
            .collect();
        let topology = &self.topology;
        self.status.send_modify(|st| {
            if recovered && let Some(err) = st.last_error.take() {
                tracing::info!(%topology, previous_error = %err, "discovery recovered");
                st.failing_since = None;
            }
            st.last_success = Some(SystemTime::now());
            if !st.reported || *st.peers != peers {
                let added: Vec<String> = peers.difference(&st.peers).map(|p| p.to_string()).collect();
                let removed: Vec<String> =
                    st.peers.difference(&peers).map(|p| p.to_string()).collect();
                if !added.is_empty() || !removed.is_empty() {
                    tracing::info!(%topology, ?added, ?removed, total = peers.len(), "candidate peers changed");
                }
                st.peers = Arc::new(peers);
                st.reported = true;
                self.candidates.send_replace(Some(st.peers.clone()));
            }
        });
    }

    /// Says that discovery is failing. The last good set stays in force. Logged as a
    /// warning when the strategy starts failing or the error changes, at debug level
    /// while it keeps failing the same way; always counted.
    pub fn failing(&self, error: &dyn fmt::Display) {
        let msg = error.to_string();
        let topology = &self.topology;
        self.status.send_modify(|st| {
            st.errors_total += 1;
            if st.failing_since.is_none() {
                st.failing_since = Some(SystemTime::now());
            }
            if st.last_error.as_deref() != Some(msg.as_str()) {
                tracing::warn!(%topology, error = %msg, "discovery failing; keeping the last good set");
            } else {
                tracing::debug!(%topology, error = %msg, "discovery still failing");
            }
            st.last_error = Some(msg);
        });
    }

    /// Adds `n` to the strategy-specific counter `name` (shown in metrics and the API).
    pub fn count(&self, name: &'static str, n: u64) {
        self.status
            .send_modify(|st| *st.counters.entry(name).or_default() += n);
    }

    /// Resolves when the cluster shuts down; the strategy should then return.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + '_ {
        self.shutdown.cancelled()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Sleeps for `d`, or returns `false` early when shutdown begins (`true` otherwise).
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn the_candidates_channel_changes_with_the_set_only() {
        let me = Node {
            name: "me@127.0.0.1".parse().expect("name"),
            addr: "127.0.0.1:1".parse().expect("addr"),
            incarnation: 1,
        };
        let (ctx, mut h) = Context::new("t", "test", me, Cookie::new("a-cookie-of-16-bytes"));
        assert_eq!(
            *h.candidates.borrow_and_update(),
            None,
            "nothing before a report"
        );
        let a: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:3".parse().expect("addr");

        // The first report, even of no peers, is a set.
        ctx.report(PeerSet::new());
        assert!(h.candidates.has_changed().expect("open"));
        assert_eq!(
            h.candidates.borrow_and_update().as_deref(),
            Some(&PeerSet::new())
        );

        // Counters, failures and the same set again change the status, not the set.
        ctx.count("packets", 3);
        ctx.failing(&"down");
        ctx.report(PeerSet::new());
        assert!(h.status.has_changed().expect("open"));
        assert!(!h.candidates.has_changed().expect("open"));

        // A new set, reported whole or degraded, is sent.
        ctx.report_degraded(PeerSet::from([Peer::new(a)]));
        assert!(h.candidates.has_changed().expect("open"));
        assert_eq!(
            h.candidates.borrow_and_update().as_deref(),
            Some(&PeerSet::from([Peer::new(a)]))
        );
        ctx.report(PeerSet::from([Peer::new(a), Peer::new(b)]));
        assert_eq!(
            h.candidates.borrow_and_update().as_deref().map(|s| s.len()),
            Some(2)
        );
    }
}
