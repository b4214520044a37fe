//! Real `rallypoint run` processes on the hosts of a [`Net`], each followed by an
//! observer of its event stream.
//!
//! A [`Daemon`] runs on one host with `cluster_addr = <host ip>:45893` and its HTTP API on
//! the host's own loopback (`127.0.0.1:45894`), so a cut or a partition never touches
//! the way the test watches it. Its [`Observer`] is a thread on the same host that
//! follows `/v1/events`, records every event with the time it arrived, and checks the
//! stream's contract as it goes (a snapshot first, ids up by one, per node `nodeup` and
//! `nodedown` alternating, a `nodedown` for the instance that was up, nothing about the
//! daemon itself); a breach is recorded as a violation, which [`Observer::assert_clean`]
//! turns into a test failure. When the daemon goes away the observer reconnects, so a
//! restarted daemon is followed again from a fresh snapshot.
//!
//! Daemons are killed when dropped (and the [`Net`] kills whatever is left in its
//! namespaces), so a failing test leaves no process behind. A timed-out wait prints what
//! the observer saw and the daemon's log.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rallypoint::daemon::api;
use rallypoint::daemon::client::EventStream;

use crate::switch::Net;

/// The daemon binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_rallypoint");
/// The cluster port every daemon uses (each host has its own address).
pub const CLUSTER_PORT: u16 = 45893;
/// Where each daemon's API listens, on its host's loopback.
pub const HTTP_ADDR: &str = "127.0.0.1:45894";

/// Quick membership timing: a heartbeat every 100 ms, down after 1 s.
pub const FAST: &str = include_str!("fast_membership.toml");

/// One event as an observer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A snapshot: the observed daemon's incarnation and its members' names.
    Snapshot {
        /// The observed daemon's own incarnation.
        local: String,
        /// The members' names.
        members: Vec<String>,
    },
    /// `nodeup`.
    Up {
        /// The node's name.
        name: String,
        /// Its incarnation.
        incarnation: String,
    },
    /// `nodedown`.
    Down {
        /// The node's name.
        name: String,
        /// Its incarnation.
        incarnation: String,
        /// Why.
        reason: String,
    },
}

impl Seen {
    /// The node a `nodeup` / `nodedown` is about.
    pub fn node(&self) -> Option<&str> {
        match self {
            Seen::Up { name, .. } | Seen::Down { name, .. } => Some(name),
            Seen::Snapshot { .. } => None,
        }
    }
}

/// Everything an observer saw.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// The observed daemon's name.
    pub owner: String,
    /// The events, in order, with when they arrived.
    pub events: Vec<(Instant, Seen)>,
    /// The members now, by name, with their incarnation, as the events say.
    pub members: BTreeMap<String, String>,
    /// Breaches of the stream's contract.
    pub violations: Vec<String>,
    /// Whether a stream is open now.
    pub connected: bool,
    /// How many streams were opened.
    pub streams: u32,
    last_id: Option<u64>,
}

