//! The library's entry point: [`Cluster`] and its [`Builder`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cookie::{Cookie, CookieError, CookieSource, Cookies};
use crate::events::{Bus, Snapshot, Subscription};
use crate::membership::driver::Command;
use crate::membership::{self, Stats};
use crate::node::{NameError, Node, NodeName};
use crate::pubsub::{Message, Registry, TopicSubscription};
use crate::strategies::{Context, Strategy, TopologyStatus};

/// Why a cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node name was given.
    #[error("no node name given (expected basename@host, e.g. app@10.0.0.5)")]
    MissingName,
    /// The node name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The cookie could not be loaded or created.
    #[error(transparent)]
    Cookie(#[from] CookieError),
    /// The membership configuration is invalid.
    #[error(transparent)]
    Config(#[from] membership::ConfigError),
    /// Two topologies have the same name.
    #[error("topology {0:?} is configured twice")]
    DuplicateTopology(String),
    /// The cluster port could not be bound.
    #[error("cannot listen on cluster address {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No address to advertise could be found (the cluster address is a wildcard, the
    /// name's host is not an IP, and no interface has a non-loopback address).
    #[error("cannot tell which address to advertise to peers: set advertise_addr")]
    NoAdvertiseAddr,
}

/// Options of one topology, besides its strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct TopologyOptions {
    /// Whether the topology prunes (see [`Strategy::authoritative`]); `None` takes the
    /// strategy's default.
    pub authoritative: Option<bool>,
    /// How long a peer may be absent from every authoritative set before it is pruned.
    /// Default 30 s.
    pub prune_after: Duration,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            authoritative: None,
            prune_after: Duration::from_secs(30),
        }
    }
}

type Launch = Box<dyn FnOnce(Context) -> JoinHandle<()> + Send>;

struct TopologySpec {
    name: String,
    kind: &'static str,
    authoritative: bool,
    prune_after: Duration,
    launch: Launch,
}

/// Builds and starts a [`Cluster`].
pub struct Builder {
    name: Option<String>,
    cluster_addr: SocketAddr,
    advertise_addr: Option<SocketAddr>,
    cookie: Option<Cookie>,
    accepted_cookies: Vec<Cookie>,
    incarnation: Option<u64>,
    membership: membership::Config,
    event_capacity: usize,
    topologies: Vec<TopologySpec>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            name: None,
            cluster_addr: SocketAddr::from(([0, 0, 0, 0], crate::DEFAULT_CLUSTER_PORT)),
            advertise_addr: None,
            cookie: None,
            accepted_cookies: Vec::new(),
            incarnation: None,
            membership: membership::Config::default(),
            event_capacity: 1024,
            topologies: Vec::new(),
        }
    }
}

impl Builder {
    /// This node's name, `basename@host`. Required.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The address the cluster listener binds. Default `0.0.0.0:45893`. Port 0 picks a
    /// free port (then advertised as bound).
    pub fn cluster_addr(mut self, addr: SocketAddr) -> Self {
        self.cluster_addr = addr;
        self
    }

    /// The address peers dial to reach this node. Default: the cluster address when it
    /// is not a wildcard; else the name's host when it is an IP; else the first
    /// non-loopback interface address; with the bound port.
    pub fn advertise_addr(mut self, addr: SocketAddr) -> Self {
        self.advertise_addr = Some(addr);
        self
    }

    /// The cluster's shared secret, taken byte for byte: at least
    /// [`MIN_LEN`](crate::cookie::MIN_LEN) (16) bytes, or [`start`](Self::start) refuses
    /// it ([`CookieError::TooShort`]). Default: the user's default cookie
    /// ([`Cookie::load_or_create_default`]).
    pub fn cookie(mut self, cookie: impl AsRef<[u8]>) -> Self {
        self.cookie = Some(Cookie::new(cookie));
        self
    }

    /// Also accepts this cookie from peers, besides the one set by
    /// [`cookie`](Self::cookie) (which alone is used to dial). Call it once per cookie;
    /// each must be 16 bytes or more, as the cookie.
    /// For a rotation with no downtime: roll out `accept_cookie(new)` everywhere, then
    /// `cookie(new).accept_cookie(old)`, then `cookie(new)` alone.
    pub fn accept_cookie(mut self, cookie: impl AsRef<[u8]>) -> Self {
        self.accepted_cookies.push(Cookie::new(cookie));
        self
    }

    /// Sets the incarnation instead of a random one (for tests and simulations; two live
    /// instances must never share one).
    pub fn incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Timing and limits of the membership protocol.
    pub fn membership(mut self, config: membership::Config) -> Self {
        self.membership = config;
        self
    }

