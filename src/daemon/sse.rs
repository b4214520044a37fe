//! `GET /v1/events`: membership updates as Server-Sent Events.
//!
//! The stream starts with a `snapshot` event (the body of `/v1/members`), then carries
//! `nodeup` (`{"node": NODE}`) and `nodedown` (`{"node": NODE, "reason": "…"}`) events in
//! the order the membership emitted them. When this client fell behind and the
//! membership dropped events it had not read, it gets a fresh `snapshot` instead, and the
//! events continue from there.
//!
//! Every event has an `id`: the sequence number of the last membership event it
//! includes, plus this process's id base (the time it started, in ms, times 2^20), so
//! that the ids of a restarted daemon never repeat those of the one before it: a client
//! that reconnects to a new process with an old id gets a fresh snapshot, not the new
//! process's events after a number that meant something else. A snapshot's id is its
//! sequence number; the events after it are numbered on from there, one by one (a [`Subscription`] yields every later event exactly once,
//! in order, until a resync, which brings its own sequence number). Between events the
//! server sends keep-alive comments. The stream ends when the daemon shuts down.
//!
//! With `?topologies=true` the stream also carries `topologies` events (topology
//! health, see [`super::topologies`]), without ids, in the same backlog.
//!
//! A client that reconnects with `Last-Event-ID: N` gets the events after `N` instead of
//! a snapshot, when the daemon still holds them all: [`History`] keeps the latest events
//! (`event_history`, default 1024). Otherwise (`N` too old, unknown, or not a number) it
//! gets a fresh `snapshot`, as a new client does; so does a client whose missed events
//! would not fit in its backlog (below).
//!
//! Each client has a bounded backlog: its events are read from its subscription as
//! they come, and queued for its connection; when more than `sse_max_backlog` bytes
//! (default 256 KiB, counted as written on the wire) wait, beyond what the socket's
//! buffers hold, the client does not read (or reads slower than events come) and its
//! connection is closed (`rallypoint_http_connections_closed_total{reason="sse_backlog"}`).
//! A first event (a snapshot, however large) always fits. A client cut this way that
//! reconnects with `Last-Event-ID` resumes from the history if what it missed fits in
//! its backlog, and gets a fresh snapshot otherwise.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::api;
use super::metrics::{Closed, HttpStats};
use super::serve::ConnInfo;
use super::topologies::{self, Follow};
use crate::Cluster;
use crate::events::{Event, Snapshot, Subscription, Update};

/// How often a keep-alive comment is sent on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a resuming client waits for the history to catch up with its own
/// subscription before it settles for a snapshot.
const HISTORY_CATCH_UP: Duration = Duration::from_secs(2);

/// An event as sent: its name and its JSON data.
#[derive(Clone, Debug)]
struct Rendered {
    event: &'static str,
    data: String,
}

impl Rendered {
    fn to_sse(&self, seq: u64) -> SseEvent {
        SseEvent::default()
            .event(self.event)
            .id(seq.to_string())
            .data(self.data.clone())
    }
}

/// The latest events, for clients that resume with `Last-Event-ID`. Fed by its own
/// subscription; holds a contiguous run of events, those after `base`.
pub struct History {
    ring: Mutex<Ring>,
    /// Added to every sequence number to make the ids of this process its own.
    offset: u64,
    /// The sequence number of the latest event recorded (or of the latest resync).
    last: watch::Sender<u64>,
}

struct Ring {
    capacity: usize,
    /// Events after this sequence number are held (`events[i]` is `base + 1 + i`).
    base: u64,
    events: VecDeque<Rendered>,
}

