//! `GET /v1/events`: membership updates as Server-Sent Events.
//!
//! The stream starts with a `snapshot` event (the body of `/v1/members`), then carries
//! `nodeup` (`{"node": NODE}`) and `nodedown` (`{"node": NODE, "reason": "…"}`) events in
//! the order the membership emitted them. When this client fell behind and the
//! membership dropped events it had not read, it gets a fresh `snapshot` instead, and the
//! events continue from there.
//!
//! Every event has an `id`: the sequence number of the last membership event it
//! includes. A snapshot's id is its sequence number; the events after it are numbered
//! on from there, one by one (a [`Subscription`] yields every later event exactly once,
//! in order, until a resync, which brings its own sequence number). Between events the
//! server sends keep-alive comments. The stream ends when the daemon shuts down.

use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::api;
use crate::Cluster;
use crate::events::{Event, Snapshot, Subscription, Update};

/// How often a keep-alive comment is sent on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One client's stream.
struct Client {
    sub: Subscription,
    /// The current members, to tell since when a node that came up is up.
    members: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    /// The id of the last event sent; `None` before the first snapshot.
    seq: Option<u64>,
}

/// The SSE response for one client: its own subscription, ended by `stop`.
pub fn events(
    cluster: &Cluster,
    stop: CancellationToken,
) -> Sse<impl Stream<Item = Result<SseEvent, axum::Error>> + use<>> {
    let client = Client {
        sub: cluster.subscribe(),
        members: cluster.watch(),
        stop,
        seq: None,
    };
    let stream = futures::stream::unfold(client, |mut c| async move {
        let Some(seq) = c.seq else {
            let snapshot = c.sub.snapshot().clone();
            c.seq = Some(snapshot.seq);
            return Some((snapshot_event(&snapshot), c));
        };
        let update = tokio::select! {
            _ = c.stop.cancelled() => return None,
            u = c.sub.recv() => u?,
        };
        let event = match update {
            Update::Event(ev) => {
                c.seq = Some(seq + 1);
                event(&ev, seq + 1, &c.members)
            }
            Update::Resync(snapshot) => {
                tracing::debug!(
                    seq = snapshot.seq,
                    "an SSE client fell behind; sending it a fresh snapshot"
                );
                c.seq = Some(snapshot.seq);
                snapshot_event(&snapshot)
            }
        };
        Some((event, c))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn snapshot_event(snapshot: &Arc<Snapshot>) -> Result<SseEvent, axum::Error> {
    SseEvent::default()
        .event(api::SNAPSHOT)
        .id(snapshot.seq.to_string())
        .json_data(api::Members::of(snapshot))
}

fn event(
    ev: &Event,
    seq: u64,
    members: &watch::Receiver<Arc<Snapshot>>,
) -> Result<SseEvent, axum::Error> {
    let base = SseEvent::default().id(seq.to_string());
    match ev {
        Event::NodeUp(node) => {
            // The snapshot is published before the event, so the member is there unless
            // it went down again since.
            let body = match members.borrow().members.get(&node.name) {
                Some(m) if m.node == *node => api::Node::member(m),
                _ => api::Node::of(node),
            };
            base.event(api::NODEUP)
                .json_data(api::NodeUp { node: body })
        }
        Event::NodeDown { node, reason } => base
            .event(api::NODEDOWN)
            .json_data(api::NodeDown::of(node, *reason)),
    }
}
