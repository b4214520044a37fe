//! The node's subscription supervisor: which subscriptions run here, and what wakes them.
//!
//! One task owns the set of runners. It re-evaluates placement ([`crate::placement`])
//! whenever the membership changes, the list of subscriptions changes (a `created` hint,
//! or the periodic re-read) or a runner ends: a subscription that this node should own
//! gets a runner ([`crate::subscription`]); one that it should no longer own has its
//! runner drained and its lease released. A runner that lost its lease is started again
//! after `lease_retry` if placement still says so (it then waits until it may take the
//! lease).
//!
//! It also turns what it hears into wake-ups for the runners (they then re-read the
//! store): an `appended` message from any member (or this node), a member coming up
//! (`NodeUp`, or a resync after falling behind), the database being reachable again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rallypoint::{Cluster, Event, TopicError, Update};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fanout::{self, Control, TOPIC_APPENDED, TOPIC_CONTROL};
use crate::placement;
use crate::store::{self, Store};
use crate::subscription::{self, Outcome};

/// Timings and limits of subscriptions.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a lease lasts without renewal. Renewed every third of it.
    pub lease_ttl: Duration,
    /// How often a node waiting for a lease looks at it again.
    pub lease_retry: Duration,
    /// Every active subscription reads the store at least this often, whether told to or
    /// not; also how often the list of subscriptions is read again.
    pub catch_up_interval: Duration,
    /// How long after an acknowledgement the checkpoint is written (writes are batched).
    pub checkpoint_interval: Duration,
    /// How many delivered events may await acknowledgement.
    pub max_in_flight: usize,
    /// How many events one read fetches.
    pub batch: i64,
    /// How long the example's handler works on an event before acknowledging it.
    pub handler_delay: Duration,
    /// How long this node's view of the members must stay unchanged before it takes a
    /// lease over from a node it lost, or records a smaller view with its own leases.
    /// Longer than the time it takes to see every peer of a partition go (a heartbeat
    /// interval or two), so a transient view never counts.
    pub view_settle: Duration,
    /// How long a handoff waits for the acknowledgements in flight.
    pub drain_timeout: Duration,
}

/// A monotonic counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The node's counters, shown by `GET /status`.
#[derive(Default, Debug)]
pub struct Counters {
    /// `appended` messages published after a commit.
    pub notifications_published: Counter,
    /// `appended` messages not published because of the `drop_notifications` fault.
    pub notifications_dropped: Counter,
    /// `appended` messages received (from any node, this one included).
    pub notifications_received: Counter,
    /// Pub/sub messages dropped because they were malformed.
    pub bad_messages: Counter,
    /// Reads made because the catch-up timer fired.
    pub catch_up_reads: Counter,
    /// Checkpoint writes (or releases) rejected because another node held the lease.
    pub rejected_writes: Counter,
}

/// Faults a test may inject (only with `--fault-injection`).
#[derive(Default, Debug)]
pub struct Faults {
    /// Whether `POST /admin/faults` is served.
    pub enabled: bool,
    /// Do not publish `appended` after commits (neither to members nor locally).
    pub drop_notifications: AtomicBool,
}

/// What a runner is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// No runner here.
    #[default]
    Idle,
    /// Waiting for the lease.
    Acquiring,
    /// Holding the lease and delivering.
    Active,
    /// Handing off: waiting for acknowledgements, then releasing.
    Draining,
}

/// This node's view of one subscription it ran or runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LocalStatus {
    /// What its runner is doing.
    pub state: RunnerState,
    /// The epoch of the last lease taken here.
    pub epoch: Option<i64>,
    /// The checkpoint last written here.
    pub written: i64,
    /// The contiguous acknowledged position.
    pub acked: i64,
    /// The last position handed to the handler.
    pub last_delivered: i64,
    /// Events handed to the handler under the current lease.
    pub delivered: u64,
    /// Writes rejected because the lease was someone else's (since start).
    pub rejected_writes: u64,
    /// Leases taken here (since start).
    pub acquisitions: u64,
}