impl History {
    /// Starts recording the cluster's events, keeping the latest `capacity`, until
    /// `stop` is cancelled or the cluster shuts down.
    pub fn start(cluster: &Cluster, capacity: usize, stop: CancellationToken) -> Arc<History> {
        let mut sub = cluster.subscribe();
        let members = cluster.watch();
        let base = sub.snapshot().seq;
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let history = Arc::new(History {
            offset: (started_ms & ((1 << 43) - 1)) << 20,
            ring: Mutex::new(Ring {
                capacity,
                base,
                events: VecDeque::new(),
            }),
            last: watch::Sender::new(base),
        });
        let h = history.clone();
        tokio::spawn(async move {
            while let Some(update) = super::recv_until(&mut sub, &stop).await {
                match update {
                    Update::Event(ev) => match render(&ev, &members) {
                        Ok(r) => h.record(r),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot render an event; history reset");
                            h.reset(*h.last.borrow() + 1);
                        }
                    },
                    Update::Resync(snapshot) => h.reset(snapshot.seq),
                }
            }
        });
        history
    }

    /// What this process adds to sequence numbers to make event ids.
    pub fn id_offset(&self) -> u64 {
        self.offset
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, r: Rendered) {
        let seq = {
            let mut ring = self.ring();
            ring.events.push_back(r);
            while ring.events.len() > ring.capacity {
                ring.events.pop_front();
                ring.base += 1;
            }
            ring.base + ring.events.len() as u64
        };
        self.last.send_replace(seq);
    }

    /// Nothing before `seq` is known any more (a resync).
    fn reset(&self, seq: u64) {
        {
            let mut ring = self.ring();
            ring.events.clear();
            ring.base = seq;
        }
        self.last.send_replace(seq);
    }

    /// The events after `after` up to `upto` included, if all are held.
    async fn between(&self, after: u64, upto: u64) -> Option<Vec<(u64, Rendered)>> {
        let mut last = self.last.subscribe();
        tokio::time::timeout(HISTORY_CATCH_UP, last.wait_for(|l| *l >= upto))
            .await
            .ok()?
            .ok()?;
        let ring = self.ring();
        let held = ring.base + ring.events.len() as u64;
        if after < ring.base || upto > held {
            return None;
        }
        let from = (after - ring.base) as usize;
        let to = (upto - ring.base) as usize;
        Some(
            ring.events
                .range(from..to)
                .enumerate()
                .map(|(i, r)| (after + 1 + i as u64, r.clone()))
                .collect(),
        )
    }
}

/// What bounds one client's stream.
#[derive(Clone)]
pub struct Backlog {
    /// The most bytes of events that may wait for the client to read
    /// (`sse_max_backlog`).
    pub max_bytes: usize,
    /// The client's connection, to cut it; `None` (no [`ConnInfo`], as in tests of the
    /// router alone): the stream only ends.
    pub conn: Option<ConnInfo>,
    /// Counts the clients cut.
    pub stats: Arc<HttpStats>,
}

/// One client's events, rendered, on their way from its pump to its response body.
struct Queued {
    event: SseEvent,
    /// Its size as written ([`wire_size`]).
    size: usize,
}

/// The pump of one client: reads its subscription as events come, whether the client
/// reads or not, and queues them for its response body.
struct Pump {
    sub: Subscription,
    /// The current members, to tell since when a node that came up is up.
    members: watch::Receiver<Arc<Snapshot>>,
    /// Added to sequence numbers to make ids (see [`History::id_offset`]).
    offset: u64,
    tx: mpsc::UnboundedSender<Queued>,
    /// Bytes queued and not yet taken by the response body.
    queued: Arc<AtomicUsize>,
    backlog: Backlog,
    /// With `?topologies=true`: the topology health to interleave.
    topologies: Option<Follow>,
}

/// Why the pump stopped queueing.
enum Stopped {
    /// The client's backlog went over the bound; its connection is cut.
    Overflow,
    /// The response body is gone (the client left).
    Gone,
}

