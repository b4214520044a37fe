//! Processes of `rallypoint run` on loopback, and an observer of their event streams.
//!
//! [`Daemon`] starts the binary with a config file in a temporary directory, captures
//! its stderr line by line (tests wait for log lines with a deadline), and kills it with
//! SIGKILL when dropped, so a failing test leaves no process behind. When a test panics
//! while a daemon is alive, the daemon's log is printed to help find out why.
//!
//! [`Watcher`] follows a daemon's `/v1/events` and keeps the member set it implies; it
//! also checks the stream's contract on the way (a snapshot first, ids that go up by one
//! per event, up/down alternating per node).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rallypoint::daemon::api;
use rallypoint::daemon::client::{self, EventStream};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

use super::ports::free_addr;

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rallypoint");

/// `rallypoint` in a clean environment: none of this process's `RALLYPOINT_*`
/// variables, `$HOME` and the config directory (where the default cookie lives) in
/// `home`.
pub fn command(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RALLYPOINT") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"));
    cmd
}

/// The membership timing used by the tests: quick, but with room for a busy machine
/// (a heartbeat every 100 ms, down after 1 s).
pub const FAST_MEMBERSHIP: &str = include_str!("fast_membership.toml");

/// How one daemon is configured.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The node's name (`a@127.0.0.1`).
    pub name: String,
    /// Its cluster address.
    pub cluster_addr: SocketAddr,
    /// Its HTTP API address.
    pub http_addr: SocketAddr,
    /// The cookie, passed in `RALLYPOINT_COOKIE`.
    pub cookie: String,
    /// The static hosts it lists (topology `peers`); none: no topology.
    pub peers: Vec<SocketAddr>,
    /// More TOML appended to the config file (after the `[membership]` table).
    pub extra_toml: String,
    /// More top-level keys, in TOML, written before any table.
    pub top_toml: String,
    /// More command-line arguments after `run --config FILE`.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// The open-file limit (`RLIMIT_NOFILE`, soft and hard) the process starts with;
    /// `None`: this process's.
    pub nofile: Option<u64>,
}

impl Spec {
    /// A node named `basename@127.0.0.1` on fresh loopback ports, with the test cookie
    /// and no peers.
    pub fn new(basename: &str) -> Spec {
        Spec {
            name: format!("{basename}@127.0.0.1"),
            cluster_addr: free_addr(),
            http_addr: free_addr(),
            cookie: "test-cookie-of-the-daemons".into(),
            peers: Vec::new(),
            extra_toml: String::new(),
            top_toml: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
        }
    }

    /// Lists these peers as static hosts.
    pub fn peers(mut self, peers: &[&Spec]) -> Spec {
        self.peers = peers.iter().map(|s| s.cluster_addr).collect();
        self
    }

    /// Uses another cookie.
    pub fn cookie(mut self, cookie: &str) -> Spec {
        self.cookie = cookie.into();
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let mut t = format!(
            "name = {:?}\ncluster_addr = \"{}\"\nhttp_addr = \"{}\"\n{}\n{FAST_MEMBERSHIP}",
            self.name, self.cluster_addr, self.http_addr, self.top_toml
        );
        // Always a topology: with none configured the daemon would gossip on the host's
        // network, which tests must never do outside their own namespaces.
        {
            let hosts: Vec<String> = self.peers.iter().map(|a| format!("\"{a}\"")).collect();
            t.push_str(&format!(
                "\n[topologies.peers]\nstrategy = \"static\"\nhosts = [{}]\nresolve_interval = \"1s\"\n",
                hosts.join(", ")
            ));
        }
        t.push('\n');
        t.push_str(&self.extra_toml);
        t
    }
}

/// The lines a process wrote to stderr, as they come.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    /// Bumped on each line, and once more when the stream ends.
    changed: Mutex<Option<watch::Sender<u64>>>,
}

impl Log {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
        if let Some(tx) = &*self.changed.lock().unwrap_or_else(|p| p.into_inner()) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Every line so far.
    pub fn text(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    fn find(&self, pred: &dyn Fn(&str) -> bool) -> Option<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| pred(l))
            .cloned()
    }
}

/// A running `rallypoint run` process.
pub struct Daemon {
    /// How it was configured.
    pub spec: Spec,
    child: Option<Child>,
    log: Arc<Log>,
    changed: watch::Receiver<u64>,
    _dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
}

