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
//! A client that reconnects with `Last-Event-ID: N` gets the events after `N` instead of
//! a snapshot, when the daemon still holds them all: [`History`] keeps the latest events
//! (`event_history`, default 1024). Otherwise (`N` too old, unknown, or not a number) it
//! gets a fresh `snapshot`, as a new client does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
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
            loop {
                let update = tokio::select! {
                    _ = stop.cancelled() => return,
                    u = sub.recv() => match u {
                        Some(u) => u,
                        None => return,
                    },
                };
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

/// One client's stream.
struct Client {
    sub: Subscription,
    /// The current members, to tell since when a node that came up is up.
    members: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
    /// The id of the last event sent; `None` before the first snapshot.
    seq: Option<u64>,
    /// Events from the history to send first, for a resuming client.
    replay: VecDeque<(u64, Rendered)>,
    /// Added to sequence numbers to make ids (see [`History::id_offset`]).
    offset: u64,
}

/// The SSE response for one client: its own subscription, ended by `stop`. With
/// `last_event_id`, it resumes after that event when `history` still holds what came
/// after it.
pub async fn events(
    cluster: &Cluster,
    history: &History,
    last_event_id: Option<&str>,
    stop: CancellationToken,
) -> Sse<impl Stream<Item = Result<SseEvent, axum::Error>> + use<>> {
    let sub = cluster.subscribe();
    let now = sub.snapshot().seq;
    let mut seq = None;
    let mut replay = VecDeque::new();
    let offset = history.id_offset();
    if let Some(after) = last_event_id
        .and_then(|s| s.trim().parse::<u64>().ok())
        .and_then(|id| id.checked_sub(offset))
        && after <= now
        && let Some(events) = history.between(after, now).await
    {
        seq = Some(now);
        replay = events.into();
    }
    if last_event_id.is_some() {
        tracing::debug!(
            last_event_id,
            resumed = seq.is_some(),
            "an SSE client reconnected"
        );
    }
    let client = Client {
        sub,
        members: cluster.watch(),
        stop,
        seq,
        replay,
        offset,
    };
    let stream = futures::stream::unfold(client, |mut c| async move {
        if let Some((seq, r)) = c.replay.pop_front() {
            return Some((Ok(r.to_sse(seq + c.offset)), c));
        }
        let Some(seq) = c.seq else {
            let snapshot = c.sub.snapshot().clone();
            c.seq = Some(snapshot.seq);
            return Some((snapshot_event(&snapshot, c.offset), c));
        };
        let update = tokio::select! {
            _ = c.stop.cancelled() => return None,
            u = c.sub.recv() => u?,
        };
        let event = match update {
            Update::Event(ev) => {
                c.seq = Some(seq + 1);
                render(&ev, &c.members).map(|r| r.to_sse(seq + 1 + c.offset))
            }
            Update::Resync(snapshot) => {
                tracing::debug!(
                    seq = snapshot.seq,
                    "an SSE client fell behind; sending it a fresh snapshot"
                );
                c.seq = Some(snapshot.seq);
                snapshot_event(&snapshot, c.offset)
            }
        };
        Some((event, c))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn snapshot_event(snapshot: &Arc<Snapshot>, offset: u64) -> Result<SseEvent, axum::Error> {
    SseEvent::default()
        .event(api::SNAPSHOT)
        .id((snapshot.seq + offset).to_string())
        .json_data(api::Members::of(snapshot))
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