impl Pump {
    /// Queues one event, unless the client's backlog would then exceed the bound: an
    /// event always goes into an empty queue, however large.
    fn push(&self, event: SseEvent, size: usize) -> Result<(), Stopped> {
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(size) > self.backlog.max_bytes {
            if let Some(conn) = &self.backlog.conn {
                conn.cut(Closed::SseBacklog, &self.backlog.stats);
                tracing::debug!(
                    peer = %conn.peer,
                    queued,
                    max = self.backlog.max_bytes,
                    "an SSE client does not read; closing its connection"
                );
            } else {
                self.backlog.stats.closed(Closed::SseBacklog);
            }
            return Err(Stopped::Overflow);
        }
        self.queued.fetch_add(size, Ordering::AcqRel);
        self.tx
            .send(Queued { event, size })
            .map_err(|_| Stopped::Gone)
    }

    fn push_rendered(&self, r: &Rendered, seq: u64) -> Result<(), Stopped> {
        let id = seq + self.offset;
        self.push(r.to_sse(id), wire_size(r.event, id, &r.data))
    }

    /// Queues a `topologies` event (no id: see [`super::topologies`]).
    fn push_topologies(&self, data: String) -> Result<(), Stopped> {
        let size = id_less_wire_size(topologies::EVENT, &data);
        let event = SseEvent::default().event(topologies::EVENT).data(data);
        self.push(event, size)
    }

    fn push_snapshot(&self, snapshot: &Snapshot) -> Result<(), Stopped> {
        let id = snapshot.seq + self.offset;
        match serde_json::to_string(&api::Members::of(snapshot)) {
            Ok(data) => {
                let size = wire_size(api::SNAPSHOT, id, &data);
                let event = SseEvent::default()
                    .event(api::SNAPSHOT)
                    .id(id.to_string())
                    .data(data);
                self.push(event, size)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot render a snapshot; ending an event stream");
                Err(Stopped::Gone)
            }
        }
    }

    /// Queues the replay (or the first snapshot), then every update, until the client
    /// leaves, falls too far behind, or `stop`.
    async fn run(
        mut self,
        seq: Option<u64>,
        replay: Vec<(u64, Rendered)>,
        stop: CancellationToken,
    ) -> Result<(), Stopped> {
        for (s, r) in &replay {
            self.push_rendered(r, *s)?;
        }
        let mut seq = match seq {
            Some(s) => s,
            None => {
                let snapshot = self.sub.snapshot().clone();
                self.push_snapshot(&snapshot)?;
                snapshot.seq
            }
        };
        loop {
            let update = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.tx.closed() => return Err(Stopped::Gone),
                data = next_topologies(&mut self.topologies) => {
                    match data {
                        Some(data) => self.push_topologies(data)?,
                        None => return Err(Stopped::Gone),
                    }
                    continue;
                }
                u = self.sub.recv() => match u {
                    Some(u) => u,
                    None => return Ok(()),
                },
            };
            match update {
                Update::Event(ev) => {
                    seq += 1;
                    match render(&ev, &self.members) {
                        Ok(r) => self.push_rendered(&r, seq)?,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot render an event; ending an event stream");
                            return Err(Stopped::Gone);
                        }
                    }
                }
                Update::Resync(snapshot) => {
                    tracing::debug!(
                        seq = snapshot.seq,
                        "an SSE client fell behind; sending it a fresh snapshot"
                    );
                    seq = snapshot.seq;
                    self.push_snapshot(&snapshot)?;
                }
            }
        }
    }
}

/// The size of an event without an id as the stream writes it:
/// `event: NAME\ndata: DATA\n\n` (the data is JSON, one line).
fn id_less_wire_size(event: &str, data: &str) -> usize {
    "event: \ndata: \n\n".len() + event.len() + data.len()
}