impl Daemon {
    /// Starts the process and waits until it says its HTTP API is listening.
    pub async fn start(spec: Spec) -> Daemon {
        let d = Daemon::spawn(spec);
        d.wait_ready().await;
        d
    }

    /// Starts the process without waiting.
    pub fn spawn(spec: Spec) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("rallypoint.toml");
        std::fs::write(&config_path, spec.toml()).expect("write config");
        let mut cmd = command(dir.path());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(&spec.args);
        cmd.env("RALLYPOINT_COOKIE", &spec.cookie)
            .env("RUST_LOG", "info");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if let Some(n) = spec.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit(2) is async-signal-safe; the closure touches nothing
            // else between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn rallypoint");
        let log = Arc::new(Log::default());
        let (tx, changed) = watch::channel(0);
        *log.changed.lock().unwrap() = Some(tx);
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => sink.push(l),
                    Err(_) => break,
                }
            }
            // Wake waiters one last time: the stream ended.
            if let Some(tx) = sink
                .changed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                tx.send_modify(|n| *n += 1);
            }
        });
        Daemon {
            spec,
            child: Some(child),
            log,
            changed,
            _dir: dir,
            config_path,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until the process says its HTTP API is listening.
    pub async fn wait_ready(&self) {
        self.wait_log("HTTP API listening", Duration::from_secs(30), |l| {
            l.contains("HTTP API listening")
        })
        .await;
    }

    /// Waits for a log line matching `pred`; panics with the log at the deadline or
    /// when the process's stderr ends first.
    pub async fn wait_log(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let mut rx = self.changed.clone();
        loop {
            rx.borrow_and_update();
            if let Some(line) = self.log.find(&pred) {
                return line;
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    if let Some(line) = self.log.find(&pred) {
                        return line;
                    }
                    panic!(
                        "{}: stderr ended before {what}; log:\n{}",
                        self.name(),
                        self.log()
                    );
                }
                Err(_) => panic!(
                    "{}: no {what} within {within:?}; log:\n{}",
                    self.name(),
                    self.log()
                ),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("process running")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with a pid of a child process we own and have not reaped.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit, with a deadline.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("process running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            // The process's exit closes its stderr, which wakes this up.
            let mut rx = self.changed.clone();
            rx.borrow_and_update();
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // stderr closed: the process is exiting; reap it with a bounded wait.
                Ok(Err(_)) => {
                    for _ in 0..200 {
                        if let Some(status) = child.try_wait().expect("try_wait") {
                            self.child = None;
                            return status;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(_) => panic!(
                    "{} did not exit within {within:?}; log:\n{}",
                    self.name(),
                    self.log()
                ),
            }
        }
    }

    /// `GET /v1/members`.
    pub async fn members(&self) -> api::Members {
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            client::get(self.spec.http_addr, "/v1/members"),
        )
        .await
        .expect("members answered in time")
        .expect("members");
        serde_json::from_str(&body).expect("members JSON")
    }

    /// Follows `/v1/events`.
    pub async fn watch(&self) -> Watcher {
        Watcher::connect(self.spec.http_addr, self.name()).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("---- log of {} ----\n{}\n----", self.name(), self.log());
        }
        self.kill9();
    }
}

/// What a [`Watcher`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A `snapshot` event.
    Snapshot(api::Members),
    /// A `nodeup` event.
    Up(api::Node),
    /// A `nodedown` event, with its reason.
    Down(api::Node, String),
}

/// Follows one daemon's `/v1/events`.
pub struct Watcher {
    stream: EventStream,
    /// Whose events these are.
    pub owner: String,
    /// The members now, by name, as the events say.
    pub members: BTreeMap<String, api::Node>,
    /// Everything seen, in order.
    pub seen: Vec<Seen>,
    last_id: u64,
}