/// What the node's tasks share.
pub struct Shared {
    /// This node's name.
    pub name: String,
    /// This node's HTTP address.
    pub http_addr: SocketAddr,
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// The store.
    pub store: Store,
    /// Subscription settings.
    pub settings: Settings,
    /// Bumped to make every active runner read the store.
    pub wake: watch::Sender<u64>,
    /// Bumped when a lease was released somewhere, to wake runners waiting for one.
    pub lease_hint: watch::Sender<u64>,
    /// Counters.
    pub counters: Counters,
    /// Injected faults.
    pub faults: Faults,
    status: Mutex<BTreeMap<String, LocalStatus>>,
    /// The view last noted, and when it was first seen.
    last_view: Mutex<(BTreeSet<String>, Instant)>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        cluster: Arc<Cluster>,
        store: Store,
        settings: Settings,
        http_addr: SocketAddr,
        fault_injection: bool,
    ) -> Shared {
        Shared {
            name: cluster.local().name.to_string(),
            http_addr,
            cluster,
            store,
            settings,
            wake: watch::channel(0).0,
            lease_hint: watch::channel(0).0,
            counters: Counters::default(),
            faults: Faults {
                enabled: fault_injection,
                ..Faults::default()
            },
            status: Mutex::new(BTreeMap::new()),
            last_view: Mutex::new((BTreeSet::new(), Instant::now())),
        }
    }

    /// This node and the members it sees, by name.
    pub fn view(&self) -> BTreeSet<String> {
        let mut v: BTreeSet<String> = self
            .cluster
            .members()
            .iter()
            .map(|n| n.name.to_string())
            .collect();
        v.insert(self.name.clone());
        v
    }

    /// This node's view and how long it has been unchanged. The supervisor notes every
    /// membership change as it happens; a change seen here first is noted now.
    pub fn view_with_age(&self) -> (BTreeSet<String>, Duration) {
        let view = self.view();
        let mut last = self.last_view.lock().unwrap_or_else(|p| p.into_inner());
        if last.0 != view {
            *last = (view.clone(), Instant::now());
        }
        (view, last.1.elapsed())
    }

    /// Updates the local status of `subscription`.
    pub fn set_state(&self, subscription: &str, f: impl FnOnce(&mut LocalStatus)) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(subscription.to_owned()).or_default());
    }

    /// The local status of every subscription that ran here.
    pub fn statuses(&self) -> BTreeMap<String, LocalStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes every active runner read the store.
    pub fn wake_all(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    /// Tells every node that a lease was released.
    pub async fn released(&self, subscription: &str) {
        self.lease_hint.send_modify(|n| *n += 1);
        self.control(Control::Released(subscription.to_owned()))
            .await;
    }

    /// Tells every node that a subscription was created.
    pub async fn created(&self, subscription: &str) {
        self.control(Control::Created(subscription.to_owned()))
            .await;
    }

    async fn control(&self, msg: Control) {
        if let Err(e) = self
            .cluster
            .publish(TOPIC_CONTROL, fanout::encode(&msg))
            .await
        {
            tracing::debug!(error = %e, "cannot publish a control message");
        }
    }

    /// Tells every node (this one included) that an append was committed, unless the
    /// `drop_notifications` fault is on.
    pub async fn appended(&self, a: &store::Appended) {
        if self.faults.drop_notifications.load(Ordering::Relaxed) {
            self.counters.notifications_dropped.inc();
            return;
        }
        let msg = fanout::Appended {
            stream: a.stream.clone(),
            first: a.first_position,
            last: a.last_position,
            global_last: a.last_position,
        };
        match self
            .cluster
            .publish(TOPIC_APPENDED, fanout::encode(&msg))
            .await
        {
            Ok(_) => self.counters.notifications_published.inc(),
            Err(e) => tracing::debug!(error = %e, "cannot publish a notification"),
        }
    }
}

struct Runner {
    handoff: watch::Sender<bool>,
}

