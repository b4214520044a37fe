//! Topology health on the event stream: `GET /v1/events?topologies=true` interleaves
//! `topologies` events with the membership's, so that a dashboard (the status page among
//! them) follows both on one connection instead of polling `/v1/topologies`.
//!
//! Each `topologies` event's data is the whole body of `/v1/topologies`
//! ([`api::Topologies`]): the first right after the stream's first membership event,
//! then one whenever that body changes (a candidate set, an error, a recovery, a
//! counter, a report's time), at most one per [`MIN_INTERVAL`]: counters such as
//! gossip's move with every packet, and a reader wants the latest state, not every
//! step. These events carry no `id` (each is complete: a client that reconnects gets a
//! fresh one first), and they count in the client's backlog like any other.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api;
use crate::Cluster;
use crate::strategies::TopologyStatus;

/// The event's name.
pub const EVENT: &str = "topologies";
/// The least time between two `topologies` events of one stream.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One topology's name and the watch of what its strategy reports.
type Watch = (String, watch::Receiver<TopologyStatus>);

/// The body of `/v1/topologies` from these statuses, sorted by name.
pub fn body<'a>(
    statuses: impl IntoIterator<Item = (&'a str, &'a TopologyStatus)>,
) -> api::Topologies {
    let mut topologies: Vec<api::Topology> = statuses
        .into_iter()
        .map(|(name, status)| api::Topology::of(name, status))
        .collect();
    topologies.sort_by(|a, b| a.name.cmp(&b.name));
    api::Topologies { topologies }
}

/// One client's follower of the topologies: yields the body's JSON when it is due.
pub struct Follow {
    watches: Vec<Watch>,
    /// A change seen and not yet sent (kept across a cancelled [`next`](Self::next)).
    dirty: bool,
    /// The data of the last event sent, and when it was sent.
    last: Option<(String, Instant)>,
}

impl Follow {
    /// A follower of the cluster's topologies; its first [`next`](Self::next) answers at
    /// once.
    pub fn new(cluster: &Cluster) -> Follow {
        Follow {
            watches: cluster.topology_watches(),
            dirty: false,
            last: None,
        }
    }

    /// The next event's data: the current body, once it differs from the last one sent
    /// and [`MIN_INTERVAL`] has passed since; `None` if it cannot be encoded.
    /// Cancel-safe: a change seen by a call that was dropped is sent by the next.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some((_, sent)) = &self.last {
                let sent = *sent;
                if !self.dirty {
                    any_changed(&mut self.watches).await;
                    self.dirty = true;
                }
                tokio::time::sleep_until(sent + MIN_INTERVAL).await;
            }
            // Marked seen before it is read: a change after this wakes the next round.
            let statuses: Vec<(String, TopologyStatus)> = self
                .watches
                .iter_mut()
                .map(|(name, rx)| (name.clone(), rx.borrow_and_update().clone()))
                .collect();
            self.dirty = false;
            let body = body(statuses.iter().map(|(n, s)| (n.as_str(), s)));
            let data = match serde_json::to_string(&body) {
                Ok(data) => data,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the topologies");
                    return None;
                }
            };
            if self.last.as_ref().is_some_and(|(d, _)| *d == data) {
                continue;
            }
            self.last = Some((data.clone(), Instant::now()));
            return Some(data);
        }
    }
}

/// Resolves when any of the watches has a value not yet seen. A watch whose strategy
/// has ended never resolves (it has nothing more to say); with none left, this waits
/// for ever (the caller also waits for other things).
async fn any_changed(watches: &mut [Watch]) {
    let waits: Vec<_> = watches
        .iter_mut()
        .map(|(_, rx)| {
            Box::pin(async move {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            })
        })
        .collect();
    if waits.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(waits).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{Peer, PeerSet};

    fn follow(watches: Vec<Watch>) -> Follow {
        Follow {
            watches,
            dirty: false,
            last: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_is_at_once_then_changes_coalesce_repeats_are_dropped_and_none_is_lost() {
        let (tx, rx) = watch::channel(TopologyStatus {
            strategy: "static",
            ..TopologyStatus::default()
        });
        let mut f = follow(vec![("peers".into(), rx)]);
        let t0 = Instant::now();
        let first = f.next().await.expect("first");
        assert!(
            first.starts_with("{\"topologies\":[{\"name\":\"peers\""),
            "{first}"
        );
        assert_eq!(Instant::now(), t0, "the first waits for nothing");

        // Three changes in a burst: one event, MIN_INTERVAL after the first, with the
        // last state.
        for port in [1, 2, 3] {
            tx.send_modify(|st| {
                st.peers = std::sync::Arc::new(PeerSet::from([Peer::new(
                    std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                )]));
            });
        }
        let second = f.next().await.expect("second");
        assert_eq!(Instant::now(), t0 + MIN_INTERVAL);
        assert!(second.contains("127.0.0.1:3"), "{second}");
        assert!(!second.contains("127.0.0.1:2"), "{second}");

        // A change seen by a call that is then dropped (as when the stream's other
        // events win a select) is sent by the next call, when the interval is up.
        tx.send_modify(|st| st.errors_total = 7);
        let cut = tokio::time::timeout(Duration::from_millis(1), f.next()).await;
        assert!(cut.is_err(), "sent before MIN_INTERVAL");
        let third = f.next().await.expect("third");
        assert!(third.contains("\"errors_total\":7"), "{third}");
        assert_eq!(Instant::now(), t0 + 2 * MIN_INTERVAL);

        // A change that leaves the body as it was sends nothing (a minute of virtual
        // time passes without an event).
        tx.send_modify(|_| {});
        let quiet = tokio::time::timeout(Duration::from_secs(60), f.next()).await;
        assert!(quiet.is_err(), "an event for an unchanged body");

        // A strategy that ended leaves the follower waiting, without a spin.
        drop(tx);
        let quiet = tokio::time::timeout(Duration::from_secs(60), f.next()).await;
        assert!(quiet.is_err(), "woke with nothing to say");
    }
}