    /// How many events a subscriber may fall behind before it is resynchronised with a
    /// snapshot. Default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Adds a topology: a named strategy, with default options.
    pub fn topology<S: Strategy>(self, name: impl Into<String>, strategy: S) -> Self {
        self.topology_with(name, strategy, TopologyOptions::default())
    }

    /// Adds a topology with options.
    pub fn topology_with<S: Strategy>(
        mut self,
        name: impl Into<String>,
        strategy: S,
        options: TopologyOptions,
    ) -> Self {
        let kind = strategy.kind();
        let authoritative = options.authoritative.unwrap_or(strategy.authoritative());
        self.topologies.push(TopologySpec {
            name: name.into(),
            kind,
            authoritative,
            prune_after: options.prune_after,
            launch: Box::new(move |ctx| tokio::spawn(strategy.run(ctx))),
        });
        self
    }

    /// Binds the cluster port, starts the strategies and the membership. Must be called
    /// inside a tokio runtime. A cookie shorter than 16 bytes is refused before anything
    /// starts.
    pub async fn start(self) -> Result<Cluster, Error> {
        let name: NodeName = self.name.as_deref().ok_or(Error::MissingName)?.parse()?;
        self.membership.validate()?;
        let mut seen = std::collections::HashSet::new();
        for t in &self.topologies {
            if !seen.insert(t.name.clone()) {
                return Err(Error::DuplicateTopology(t.name.clone()));
            }
        }
        if let Some(c) = &self.cookie {
            c.check(CookieSource::Builder)?;
        }
        for c in &self.accepted_cookies {
            c.check(CookieSource::BuilderAccepted)?;
        }
        let cookie = match self.cookie {
            Some(c) => c,
            None => Cookie::load_or_create_default()?,
        };
        let cookies = self
            .accepted_cookies
            .into_iter()
            .fold(Cookies::new(cookie), Cookies::accept);
        let listener = tokio::net::TcpListener::bind(self.cluster_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: self.cluster_addr,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind {
            addr: self.cluster_addr,
            source,
        })?;
        let addr = match self.advertise_addr {
            Some(a) => a,
            None => SocketAddr::new(
                default_advertise_ip(bound.ip(), &name).ok_or(Error::NoAdvertiseAddr)?,
                bound.port(),
            ),
        };
        let incarnation = self.incarnation.unwrap_or_else(rand::random);
        let local = Node {
            name,
            addr,
            incarnation,
        };
        let bus = Arc::new(Bus::new(local.clone(), self.event_capacity));
        let (stats_tx, stats_rx) = watch::channel(Stats::default());
        let mut topologies = Vec::new();
        let mut statuses = Vec::new();
        let mut strategy_tasks = Vec::new();
        for spec in self.topologies {
            let (ctx, handle) =
                Context::with_cookies(&spec.name, spec.kind, local.clone(), cookies.clone());
            strategy_tasks.push((handle.shutdown.clone(), (spec.launch)(ctx)));
            statuses.push((spec.name.clone(), handle.status.clone()));
            topologies.push(membership::driver::Topology {
                name: spec.name,
                authoritative: spec.authoritative,
                prune_after: spec.prune_after,
                candidates: handle.candidates,
            });
        }
        let max_message = (self.membership.max_frame as usize).saturating_sub(MESSAGE_OVERHEAD);
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let pubsub = Arc::new(Registry::new(self.event_capacity));
        let task = tokio::spawn(membership::driver::run(membership::driver::Params {
            local: local.clone(),
            cookies,
            config: self.membership,
            listener,
            topologies,
            bus: bus.clone(),
            commands: cmd_rx,
            stats: stats_tx,
            pubsub: pubsub.clone(),
        }));
        tracing::info!(node = %local, "cluster node started");
        Ok(Cluster {
            local,
            bus,
            commands: cmd_tx,
            stats: stats_rx,
            max_message,
            pubsub,
            topologies: statuses,
            task: tokio::sync::Mutex::new(Some(task)),
            strategy_tasks: std::sync::Mutex::new(strategy_tasks),
        })
    }
}

/// Picks the IP to advertise when none is configured.
fn default_advertise_ip(bound: IpAddr, name: &NodeName) -> Option<IpAddr> {
    if !bound.is_unspecified() {
        return Some(bound);
    }
    if let Ok(ip) = name.host().parse::<IpAddr>() {
        return Some(ip);
    }
    crate::netutil::first_non_loopback_ip()
}

/// Why a pub/sub message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The node is not a member (not up) now; nothing was sent.
    #[error("{0} is not a member")]
    NotMember(NodeName),
    /// The cluster has shut down; nothing was sent.
    #[error("the cluster has shut down")]
    Stopped,
    /// Topic and payload together exceed what one frame may carry (`max_frame`); nothing
    /// was sent.
    #[error("message of {size} bytes exceeds the frame limit of {limit} bytes")]
    TooLarge {
        /// Topic plus payload, in bytes.
        size: usize,
        /// The most a message may carry.
        limit: usize,
    },
}