/// Runs the supervisor until `shutdown` becomes true; then drains every runner (their
/// leases are released) and returns.
pub async fn supervise(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut membership = shared.cluster.subscribe();
    let mut appended = shared.cluster.topic(TOPIC_APPENDED);
    let mut control = shared.cluster.topic(TOPIC_CONTROL);
    let mut reconnected = shared.store.reconnected();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut tasks: JoinSet<(String, Outcome)> = JoinSet::new();
    let mut not_before: HashMap<String, Instant> = HashMap::new();
    let mut refresh = tokio::time::interval(shared.settings.catch_up_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_restart = not_before.values().min().copied();
        shared.view_with_age();
        tokio::select! {
            _ = shutdown.changed() => break,
            u = membership.recv() => match u {
                Some(Update::Event(Event::NodeUp(node))) => {
                    tracing::info!(node = %node.name, "member up: catching up");
                    shared.wake_all();
                }
                Some(Update::Event(Event::NodeDown { node, reason })) => {
                    tracing::info!(node = %node.name, %reason, "member down");
                }
                Some(Update::Resync(_)) => shared.wake_all(),
                None => break,
            },
            m = appended.recv() => match m {
                Ok(msg) => match fanout::decode_appended(&msg.payload) {
                    Ok(_) => {
                        shared.counters.notifications_received.inc();
                        shared.wake_all();
                    }
                    Err(e) => {
                        shared.counters.bad_messages.inc();
                        tracing::warn!(from = %msg.from.name, error = %e, "dropped a bad notification");
                    }
                },
                Err(TopicError::Lagged(_)) => shared.wake_all(),
                Err(TopicError::Closed) => break,
            },
            m = control.recv() => match m {
                Ok(msg) => match fanout::decode_control(&msg.payload) {
                    Ok(Control::Created(_)) => refresh.reset_immediately(),
                    Ok(Control::Released(_)) => shared.lease_hint.send_modify(|n| *n += 1),
                    Err(e) => {
                        shared.counters.bad_messages.inc();
                        tracing::warn!(from = %msg.from.name, error = %e, "dropped a bad control message");
                    }
                },
                Err(TopicError::Lagged(_)) => refresh.reset_immediately(),
                Err(TopicError::Closed) => break,
            },
            r = reconnected.changed() => {
                if r.is_ok() {
                    shared.wake_all();
                }
            }
            _ = refresh.tick() => match shared.store.subscriptions().await {
                Ok(rows) => names = rows.into_iter().map(|r| r.name).collect(),
                Err(e) => tracing::debug!(error = %e, "cannot read the subscriptions"),
            },
            Some(done) = tasks.join_next() => {
                if let Ok((name, outcome)) = done {
                    runners.remove(&name);
                    tracing::debug!(subscription = %name, ?outcome, "runner ended");
                    match outcome {
                        Outcome::Gone => {
                            names.remove(&name);
                        }
                        Outcome::Lost | Outcome::ReleaseFailed => {
                            not_before.insert(name, Instant::now() + shared.settings.lease_retry);
                        }
                        Outcome::HandedOff => {}
                    }
                }
            }
            _ = sleep_until_opt(next_restart) => {}
        }
        let now = Instant::now();
        not_before.retain(|_, t| *t > now);
        reconcile(&shared, &names, &not_before, &mut runners, &mut tasks);
    }
    for r in runners.values() {
        let _ = r.handoff.send(true);
    }
    let grace = shared.settings.drain_timeout + Duration::from_secs(5);
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Starts the runners placement gives this node, and hands off those it no longer does.
fn reconcile(
    shared: &Arc<Shared>,
    names: &BTreeSet<String>,
    not_before: &HashMap<String, Instant>,
    runners: &mut HashMap<String, Runner>,
    tasks: &mut JoinSet<(String, Outcome)>,
) {
    let view = shared.view();
    for name in names {
        let mine =
            placement::owner(name, view.iter().map(String::as_str)) == Some(shared.name.as_str());
        match (mine, runners.get(name)) {
            (true, None) if !not_before.contains_key(name) => {
                let (tx, rx) = watch::channel(false);
                runners.insert(name.clone(), Runner { handoff: tx });
                let shared = shared.clone();
                let name = name.clone();
                tasks.spawn(async move {
                    let outcome = subscription::run(shared, name.clone(), rx).await;
                    (name, outcome)
                });
            }
            (false, Some(r)) if !*r.handoff.borrow() => {
                tracing::info!(subscription = %name, "placement moved it away: handing off");
                let _ = r.handoff.send(true);
            }
            _ => {}
        }
    }
    for (name, r) in runners.iter() {
        if !names.contains(name) {
            let _ = r.handoff.send(true);
        }
    }
}