/// The next topologies event's data of a pump that follows them; never, for one that
/// does not.
async fn next_topologies(follow: &mut Option<Follow>) -> Option<String> {
    match follow {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// The size of an event as the stream writes it:
/// `event: NAME\nid: ID\ndata: DATA\n\n` (the data is JSON, one line).
fn wire_size(event: &str, id: u64, data: &str) -> usize {
    let digits = id.checked_ilog10().map_or(1, |d| d as usize + 1);
    "event: \nid: \ndata: \n\n".len() + event.len() + digits + data.len()
}

/// The SSE response for one client: its own subscription, ended by `stop`. With
/// `last_event_id`, it resumes after that event when `history` still holds what came
/// after it (and it fits in the client's backlog; else a snapshot, as for a new client).
///
/// A task of its own reads the subscription and queues the events; the response body
/// takes them as the connection can write them. When more than `backlog.max_bytes` wait
/// (the client does not read, or reads slower than the events come), the connection is
/// cut.
pub async fn events(
    cluster: &Cluster,
    history: &History,
    last_event_id: Option<&str>,
    stop: CancellationToken,
    backlog: Backlog,
    topologies: Option<Follow>,
) -> Sse<impl Stream<Item = Result<SseEvent, axum::Error>> + use<>> {
    let sub = cluster.subscribe();
    let now = sub.snapshot().seq;
    let mut seq = None;
    let mut replay = Vec::new();
    let offset = history.id_offset();
    if let Some(after) = last_event_id
        .and_then(|s| s.trim().parse::<u64>().ok())
        .and_then(|id| id.checked_sub(offset))
        && after <= now
        && let Some(events) = history.between(after, now).await
    {
        let bytes: usize = events
            .iter()
            .map(|(s, r)| wire_size(r.event, s + offset, &r.data))
            .sum();
        if bytes <= backlog.max_bytes {
            seq = Some(now);
            replay = events;
        }
    }
    if last_event_id.is_some() {
        tracing::debug!(
            last_event_id,
            resumed = seq.is_some(),
            "an SSE client reconnected"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let pump = Pump {
        sub,
        members: cluster.watch(),
        offset,
        tx,
        queued: queued.clone(),
        backlog,
        topologies,
    };
    tokio::spawn(pump.run(seq, replay, stop));
    let stream = futures::stream::unfold((rx, queued), |(mut rx, queued)| async move {
        let q = rx.recv().await?;
        queued.fetch_sub(q.size, Ordering::AcqRel);
        Some((Ok(q.event), (rx, queued)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn render(ev: &Event, members: &watch::Receiver<Arc<Snapshot>>) -> Result<Rendered, axum::Error> {
    let json = |v: serde_json::Result<String>| v.map_err(axum::Error::new);
    match ev {
        Event::NodeUp(node) => {
            // The snapshot is published before the event, so the member is there unless
            // it went down again since.
            let body = match members.borrow().members.get(&node.name) {
                Some(m) if m.node == *node => api::Node::member(m),
                _ => api::Node::of(node),
            };
            Ok(Rendered {
                event: api::NODEUP,
                data: json(serde_json::to_string(&api::NodeUp { node: body }))?,
            })
        }
        Event::NodeDown { node, reason } => Ok(Rendered {
            event: api::NODEDOWN,
            data: json(serde_json::to_string(&api::NodeDown::of(node, *reason)))?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    /// What the stream writes for one event, as bytes.
    async fn written(event: SseEvent) -> usize {
        let stream = futures::stream::iter([Ok::<_, axum::Error>(event)]);
        let body = Sse::new(stream).into_response().into_body();
        axum::body::to_bytes(body, usize::MAX).await.unwrap().len()
    }

    #[tokio::test]
    async fn the_backlog_counts_an_event_as_the_bytes_written() {
        let data = r#"{"node":{"name":"a@127.0.0.1","addr":"127.0.0.1:1"},"reason":"left"}"#;
        for id in [0, 9, 10, 1_883_421_563_418_624_001, u64::MAX] {
            let r = Rendered {
                event: api::NODEDOWN,
                data: data.to_owned(),
            };
            assert_eq!(
                written(r.to_sse(id)).await,
                wire_size(api::NODEDOWN, id, data),
                "id {id}"
            );
        }
        let data = r#"{"topologies":[{"name":"peers","strategy":"static"}]}"#;
        let event = SseEvent::default().event(topologies::EVENT).data(data);
        assert_eq!(
            written(event).await,
            id_less_wire_size(topologies::EVENT, data)
        );
    }
}