/// Bytes a `Message` frame adds to its topic and payload (variant tag, two lengths).
const MESSAGE_OVERHEAD: usize = 11;

/// A running cluster node. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Cluster {
    local: Node,
    bus: Arc<Bus>,
    commands: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
    max_message: usize,
    pubsub: Arc<Registry>,
    topologies: Vec<(String, watch::Receiver<TopologyStatus>)>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    strategy_tasks: std::sync::Mutex<Vec<(tokio_util::sync::CancellationToken, JoinHandle<()>)>>,
}

impl Cluster {
    /// Starts building a cluster node.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// This node.
    pub fn local(&self) -> &Node {
        &self.local
    }

    /// The peers that are up now, sorted by name, this node excluded (like Erlang's
    /// `Node.list`).
    pub fn members(&self) -> Vec<Node> {
        self.bus.watch().borrow().nodes()
    }

    /// The current snapshot: members with their `up_since`, and the event sequence number.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.bus.watch().borrow().clone()
    }

    /// A `watch` of the snapshot: changes after every event.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.bus.watch()
    }

    /// A subscription to membership events, starting from an atomic snapshot.
    pub fn subscribe(&self) -> Subscription {
        self.bus.subscribe()
    }

    /// Each topology's name and what its strategy reports.
    pub fn topologies(&self) -> Vec<(String, TopologyStatus)> {
        self.topologies
            .iter()
            .map(|(n, rx)| (n.clone(), rx.borrow().clone()))
            .collect()
    }

    /// Each topology's name and a `watch` of what its strategy reports: changes whenever
    /// the strategy reports a set, fails, or bumps a counter.
    pub fn topology_watches(&self) -> Vec<(String, watch::Receiver<TopologyStatus>)> {
        self.topologies.clone()
    }

    /// The membership's counters.
    pub fn stats(&self) -> Stats {
        self.stats.borrow().clone()
    }

    /// A `watch` of the membership's counters: changes whenever one does.
    pub fn stats_watch(&self) -> watch::Receiver<Stats> {
        self.stats.clone()
    }

    /// Subscribes to a pub/sub topic on this node (see [`crate::pubsub`]).
    pub fn topic(&self, topic: &str) -> TopicSubscription {
        self.pubsub.subscribe(topic)
    }

    /// Sends a message to every member and to this node's own subscribers of the topic.
    /// Returns how many members it was queued for. At most once (see [`crate::pubsub`]).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<usize, SendError> {
        let payload = payload.into();
        self.check_size(topic, &payload)?;
        let (done, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Publish {
                topic: topic.to_owned(),
                payload: payload.clone(),
                done,
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        let n = rx.await.map_err(|_| SendError::Stopped)?;
        self.pubsub.deliver(Message {
            from: self.local.clone(),
            topic: topic.to_owned(),
            payload,
        });
        Ok(n)
    }

    /// Sends a message to one member (or to this node's own subscribers, when `to` is
    /// this node). At most once (see [`crate::pubsub`]).
    pub async fn send(
        &self,
        to: &NodeName,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let payload = payload.into();
        self.check_size(topic, &payload)?;
        if *to == self.local.name {
            self.pubsub.deliver(Message {
                from: self.local.clone(),
                topic: topic.to_owned(),
                payload,
            });
            return Ok(());
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::SendTo {
                to: to.clone(),
                topic: topic.to_owned(),
                payload,
                done,
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        match rx.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::NotMember(to.clone())),
            Err(_) => Err(SendError::Stopped),
        }
    }

    /// Refuses a message no frame could carry (a peer would cut the connection).
    fn check_size(&self, topic: &str, payload: &[u8]) -> Result<(), SendError> {
        let size = topic.len() + payload.len();
        if size > self.max_message {
            return Err(SendError::TooLarge {
                size,
                limit: self.max_message,
            });
        }
        Ok(())
    }

    /// Leaves the cluster: stops the strategies, tells every peer that this node is
    /// leaving (they see `NodeDown` with reason `left` at once), closes the connections
    /// and waits for the membership task to end. Idempotent.
    pub async fn shutdown(&self) {
        let strategies = std::mem::take(
            &mut *self
                .strategy_tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (token, _) in &strategies {
            token.cancel();
        }
        let mut task = self.task.lock().await;
        if let Some(handle) = task.take() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
            let _ = handle.await;
        }
        for (_, handle) in strategies {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.strategy_tasks.lock() {
            for (token, handle) in tasks.drain(..) {
                token.cancel();
                handle.abort();
            }
        }
        if let Ok(mut task) = self.task.try_lock()
            && let Some(handle) = task.take()
        {
            handle.abort();
        }
    }
}
