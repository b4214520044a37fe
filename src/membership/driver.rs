//! The tokio driver: runs a [`Core`] over real TCP connections.
//!
//! One task owns the core. It `select!`s over: commands (shutdown), the listener, events
//! from the connection tasks (authenticated, frame, closed), the topologies' `watch`es,
//! and the core's next deadline. After each input it drains the core's actions: dials are
//! spawned, frames are queued on the connection's writer task, closes drop the writer
//! (which flushes what was queued, then shuts the socket), events go to the bus.
//!
//! Every connection first runs the sealed transport's handshake ([`super::seal`]) in a
//! task of its own; the core hears of it only once the peer has proven the cookie. Until
//! then a connection holds a fixed few hundred bytes, and at most
//! [`MAX_UNAUTHENTICATED`] of them are held at once. When that many are held, a newer
//! one evicts the oldest of the source address that holds the most: a flood from a few
//! addresses evicts its own connections, and a real peer's handshake (one round trip)
//! is not kept out. (Many nodes behind one address, say on one host, are not limited
//! until the total is reached.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::core::{Action, ConnId, Core, TopologyInfo};
use super::seal::{self, AuthError, Session};
use super::wire::{self, DecodeError, Frame};
use super::{Config, Stats};
use crate::cookie::Cookies;
use crate::events::Bus;
use crate::node::{Node, NodeName};
use crate::peer::PeerSet;
use crate::pubsub::{Message, Registry};
use crate::warn_limit::{self, WarnLimit};

/// How many frames may wait for one peer's socket before the peer counts as too slow
/// and its connection is cut.
const WRITE_QUEUE: usize = 4096;
/// How many bytes may wait for one peer's socket (at least this, or four of the largest
/// frames): past three quarters of it, pub/sub messages to that peer are shed; past all
/// of it, the peer counts as too slow and its connection is cut.
const WRITE_QUEUE_BYTES: usize = 8 << 20;
/// How many events from the connection tasks may wait for the owner; a reader that finds
/// it full waits (TCP then pushes back on the peer) instead of queueing without bound.
const NET_QUEUE: usize = 1024;
/// How many inbound connections may be in the sealed handshake at once (each holds a
/// few hundred bytes); past it, a newer one evicts the oldest of the source address
/// holding the most.
pub const MAX_UNAUTHENTICATED: usize = 1024;
/// The read buffer of each connection.
const READ_BUFFER: usize = 2 << 10;
/// A writer's buffer larger than this is let go once written: bursts are rare, and
/// every peer has one.
const KEEP_BUFFER: usize = 16 << 10;
/// How many bytes of sealed records a writer gathers into one write.
const WRITE_BATCH: usize = 256 << 10;

/// A topology as the driver sees it.
pub(crate) struct Topology {
    pub name: String,
    pub authoritative: bool,
    pub prune_after: Duration,
    /// The strategy's candidate set (`None` until it first reports).
    pub candidates: watch::Receiver<Option<Arc<PeerSet>>>,
}

/// Everything the driver runs with.
pub(crate) struct Params {
    pub local: Node,
    pub cookies: Cookies,
    pub config: Config,
    pub listener: tokio::net::TcpListener,
    pub topologies: Vec<Topology>,
    pub bus: Arc<Bus>,
    pub commands: mpsc::Receiver<Command>,
    pub stats: watch::Sender<Stats>,
    pub pubsub: Arc<Registry>,
}

/// Commands to the membership task, sent by [`Cluster`](crate::Cluster)'s methods.
#[derive(Debug)]
pub(crate) enum Command {
    /// Announce leave to every peer, close the connections, and stop.
    Shutdown(tokio::sync::oneshot::Sender<()>),
    /// Send a pub/sub message to every member; answers how many.
    Publish {
        topic: String,
        payload: Bytes,
        done: tokio::sync::oneshot::Sender<usize>,
    },
    /// Send a pub/sub message to one member; answers whether it is up.
    SendTo {
        to: NodeName,
        topic: String,
        payload: Bytes,
        done: tokio::sync::oneshot::Sender<bool>,
    },
}