impl Record {
    /// The member names now.
    pub fn names(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    /// The events after the first `mark`.
    pub fn since(&self, mark: usize) -> &[(Instant, Seen)] {
        &self.events[mark.min(self.events.len())..]
    }

    fn take(&mut self, ev: &rallypoint::daemon::client::ServerEvent) {
        let id: Option<u64> = ev.id.as_deref().and_then(|s| s.parse().ok());
        let owner = self.owner.clone();
        let bad = |v: &mut Vec<String>, what: String| v.push(format!("{owner}: {what}"));
        if id.is_none() {
            bad(
                &mut self.violations,
                format!("event without a numeric id: {ev:?}"),
            );
        }
        let seen = match ev.event.as_str() {
            api::SNAPSHOT => match serde_json::from_str::<api::Members>(&ev.data) {
                Ok(m) => {
                    if m.local.name != self.owner {
                        bad(
                            &mut self.violations,
                            format!("snapshot of {}", m.local.name),
                        );
                    }
                    self.members = m
                        .members
                        .iter()
                        .map(|n| (n.name.clone(), n.incarnation.clone()))
                        .collect();
                    Seen::Snapshot {
                        local: m.local.incarnation,
                        members: self.names(),
                    }
                }
                Err(e) => return bad(&mut self.violations, format!("bad snapshot: {e}")),
            },
            api::NODEUP | api::NODEDOWN => {
                if self.last_id.is_none() {
                    bad(&mut self.violations, "an event before the snapshot".into());
                }
                if let (Some(last), Some(id)) = (self.last_id, id)
                    && id != last + 1
                {
                    bad(&mut self.violations, format!("id {id} after {last}"));
                }
                if ev.event == api::NODEUP {
                    let Ok(e) = serde_json::from_str::<api::NodeUp>(&ev.data) else {
                        return bad(&mut self.violations, format!("bad nodeup: {}", ev.data));
                    };
                    if e.node.name == self.owner {
                        bad(&mut self.violations, "nodeup about itself".into());
                    }
                    let before = self
                        .members
                        .insert(e.node.name.clone(), e.node.incarnation.clone());
                    if let Some(b) = before {
                        bad(
                            &mut self.violations,
                            format!(
                                "nodeup {} {} while {b} was up",
                                e.node.name, e.node.incarnation
                            ),
                        );
                    }
                    Seen::Up {
                        name: e.node.name,
                        incarnation: e.node.incarnation,
                    }
                } else {
                    let Ok(e) = serde_json::from_str::<api::NodeDown>(&ev.data) else {
                        return bad(&mut self.violations, format!("bad nodedown: {}", ev.data));
                    };
                    let before = self.members.remove(&e.node.name);
                    if before.as_deref() != Some(e.node.incarnation.as_str()) {
                        bad(
                            &mut self.violations,
                            format!(
                                "nodedown {} {} while up was {before:?}",
                                e.node.name, e.node.incarnation
                            ),
                        );
                    }
                    Seen::Down {
                        name: e.node.name,
                        incarnation: e.node.incarnation,
                        reason: e.reason,
                    }
                }
            }
            other => return bad(&mut self.violations, format!("unexpected event {other:?}")),
        };
        self.last_id = id;
        self.events.push((Instant::now(), seen));
    }
}

type Shared = Arc<(Mutex<Record>, Condvar)>;

/// Follows one daemon's event stream from a thread on its host. See the module docs.
pub struct Observer {
    shared: Shared,
    stop: Arc<AtomicBool>,
    cancel: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Observer {
    /// Starts following the daemon named `owner` on host `host` of `net`.
    pub fn start(net: &Net, host: usize, owner: &str, log: PathBuf) -> Observer {
        let shared: Shared = Arc::new((
            Mutex::new(Record {
                owner: owner.to_owned(),
                ..Record::default()
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let cancel = tokio_util::sync::CancellationToken::new();
        let (s, st, c) = (shared.clone(), stop.clone(), cancel.clone());
        let thread = net.block_on_in(host, move || follow(s, st, c));
        Observer {
            shared,
            stop,
            cancel,
            thread: Some(thread),
            log,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of what was seen so far.
    pub fn record(&self) -> Record {
        self.lock().clone()
    }

    /// How many events were seen so far (a mark for [`Record::since`]).
    pub fn mark(&self) -> usize {
        self.lock().events.len()
    }

    /// The member names now.
    pub fn names(&self) -> Vec<String> {
        self.lock().names()
    }

    /// Waits until `ok` holds for the record, for at most `within`; panics with what was
    /// seen and the daemon's log when it does not.
    pub fn wait(&self, what: &str, within: Duration, ok: impl Fn(&Record) -> bool) -> Record {
        if let Some(r) = self.watch_for(within, ok) {
            return r;
        }
        let seen = self.record();
        panic!(
            "{}: no {what} within {within:?}; members {:?}; events {:#?}; violations {:?}\n\
             --- log\n{}",
            seen.owner,
            seen.names(),
            seen.events.iter().map(|(_, e)| e).collect::<Vec<_>>(),
            seen.violations,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Watches for `cond` to hold, for `within`: `Some(record)` as soon as it does,
    /// `None` when it did not hold within that time (also for "nothing happens" checks).
    pub fn watch_for(&self, within: Duration, cond: impl Fn(&Record) -> bool) -> Option<Record> {
        let deadline = Instant::now() + within;
        let (m, cv) = &*self.shared;
        let mut r = m.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if cond(&r) {
                return Some(r.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            r = cv
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the members are exactly `names`.
    pub fn wait_members(&self, names: &[String], within: Duration) -> Record {
        let mut want: Vec<String> = names.to_vec();
        want.sort();
        self.wait(&format!("members {want:?}"), within, |r| {
            r.connected && r.names() == want
        })
    }

    /// Waits for a `nodedown` of `name` after `mark`; returns its reason and when.
    pub fn wait_down(&self, name: &str, mark: usize, within: Duration) -> (String, Instant) {
        let r = self.wait(&format!("nodedown {name}"), within, |r| {
            r.since(mark)
                .iter()
                .any(|(_, e)| matches!(e, Seen::Down { name: n, .. } if n == name))
        });
        r.since(mark)
            .iter()
            .find_map(|(t, e)| match e {
                Seen::Down {
                    name: n, reason, ..
                } if n == name => Some((reason.clone(), *t)),
                _ => None,
            })
            .expect("the nodedown the wait found")
    }

    /// Panics when the stream broke its contract at any point.
    pub fn assert_clean(&self) {
        let r = self.lock();
        assert!(
            r.violations.is_empty(),
            "{}: the event stream broke its contract: {:#?}",
            r.owner,
            r.violations
        );
    }

    /// Stops following.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn follow(
    shared: Shared,
    stop: Arc<AtomicBool>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let addr: std::net::SocketAddr = HTTP_ADDR.parse().expect("address");
    let notify = |f: &dyn Fn(&mut Record)| {
        let (m, cv) = &*shared;
        f(&mut m.lock().unwrap_or_else(|p| p.into_inner()));
        cv.notify_all();
    };
    while !stop.load(Ordering::Relaxed) {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = tokio::time::timeout(Duration::from_secs(2), EventStream::connect(addr, "/v1/events", None)) => s,
        };
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            _ => {
                // The daemon is not (yet, or no longer) listening: try again shortly.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        notify(&|r| {
            r.connected = true;
            r.streams += 1;
            r.last_id = None;
        });
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                Ok(Some(ev)) => notify(&|r| r.take(&ev)),
                _ => break,
            }
        }
        notify(&|r| r.connected = false);
    }
}

/// How one daemon is configured.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Its name (`n0@10.100.0.1`).
    pub name: String,
    /// Its cookie (`RALLYPOINT_COOKIE`).
    pub cookie: String,
    /// The rest of its configuration file: `[membership]`, `[topologies.…]`, ….
    pub toml: String,
}

/// A `rallypoint run` process on one host, with its observer.
pub struct Daemon {
    /// The host it runs on.
    pub host: usize,
    /// How it was configured.
    pub spec: Spec,
    child: Option<Child>,
    /// Its event stream.
    pub observer: Observer,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon on host `host` and its observer.
    pub fn start(net: &Net, host: usize, spec: Spec) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("daemon.log");
        let mut d = Daemon {
            host,
            observer: Observer::start(net, host, &spec.name, log),
            spec,
            child: None,
            dir,
        };
        d.spawn(net);
        d
    }

    fn spawn(&mut self, net: &Net) {
        let ip = net.host(self.host).ip;
        let config = self.dir.path().join("rallypoint.toml");
        let text = format!(
            "name = \"{}\"\ncluster_addr = \"{ip}:{CLUSTER_PORT}\"\nhttp_addr = \"{HTTP_ADDR}\"\n{}",
            self.spec.name, self.spec.toml
        );
        std::fs::write(&config, text).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log file");
        let mut cmd = net.command(self.host, BIN);
        cmd.arg("run").arg("--config").arg(&config);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RALLYPOINT") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("RALLYPOINT_COOKIE", &self.spec.cookie)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env(
                "RUST_LOG",
                std::env::var("FLEET_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn rallypoint");
        self.child = Some(child);
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most `within`) for it to exit; returns its exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            // Polling the child, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again (after a kill or an exit), with the same name: a new incarnation.
    pub fn restart(&mut self, net: &Net) {
        self.kill9();
        self.spawn(net);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The names of all daemons but `except`.
pub fn others(all: &[Daemon], except: usize) -> Vec<String> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .map(|(_, d)| d.name().to_owned())
        .collect()
}

/// Waits until every daemon has every other one as a member.
pub fn wait_full_mesh(all: &[Daemon], within: Duration) {
    for (i, d) in all.iter().enumerate() {
        d.observer.wait_members(&others(all, i), within);
    }
}

/// The standard name of the daemon on host `i`.
pub fn name_on(net: &Net, i: usize) -> String {
    format!("n{i}@{}", net.host(i).ip)
}

/// A static-hosts topology listing the cluster addresses of `hosts`.
pub fn static_hosts(net: &Net, hosts: impl IntoIterator<Item = usize>) -> String {
    let list: Vec<String> = hosts
        .into_iter()
        .map(|i| format!("\"{}:{CLUSTER_PORT}\"", net.host(i).ip))
        .collect();
    format!(
        "\n[topologies.peers]\nstrategy = \"static\"\nhosts = [{}]\nresolve_interval = \"1s\"\n",
        list.join(", ")
    )
}

/// `GET path` from the daemon's API on host `host` (from a thread on that host);
/// `None` when it does not answer 200.
pub fn api_get(net: &Net, host: usize, path: &str) -> Option<String> {
    let path = path.to_owned();
    net.block_on_in(host, move || async move {
        let addr: std::net::SocketAddr = HTTP_ADDR.parse().ok()?;
        tokio::time::timeout(
            Duration::from_secs(5),
            rallypoint::daemon::client::get(addr, &path),
        )
        .await
        .ok()?
        .ok()
    })
    .join()
    .ok()
    .flatten()
}

/// The value of one sample (`name{labels} value`) in a Prometheus text body.
pub fn metric(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == sample).then(|| v.parse().ok()).flatten()
    })
}

/// A server started on a host by an async function, kept running on that host's
/// runtime until this is dropped; the test reaches it through [`OnHost::get`].
pub struct OnHost<T> {
    value: Option<Arc<T>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + Sync + 'static> OnHost<T> {
    /// Runs `make` on host `host` and keeps its runtime (and the tasks it spawned)
    /// going.
    pub fn start<Fut, F>(net: &Net, host: usize, make: F) -> OnHost<T>
    where
        Fut: std::future::Future<Output = T>,
        F: FnOnce() -> Fut + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = net.block_on_in(host, move || async move {
            let value = Arc::new(make().await);
            let _ = tx.send(value.clone());
            let _ = stopped.await;
            // The last reference goes here, inside the runtime its tasks ran on.
            drop(value);
        });
        let value = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server started on its host");
        OnHost {
            value: Some(value),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The server.
    pub fn get(&self) -> &T {
        self.value.as_deref().expect("running")
    }
}

impl<T> Drop for OnHost<T> {
    fn drop(&mut self) {
        self.value.take();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Daemons named `app@<ip>` on hosts `0..n`, all with the configuration `toml`.
pub fn start_apps(net: &Net, n: usize, cookie: &str, toml: &str) -> Vec<Daemon> {
    (0..n)
        .map(|i| {
            Daemon::start(
                net,
                i,
                Spec {
                    name: format!("app@{}", net.host(i).ip),
                    cookie: cookie.into(),
                    toml: toml.to_owned(),
                },
            )
        })
        .collect()
}

/// Asks `probe` again every `every` until it gives `Some`, for at most `within`; panics
/// saying `what` (and the last `Err` it gave) when it never does. For state read from a
/// daemon's API, which has no event to wait on.
pub fn poll<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("no {what} within {within:?}: {last}")
            }
            // A poll of the API, bounded by the deadline.
            Err(_) => std::thread::sleep(every),
        }
    }
}
