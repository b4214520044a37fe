//! `GET /v1/topologies/stream`: topology health as Server-Sent Events, so that a
//! dashboard (the status page among them) follows it instead of polling
//! `/v1/topologies`.
//!
//! Every event is a `topologies` event whose data is the whole body of
//! `/v1/topologies` ([`api::Topologies`]): the first at once, then one whenever that
//! body changes (a candidate set, an error, a recovery, a counter, a success time), at
//! most one per [`MIN_INTERVAL`]: counters such as gossip's move with every packet, and
//! a reader wants the latest state, not every step. An event is built only when the
//! client is ready to take it, so a client that does not read holds nothing but its
//! socket buffers. No ids and no resume: each event is complete. Between events the
//! server sends keep-alive comments; the stream ends when the daemon shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api;
use super::sse::KEEP_ALIVE;
use crate::Cluster;
use crate::strategies::TopologyStatus;

/// The event's name.
pub const EVENT: &str = "topologies";
/// The least time between two events of one stream.
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

/// The stream's state between two events.
struct Follow {
    watches: Vec<Watch>,
    stop: CancellationToken,
    /// The data of the last event sent, and when it was sent.
    last: Option<(String, Instant)>,
}

impl Follow {
    /// The next event: the current body, once it differs from the last one sent and
    /// [`MIN_INTERVAL`] has passed since; `None` once the daemon stops.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some((_, sent)) = &self.last {
                let sent = *sent;
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = any_changed(&mut self.watches) => {}
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = tokio::time::sleep_until(sent + MIN_INTERVAL) => {}
                }
            }
            // Marked seen before it is read: a change after this wakes the next round.
            let statuses: Vec<(String, TopologyStatus)> = self
                .watches
                .iter_mut()
                .map(|(name, rx)| (name.clone(), rx.borrow_and_update().clone()))
                .collect();
            let body = body(statuses.iter().map(|(n, s)| (n.as_str(), s)));
            let data = match serde_json::to_string(&body) {
                Ok(data) => data,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode the topologies; ending a stream");
                    return None;
                }
            };
            if self.last.as_ref().is_some_and(|(d, _)| *d == data) {
                continue;
            }
            let event = SseEvent::default().event(EVENT).data(data.clone());
            self.last = Some((data, Instant::now()));
            return Some(event);
        }
    }
}

/// Resolves when any of the watches has a value not yet seen. A watch whose strategy
/// has ended never resolves (it has nothing more to say); with none left, this waits
/// for ever (the caller also waits for the shutdown).
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

/// The SSE response for one client, ended by `stop`.
pub fn stream(
    cluster: &Cluster,
    stop: CancellationToken,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>> + use<>> {
    let follow = Follow {
        watches: cluster.topology_watches(),
        stop,
        last: None,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        let event = f.next().await?;
        Some((Ok(event), f))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{Peer, PeerSet};

    fn follow(watches: Vec<Watch>, stop: CancellationToken) -> Follow {
        Follow {
            watches,
            stop,
            last: None,
        }
    }

    /// The event as written on the wire; checks that it is a `topologies` event.
    async fn parse(event: SseEvent) -> String {
        use axum::response::IntoResponse;
        let one = futures::stream::iter([Ok::<_, Infallible>(event)]);
        let body = Sse::new(one).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
        assert!(text.starts_with("event: topologies\ndata: {"), "{text}");
        text
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_event_is_at_once_then_changes_coalesce_and_repeats_are_dropped() {
        let (tx, rx) = watch::channel(TopologyStatus {
            strategy: "static",
            ..TopologyStatus::default()
        });
        let stop = CancellationToken::new();
        let mut f = follow(vec![("peers".into(), rx)], stop.clone());
        let t0 = Instant::now();
        parse(f.next().await.expect("first event")).await;
        assert_eq!(Instant::now(), t0, "the first event waits for nothing");

        // Three changes in a burst: one event, MIN_INTERVAL after the first, with the
        // last state.
        for port in [1, 2, 3] {
            tx.send_modify(|st| {
                st.peers = std::sync::Arc::new(PeerSet::from([Peer::new(
                    std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                )]));
            });
        }
        let second = parse(f.next().await.expect("second event")).await;
        assert_eq!(Instant::now(), t0 + MIN_INTERVAL);
        assert!(second.contains("127.0.0.1:3"), "{second}");
        assert!(!second.contains("127.0.0.1:2"), "{second}");

        // A change that leaves the body as it was sends nothing (a minute of virtual
        // time passes without an event); a real one does.
        tx.send_modify(|_| {});
        let quiet = tokio::time::timeout(Duration::from_secs(60), f.next()).await;
        assert!(quiet.is_err(), "an event for an unchanged body");
        tx.send_modify(|st| st.errors_total = 7);
        let third = parse(f.next().await.expect("third event")).await;
        assert!(third.contains("\"errors_total\":7"), "{third}");

        // A strategy that ended leaves the stream waiting (no spin); shutdown ends it.
        drop(tx);
        let quiet = tokio::time::timeout(Duration::from_secs(60), f.next()).await;
        assert!(quiet.is_err(), "the stream woke with nothing to say");
        stop.cancel();
        assert!(f.next().await.is_none(), "shutdown ends the stream");
    }
}