/// What connection tasks tell the owner.
enum NetEvent {
    Connected(ConnId, TcpStream, Session),
    DialFailed(ConnId, &'static str),
    AuthFailed(ConnId, AuthError),
    Accepted {
        slot: u64,
        stream: TcpStream,
        session: Session,
        remote: SocketAddr,
    },
    PreauthFailed {
        slot: u64,
        remote: SocketAddr,
        error: Option<AuthError>,
    },
    Frame(ConnId, Frame),
    Bad(ConnId, DecodeError),
    Closed(ConnId),
}

struct ConnIo {
    writer: mpsc::Sender<Bytes>,
    /// When the reader last opened a heartbeat, in µs after [`Driver::epoch`] (0: none
    /// since the driver last looked). Heartbeats stop there: liveness is noted where the
    /// bytes arrive, and the core reads it when it next runs.
    heard: Arc<AtomicU64>,
    /// Bytes queued on `writer` and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

struct Driver {
    core: Core,
    /// The zero of the readers' [`ConnIo::heard`] clocks.
    epoch: std::time::Instant,
    config: Config,
    bus: Arc<Bus>,
    stats: watch::Sender<Stats>,
    pubsub: Arc<Registry>,
    messages_dropped: u64,
    net_tx: mpsc::Sender<NetEvent>,
    /// The byte budget of one peer's write queue.
    queue_bytes: usize,
    conns: HashMap<ConnId, ConnIo>,
    closing: Vec<JoinHandle<()>>,
    cookies: Cookies,
    preauth: Preauth,
    /// Handshake failures seen before the core knew of the connection, by reason.
    preauth_failures: BTreeMap<&'static str, u64>,
    warn_limit: WarnLimit,
}

/// The inbound connections still in the sealed handshake.
#[derive(Default)]
struct Preauth {
    next: u64,
    pending: BTreeMap<u64, (IpAddr, AbortHandle)>,
    per_source: HashMap<IpAddr, usize>,
}

impl Preauth {
    /// Makes room for one more: when full, the slot to evict, the oldest of the source
    /// that holds the most.
    fn victim(&self) -> Option<u64> {
        if self.pending.len() < MAX_UNAUTHENTICATED {
            return None;
        }
        let (greedy, _) = self.per_source.iter().max_by_key(|(_, n)| **n)?;
        self.pending
            .iter()
            .find(|(_, (ip, _))| ip == greedy)
            .map(|(slot, _)| *slot)
    }