impl Watcher {
    /// Connects and reads the first event, which must be a snapshot.
    pub async fn connect(http_addr: SocketAddr, owner: &str) -> Watcher {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            EventStream::connect(http_addr, "/v1/events", None),
        )
        .await
        .expect("event stream opened in time")
        .expect("event stream");
        let mut w = Watcher {
            stream,
            owner: owner.to_owned(),
            members: BTreeMap::new(),
            seen: Vec::new(),
            last_id: 0,
        };
        let first = w.next(Instant::now() + Duration::from_secs(10)).await;
        assert!(
            matches!(first, Some(Seen::Snapshot(_))),
            "{owner}: first event is a snapshot, got {first:?}"
        );
        w
    }

    /// The next event before `deadline`; `None` when the deadline passes.
    pub async fn next(&mut self, deadline: Instant) -> Option<Seen> {
        let ev = match timeout_at(deadline, self.stream.next()).await {
            Err(_) => return None,
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) => panic!("{}: event stream ended", self.owner),
            Ok(Err(e)) => panic!("{}: event stream failed: {e}", self.owner),
        };
        let id: u64 = ev
            .id
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: event without a numeric id: {ev:?}", self.owner));
        let seen = match ev.event.as_str() {
            api::SNAPSHOT => {
                let m: api::Members = serde_json::from_str(&ev.data).expect("snapshot JSON");
                assert_eq!(m.local.name, self.owner, "snapshot of the right node");
                self.members = m
                    .members
                    .iter()
                    .map(|n| (n.name.clone(), n.clone()))
                    .collect();
                Seen::Snapshot(m)
            }
            api::NODEUP => {
                assert_eq!(id, self.last_id + 1, "{}: ids go up by one", self.owner);
                let e: api::NodeUp = serde_json::from_str(&ev.data).expect("nodeup JSON");
                assert_ne!(e.node.name, self.owner, "no event about the node itself");
                let before = self.members.insert(e.node.name.clone(), e.node.clone());
                assert!(
                    before.is_none(),
                    "{}: nodeup for {} while it was up",
                    self.owner,
                    e.node.name
                );
                Seen::Up(e.node)
            }
            api::NODEDOWN => {
                assert_eq!(id, self.last_id + 1, "{}: ids go up by one", self.owner);
                let e: api::NodeDown = serde_json::from_str(&ev.data).expect("nodedown JSON");
                let before = self.members.remove(&e.node.name);
                assert_eq!(
                    before.map(|n| n.incarnation),
                    Some(e.node.incarnation.clone()),
                    "{}: nodedown for {} follows its nodeup",
                    self.owner,
                    e.node.name
                );
                Seen::Down(e.node, e.reason)
            }
            other => panic!("{}: unexpected event {other:?}", self.owner),
        };
        self.last_id = id;
        self.seen.push(seen.clone());
        Some(seen)
    }

    /// Reads events until `f` returns `Some`, within `within`; panics at the deadline
    /// with what was seen.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Seen, &BTreeMap<String, api::Node>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline).await {
                Some(seen) => {
                    if let Some(v) = f(&seen, &self.members) {
                        return v;
                    }
                }
                None => panic!(
                    "{}: no {what} within {within:?}; members {:?}; seen {:#?}",
                    self.owner,
                    self.members.keys().collect::<Vec<_>>(),
                    self.seen
                ),
            }
        }
    }

    /// Waits until the members are exactly `names`.
    pub async fn wait_members(&mut self, names: &[&str], within: Duration) {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        if self.members.keys().cloned().collect::<Vec<_>>() == want {
            return;
        }
        self.wait_for(&format!("members {want:?}"), within, |_, m| {
            (m.keys().cloned().collect::<Vec<_>>() == want).then_some(())
        })
        .await
    }

    /// Waits for `nodedown` of `name`; returns the node and the reason.
    pub async fn wait_down(&mut self, name: &str, within: Duration) -> (api::Node, String) {
        self.wait_for(&format!("nodedown {name}"), within, |s, _| match s {
            Seen::Down(n, r) if n.name == name => Some((n.clone(), r.clone())),
            _ => None,
        })
        .await
    }

    /// Waits for `nodeup` of `name`; returns the node.
    pub async fn wait_up(&mut self, name: &str, within: Duration) -> api::Node {
        self.wait_for(&format!("nodeup {name}"), within, |s, _| match s {
            Seen::Up(n) if n.name == name => Some(n.clone()),
            _ => None,
        })
        .await
    }

    /// Reads whatever events are already on their way (until `quiet` passes with none),
    /// and returns them.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Some(s) = self.next(Instant::now() + quiet).await {
            out.push(s);
        }
        out
    }
}