    fn remove(&mut self, slot: u64) -> Option<AbortHandle> {
        let (ip, handle) = self.pending.remove(&slot)?;
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        Some(handle)
    }
}

/// Runs the membership until a shutdown command.
pub(crate) async fn run(p: Params) {
    let Params {
        local,
        cookies,
        config,
        listener,
        topologies,
        bus,
        mut commands,
        stats,
        pubsub,
    } = p;
    let infos = topologies
        .iter()
        .map(|t| TopologyInfo {
            authoritative: t.authoritative,
            prune_after: t.prune_after,
        })
        .collect();
    let seed = rand::rngs::OsRng.next_u64();
    let core = Core::new(
        local,
        config.clone(),
        infos,
        seed,
        Instant::now().into_std(),
    );
    let mut core = core;
    if let Ok(bound) = listener.local_addr() {
        core.set_listen_addr(bound);
    }
    let (net_tx, mut net_rx) = mpsc::channel(NET_QUEUE);
    let queue_bytes = WRITE_QUEUE_BYTES.max(4 * config.max_frame as usize);
    let mut d = Driver {
        epoch: std::time::Instant::now(),
        queue_bytes,
        core,
        config,
        bus,
        stats,
        pubsub,
        messages_dropped: 0,
        net_tx,
        conns: HashMap::new(),
        closing: Vec::new(),
        cookies,
        preauth: Preauth::default(),
        preauth_failures: BTreeMap::new(),
        warn_limit: WarnLimit::default(),
    };
    let mut topo_streams =
        futures::stream::select_all(topologies.into_iter().enumerate().map(|(i, t)| {
            let name = t.name;
            tokio_stream::wrappers::WatchStream::new(t.candidates)
                .map(move |peers| (i, name.clone(), peers))
        }));
    loop {
        d.perform();
        let deadline = d.core.poll_timeout().map(Instant::from_std);
        tokio::select! {
            cmd = commands.recv() => {
                match cmd {
                    Some(Command::Publish { topic, payload, done }) => {
                        let n = d.core.publish(&topic, &payload);
                        let _ = done.send(n);
                        continue;
                    }
                    Some(Command::SendTo { to, topic, payload, done }) => {
                        let ok = d.core.send_message(&to, &topic, &payload);
                        let _ = done.send(ok);
                        continue;
                    }
                    Some(Command::Shutdown(done)) => {
                        d.shutdown().await;
                        let _ = done.send(());
                    }
                    None => d.shutdown().await,
                }
                d.pubsub.close();
                return;
            }
            ev = net_rx.recv() => {
                let Some(ev) = ev else { continue };
                d.on_net(ev);
            }
            acc = listener.accept() => {
                match acc {
                    Ok((stream, remote)) => d.preauthenticate(stream, remote),
                    Err(e) => {
                        // Out of file descriptors and the like: pause briefly, keep going.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Some((i, name, peers)) = topo_streams.next() => {
                if let Some(peers) = peers {
                    tracing::debug!(topology = %name, peers = peers.len(), "candidates");
                    d.core.handle_candidates(Instant::now().into_std(), i, peers);
                }
            }
            _ = sleep_until(deadline) => {
                d.note_heard();
                d.core.handle_timeout(Instant::now().into_std());
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// Tells the core of the heartbeats the readers opened since it last heard.
    fn note_heard(&mut self) {
        for (id, io) in &self.conns {
            let us = io.heard.swap(0, Ordering::Relaxed);
            if us != 0 {
                self.core
                    .note_heard(*id, self.epoch + Duration::from_micros(us));
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        self.note_heard();
        let now = Instant::now().into_std();
        match ev {
            NetEvent::Connected(id, stream, session) => {
                self.attach(id, stream, session);
                self.core.handle_connected(now, id);
            }
            NetEvent::DialFailed(id, kind) => self.core.handle_dial_failed(now, id, kind),
            NetEvent::AuthFailed(id, err) => {
                self.core
                    .handle_auth_failed(now, id, err.reason(), &err.to_string())
            }
            NetEvent::Accepted {
                slot,
                stream,
                session,
                remote,
            } => {
                self.preauth.remove(slot);
                let id = self.core.handle_accepted(now, remote);
                self.attach(id, stream, session);
            }
            NetEvent::PreauthFailed {
                slot,
                remote,
                error,
            } => {
                self.preauth.remove(slot);
                let reason = error.as_ref().map(AuthError::reason).unwrap_or("timeout");
                *self.preauth_failures.entry(reason).or_default() += 1;
                let detail = match &error {
                    Some(AuthError::BadCookie) => "it holds none of this node's cookies \
                        (set the same cookie on every node; during a rotation, \
                        accept_cookies)"
                        .to_string(),
                    Some(e) => e.to_string(),
                    None => "no handshake within handshake_timeout".to_string(),
                };
                if reason != "closed" {
                    warn_limit::log(&mut self.warn_limit, now, reason, || {
                        format!("refused a connection from {remote}: {detail}")
                    });
                }
            }
            NetEvent::Frame(id, frame) => self.core.handle_frame(now, id, frame),
            NetEvent::Bad(id, err) => self.core.handle_decode_error(now, id, &err),
            NetEvent::Closed(id) => {
                self.drop_conn(id);
                self.core.handle_closed(now, id);
            }
        }
    }

    /// Performs the core's actions, in order.
    fn perform(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Connect { conn, addr } => {
                    let tx = self.net_tx.clone();
                    let timeout = self.config.handshake_timeout;
                    let cookie = self.cookies.primary().clone();
                    tokio::spawn(async move {
                        let dial = async {
                            let mut s = match TcpStream::connect(addr).await {
                                Ok(s) => s,
                                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                    return NetEvent::DialFailed(conn, "refused");
                                }
                                Err(_) => return NetEvent::DialFailed(conn, "error"),
                            };
                            let _ = s.set_nodelay(true);
                            match seal::dial(&mut s, &cookie).await {
                                Ok(session) => NetEvent::Connected(conn, s, session),
                                Err(e) => NetEvent::AuthFailed(conn, e),
                            }
                        };
                        let ev = match tokio::time::timeout(timeout, dial).await {
                            Ok(ev) => ev,
                            Err(_) => NetEvent::DialFailed(conn, "timeout"),
                        };
                        let _ = tx.send(ev).await;
                    });
                }
                Action::Send { conn, frame } => {
                    let Some(io) = self.conns.get(&conn) else {
                        continue;
                    };
                    let queued = io.queued.load(Ordering::Relaxed);
                    if matches!(frame, Frame::Message { .. })
                        && (io.writer.capacity() < WRITE_QUEUE / 4
                            || queued > self.queue_bytes / 4 * 3)
                    {
                        // At-most-once pub/sub: shed messages before membership frames.
                        self.messages_dropped += 1;
                        continue;
                    }
                    let bytes = Bytes::from(wire::encode(&frame));
                    let len = bytes.len();
                    let full = queued + len > self.queue_bytes;
                    if full || io.writer.try_send(bytes).is_err() {
                        // The peer does not read: cut it rather than queue without bound.
                        tracing::warn!(
                            conn = conn.0,
                            "peer too slow to read; cutting the connection"
                        );
                        self.drop_conn(conn);
                        self.core.handle_closed(Instant::now().into_std(), conn);
                    } else {
                        io.queued.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Action::Close { conn } => self.drop_conn(conn),
                Action::Emit(event) => self.bus.publish(event, SystemTime::now()),
                Action::Deliver {
                    from,
                    topic,
                    payload,
                } => {
                    self.pubsub.deliver(Message {
                        from,
                        topic,
                        payload: Bytes::from(payload),
                    });
                }
            }
        }
        let mut s = self.core.stats().clone();
        s.messages_dropped = self.messages_dropped;
        for (reason, n) in &self.preauth_failures {
            *s.handshake_failures.entry(reason).or_default() += n;
        }
        let s = &s;
        self.stats.send_if_modified(|cur| {
            if cur != s {
                *cur = s.clone();
                true
            } else {
                false
            }
        });
    }

    /// Runs the sealed handshake of an inbound connection in a task of its own; the core
    /// hears of the connection only once it is authenticated.
    fn preauthenticate(&mut self, mut stream: TcpStream, remote: SocketAddr) {
        let ip = remote.ip();
        if let Some(victim) = self.preauth.victim() {
            if let Some(h) = self.preauth.remove(victim) {
                h.abort();
            }
            *self.preauth_failures.entry("overload").or_default() += 1;
            warn_limit::log(
                &mut self.warn_limit,
                Instant::now().into_std(),
                "overload",
                || {
                    format!(
                        "{MAX_UNAUTHENTICATED} unauthenticated connections held: dropped \
                         the oldest of the source that holds the most"
                    )
                },
            );
        }
        self.preauth.next += 1;
        let slot = self.preauth.next;
        let tx = self.net_tx.clone();
        let cookies = self.cookies.clone();
        let timeout = self.config.handshake_timeout;
        let task = tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let ev = match tokio::time::timeout(timeout, seal::accept(&mut stream, &cookies, false))
                .await
            {
                Ok(Ok(session)) => NetEvent::Accepted {
                    slot,
                    stream,
                    session,
                    remote,
                },
                Ok(Err(e)) => NetEvent::PreauthFailed {
                    slot,
                    remote,
                    error: Some(e),
                },
                Err(_) => NetEvent::PreauthFailed {
                    slot,
                    remote,
                    error: None,
                },
            };
            let _ = tx.send(ev).await;
        });
        self.preauth.pending.insert(slot, (ip, task.abort_handle()));
        *self.preauth.per_source.entry(ip).or_default() += 1;
    }

    /// Starts the reader and writer tasks of an authenticated connection.
    fn attach(&mut self, id: ConnId, stream: TcpStream, session: Session) {
        let (rd, mut wr) = stream.into_split();
        // Records are read in small pieces (length, then body): buffered, a few syscalls
        // serve many records. The buffer is small because every peer has one (a larger
        // read than it goes to the socket directly).
        let mut rd = tokio::io::BufReader::with_capacity(READ_BUFFER, rd);
        let (mut sealer, mut opener) = session.split(self.config.max_frame as usize);
        let tx = self.net_tx.clone();
        let heard = Arc::new(AtomicU64::new(0));
        let heard_here = heard.clone();
        let epoch = self.epoch;
        let reader_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                // Every whole frame opened so far, then the next record.
                loop {
                    let ev = match opener.next_frame() {
                        Ok(None) => break,
                        Ok(Some(bytes)) => match wire::decode(&bytes) {
                            Ok(Frame::Heartbeat) => {
                                let us = epoch.elapsed().as_micros().max(1);
                                heard_here.store(
                                    u64::try_from(us).unwrap_or(u64::MAX),
                                    Ordering::Relaxed,
                                );
                                continue;
                            }
                            Ok(frame) => NetEvent::Frame(id, frame),
                            Err(e) => NetEvent::Bad(id, e),
                        },
                        Err(e) => NetEvent::Bad(id, DecodeError::Sealed(e)),
                    };
                    let stop = matches!(ev, NetEvent::Bad(..));
                    if tx.send(ev).await.is_err() || stop {
                        return;
                    }
                }
                match opener.read_record(&mut rd, &mut buf).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) | Err(_) => break,
                    Ok(Err(e)) => {
                        let _ = tx.send(NetEvent::Bad(id, DecodeError::Sealed(e))).await;
                        return;
                    }
                }
            }
            let _ = tx.send(NetEvent::Closed(id)).await;
        });
        let (wtx, mut wrx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
        let tx = self.net_tx.clone();
        // A write that cannot complete for this long means the peer stopped reading
        // (or the network ate everything): the connection is cut, not kept half alive.
        let stall = self.config.down_after;
        let writer_task = tokio::spawn(async move {
            let mut out = BytesMut::new();
            while let Some(b) = wrx.recv().await {
                // Seal what is queued into one write (up to a batch).
                let mut len = b.len();
                sealer.seal_frame(&b, &mut out);
                while out.len() < WRITE_BATCH {
                    match wrx.try_recv() {
                        Ok(b) => {
                            len += b.len();
                            sealer.seal_frame(&b, &mut out);
                        }
                        Err(_) => break,
                    }
                }
                match tokio::time::timeout(stall, wr.write_all(&out)).await {
                    Ok(Ok(())) => {
                        written.fetch_sub(len, Ordering::Relaxed);
                        out.clear();
                        if out.capacity() > KEEP_BUFFER {
                            // A burst is over: do not keep its buffer for every peer.
                            out = BytesMut::new();
                        }
                    }
                    // A write error means the connection is closing: the reader reports
                    // it, in order after the frames the peer sent before (a `Reject` of
                    // a duplicate connection must be read before its close is seen).
                    Ok(Err(_)) => return,
                    Err(_) => {
                        // Stalled: the peer does not read, and the reader may see
                        // nothing. (Ignored by the core for a connection it closed.)
                        let _ = tx.send(NetEvent::Closed(id)).await;
                        return;
                    }
                }
            }
            let _ = tokio::time::timeout(stall, wr.shutdown()).await;
        });
        self.conns.insert(
            id,
            ConnIo {
                heard,
                writer: wtx,
                queued,
                reader: reader_task,
                writer_task,
            },
        );
    }

    /// Stops reading a connection; its writer flushes what was queued, then closes.
    fn drop_conn(&mut self, id: ConnId) {
        if let Some(io) = self.conns.remove(&id) {
            io.reader.abort();
            drop(io.writer);
            self.closing.retain(|h| !h.is_finished());
            self.closing.push(io.writer_task);
        }
    }

    async fn shutdown(&mut self) {
        for (_, (_, h)) in std::mem::take(&mut self.preauth.pending) {
            h.abort();
        }
        self.core.leave(Instant::now().into_std());
        self.perform();
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.drop_conn(id);
        }
        // Give the `Leave` frames a bounded time to reach the peers.
        let writers = std::mem::take(&mut self.closing);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(writers)).await;
    }
}
