//! Event-store example nodes as processes in a [`Lab`], on a real PostgreSQL.
//!
//! [`Fixture::start`] makes a lab whose host 0 runs PostgreSQL (and the test's own
//! client code, via [`Fixture::block_on`]) and whose hosts 1, 2, … each run one node of
//! `examples/event_store` (built once per test process with cargo, into the target
//! directory the tests were built in), named `a@10.78.0.2`, `b@10.78.0.3`, …, cluster
//! port 45893 and HTTP port 8080 on the host's address, listing every other node as a
//! static host. Node processes are killed (SIGKILL) when the fixture is dropped; when a
//! test panics, their logs are printed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::http_client;
use crate::lab::{self, Lab};
use crate::postgres::{self, Postgres};

/// Cluster port of every node.
pub const CLUSTER_PORT: u16 = 45893;
/// HTTP port of every node.
pub const HTTP_PORT: u16 = 8080;
/// PostgreSQL's port on host 0.
pub const PG_PORT: u16 = 5432;

/// Quick timings for tests, with room for a busy machine.
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "100ms",
    "--down-after",
    "1s",
    "--reconnect-initial",
    "100ms",
    "--reconnect-max",
    "500ms",
    "--handshake-timeout",
    "1s",
    "--lease-ttl",
    "3s",
    "--lease-retry",
    "200ms",
    "--catch-up-interval",
    "1s",
    "--checkpoint-interval",
    "100ms",
    "--view-settle",
    "500ms",
];

/// The example's binary, built on first use.
pub fn example_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build_example)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_example() -> Result<PathBuf, String> {
    // The test binary is <target>/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("cannot find the target directory")?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or("cannot find the target directory")?;
    // Build with the profile of this test run, so the library is not compiled twice.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "bench",
        _ => "test",
    };
    let mut features = vec!["daemon"];
    if cfg!(feature = "kubernetes") {
        features.push("kubernetes");
    }
    if cfg!(feature = "dns") {
        features.push("dns");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    eprintln!("building examples/event_store (profile {profile}, features {features:?})");
    let status = Command::new(&cargo)
        .args(["build", "--example", "event_store", "--profile", profile])
        .args(["--no-default-features", "--features", &features.join(",")])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building examples/event_store failed: {status}"));
    }
    let bin = profile_dir.join("examples").join("event_store");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "built examples/event_store but {} is missing",
            bin.display()
        ))
    }
}

/// One node process.
pub struct NodeProc {
    /// Its name.
    pub name: String,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its lab host.
    pub host: usize,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    killed: bool,
}

impl NodeProc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.killed = true;
        }
    }

    /// Sends a signal (SIGSTOP, SIGCONT, SIGTERM).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, up to `within`; returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.killed = true;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Whether a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|l| l.contains(text))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            let file = std::env::temp_dir().join(format!(
                "event_store-{}-{}.log",
                std::process::id(),
                self.name.replace(['@', '.'], "_")
            ));
            let saved = std::fs::write(&file, &log).is_ok();
            eprintln!(
                "---- log of {} (last 80 lines{}) ----",
                self.name,
                if saved {
                    format!("; all in {}", file.display())
                } else {
                    String::new()
                }
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Host index of node `k` (0: a, 1: b, …).
pub fn host_of(k: usize) -> usize {
    k + 1
}

/// The name of node `k`.
pub fn node_name(k: usize) -> String {
    let letter = (b'a' + k as u8) as char;
    format!("{letter}@{}", node_ip(k))
}

/// The address of node `k`.
pub fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, host_of(k) as u8 + 1)
}

/// Three nodes (or more), a PostgreSQL, a lab. See the module docs.
pub struct Fixture {
    nodes: Mutex<Vec<Option<NodeProc>>>,
    /// The database.
    pub pg: Postgres,
    /// The network.
    pub lab: Lab,
    /// How many node slots the lab has.
    pub slots: usize,
    /// Extra arguments for every node.
    pub args: Vec<String>,
}

impl Fixture {
    /// A lab with room for `slots` nodes, PostgreSQL on host 0, and the example built.
    /// `None` when the test must skip (not root, PostgreSQL missing, outside CI).
    pub fn start(test: &str, slots: usize, args: &[&str]) -> Option<Fixture> {
        Fixture::start_with(test, slots, args, false)
    }

    /// Like [`Fixture::start`]; `durable` makes PostgreSQL wait for the disk on commit.
    pub fn start_with(test: &str, slots: usize, args: &[&str], durable: bool) -> Option<Fixture> {
        if !lab::require_root(test) {
            return None;
        }
        if postgres::bin_dir().is_none() {
            lab::skip_or_fail(
                test,
                "PostgreSQL is not installed (scripts/setup.sh installs it)",
            );
            return None;
        }
        let bin = example_binary();
        assert!(bin.exists());
        let lab = Lab::new(slots + 1).expect("lab");
        let db_ip = lab.host(0).ip;
        let pg = lab
            .in_host(0, || {
                Postgres::start(postgres::Options {
                    listen: db_ip.into(),
                    port: PG_PORT,
                    durable,
                })
            })
            .unwrap_or_else(|e| panic!("{test}: PostgreSQL: {e}"));
        let mut all_args: Vec<String> = FAST.iter().map(|s| s.to_string()).collect();
        all_args.extend(args.iter().map(|s| s.to_string()));
        Some(Fixture {
            nodes: Mutex::new((0..slots).map(|_| None).collect()),
            pg,
            lab,
            slots,
            args: all_args,
        })
    }

    /// The database's connection string.
    pub fn db_url(&self) -> String {
        self.pg.url("postgres")
    }

    /// Starts node `k` (with the fixture's arguments and `extra`); it lists every other
    /// slot as a static host.
    pub fn spawn(&self, k: usize, extra: &[&str]) {
        let bin = example_binary();
        let name = node_name(k);
        let ip = node_ip(k);
        let peers: Vec<String> = (0..self.slots)
            .filter(|&j| j != k)
            .map(|j| format!("{}:{CLUSTER_PORT}", node_ip(j)))
            .collect();
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &name])
            .args(["--cluster-addr", &format!("{ip}:{CLUSTER_PORT}")])
            .args(["--http-addr", &format!("{ip}:{HTTP_PORT}")])
            .args(["--peers", &peers.join(",")])
            .args(["--database-url", &self.db_url()])
            .args(&self.args)
            .args(extra)
            .env("EVENT_STORE_COOKIE", "event-store-test-cookie")
            .env("RUST_LOG", "info,event_store=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = self
            .lab
            .in_host(host_of(k), || cmd.spawn())
            .unwrap_or_else(|e| panic!("cannot start node {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let node = NodeProc {
            name,
            http: SocketAddr::from((ip, HTTP_PORT)),
            host: host_of(k),
            child,
            log,
            killed: false,
        };
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())[k] = Some(node);
    }

    /// Runs `f` on node `k`'s process (panics if it was never started).
    pub fn with_node<R>(&self, k: usize, f: impl FnOnce(&mut NodeProc) -> R) -> R {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        f(nodes[k].as_mut().expect("node started"))
    }

    /// Node `k`'s HTTP address.
    pub fn http(&self, k: usize) -> SocketAddr {
        SocketAddr::from((node_ip(k), HTTP_PORT))
    }

    /// Runs the test's async part on host 0 (which reaches PostgreSQL and every node).
    pub fn block_on<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        self.lab.block_on(0, fut)
    }

    /// Drops every packet between node `k` and the nodes in `others` (not PostgreSQL).
    pub fn partition(&self, k: usize, others: &[usize]) {
        let hosts: Vec<usize> = others.iter().map(|&j| host_of(j)).collect();
        self.lab.cut(host_of(k), &hosts).expect("cut");
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.lab.heal().expect("heal");
    }
}

/// The longest any single wait in these tests may take.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// Polls `check` until it returns `Some`, at most until `DEADLINE` has passed; panics
/// with `what` and the last state `describe`d otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    wait_for_within(DEADLINE, what, &mut check).await
}

/// Like [`wait_for`] with a given deadline.
pub async fn wait_for_within<T, F, Fut>(within: Duration, what: &str, check: &mut F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let mut last;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(state) => last = state,
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `k` answers `/healthz` and sees exactly `members` (node indices).
pub async fn wait_members(fx: &Fixture, k: usize, members: &[usize]) {
    let want: std::collections::BTreeSet<String> = members.iter().map(|&j| node_name(j)).collect();
    let addr = fx.http(k);
    wait_for(&format!("{} to see {want:?}", node_name(k)), || {
        let want = want.clone();
        async move {
            let v = http_client::get(addr, "/cluster")
                .await
                .map_err(|e| e.to_string())?;
            let got: std::collections::BTreeSet<String> = v["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["name"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if got == want {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await
}

/// Appends `n` events to `stream` on node `k` with `expected`; returns the answer.
pub async fn append(
    fx: &Fixture,
    k: usize,
    stream: &str,
    expected: Value,
    n: usize,
) -> (hyper::StatusCode, Value) {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"type": "test_event", "data": {"i": i}}))
        .collect();
    http_client::post(
        fx.http(k),
        &format!("/streams/{stream}"),
        &json!({"expected_version": expected, "events": events}),
    )
    .await
    .unwrap_or_else(|e| panic!("append: {e}"))
}

/// Creates a subscription on node `k`.
pub async fn create_subscription(fx: &Fixture, k: usize, name: &str) {
    let (status, body) = http_client::post(fx.http(k), "/subscriptions", &json!({"name": name}))
        .await
        .unwrap_or_else(|e| panic!("create subscription: {e}"));
    assert!(status.is_success(), "create {name}: {status} {body}");
}

/// Node `k`'s `GET /subscriptions`, by name.
pub async fn subscriptions(
    fx: &Fixture,
    k: usize,
) -> Result<std::collections::BTreeMap<String, Value>, String> {
    let v = http_client::get(fx.http(k), "/subscriptions")
        .await
        .map_err(|e| e.to_string())?;
    Ok(v["subscriptions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| Some((s["name"].as_str()?.to_string(), s.clone())))
                .collect()
        })
        .unwrap_or_default())
}

/// Node `k`'s `GET /status`.
pub async fn status(fx: &Fixture, k: usize) -> Value {
    http_client::get(fx.http(k), "/status")
        .await
        .unwrap_or_else(|e| panic!("status: {e}"))
}

/// A connection to the database, from host 0.
pub async fn db(fx: &Fixture) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&fx.db_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// One recorded delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Its order of recording.
    pub id: i64,
    /// The event's position.
    pub position: i64,
    /// Who delivered it.
    pub node: String,
    /// Under which lease epoch.
    pub epoch: i64,
    /// The store's clock, microseconds since the Unix epoch.
    pub at_us: i64,
}

/// Every delivery of `subscription`, in the order they were recorded.
pub async fn deliveries(db: &tokio_postgres::Client, subscription: &str) -> Vec<Delivery> {
    db.query(
        "SELECT id, position, node, epoch, (extract(epoch from at) * 1000000)::bigint \
         FROM deliveries WHERE subscription = $1 ORDER BY id",
        &[&subscription],
    )
    .await
    .expect("query deliveries")
    .iter()
    .map(|r| Delivery {
        id: r.get(0),
        position: r.get(1),
        node: r.get(2),
        epoch: r.get(3),
        at_us: r.get(4),
    })
    .collect()
}

/// Waits until every position in `1..=last` was delivered for each of `subscriptions`.
pub async fn wait_delivered(
    fx: &Fixture,
    db: &tokio_postgres::Client,
    subscriptions: &[String],
    last: i64,
) {
    for s in subscriptions {
        wait_for(&format!("{s} to deliver positions 1..={last}"), || async {
            let n: i64 = db
                .query_one(
                    "SELECT count(DISTINCT position) FROM deliveries \
                     WHERE subscription = $1 AND position BETWEEN 1 AND $2",
                    &[s, &last],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if n == last {
                Ok(())
            } else {
                Err(format!("{n} of {last} delivered"))
            }
        })
        .await;
    }
    let _ = fx;
}

/// Subscription names for which rendezvous hashing over `nodes` (node indices) gives
/// each node exactly `per_node`, taking the first that fit from `sub-0`, `sub-1`, …;
/// `accept` may refuse a candidate.
pub fn spread_names(
    nodes: &[usize],
    per_node: usize,
    mut accept: impl FnMut(&str, usize) -> bool,
) -> Vec<String> {
    let names: Vec<String> = nodes.iter().map(|&k| node_name(k)).collect();
    let mut count = vec![0usize; nodes.len()];
    let mut out = Vec::new();
    for i in 0..10_000 {
        let s = format!("sub-{i}");
        let owner = crate::placement::owner(&s, names.iter().map(String::as_str)).expect("nodes");
        let idx = names
            .iter()
            .position(|n| n == owner)
            .expect("owner is a node");
        if count[idx] < per_node && accept(&s, nodes[idx]) {
            count[idx] += 1;
            out.push(s);
        }
        if count.iter().all(|&c| c == per_node) {
            return out;
        }
    }
    panic!("could not spread names over {names:?}");
}

/// The owner that rendezvous hashing gives `subscription` among `nodes`.
pub fn expected_owner(subscription: &str, nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(|&k| node_name(k)).collect();
    crate::placement::owner(subscription, names.iter().map(String::as_str))
        .expect("nodes")
        .to_string()
}

/// Waits until every subscription in `subs` is held, per the store, by the owner that
/// placement over `nodes` gives it, and is active on that node and on no other node of
/// `nodes`.
pub async fn wait_placed(fx: &Fixture, subs: &[String], nodes: &[usize]) {
    wait_for(
        "subscriptions to be placed and active on their owners",
        || async {
            let mut views = Vec::new();
            for &k in nodes {
                views.push((k, subscriptions(fx, k).await?));
            }
            for s in subs {
                let want = expected_owner(s, nodes);
                for (k, view) in &views {
                    let row = view
                        .get(s)
                        .ok_or(format!("{s} unknown to {}", node_name(*k)))?;
                    if row["owner"].as_str() != Some(&want) {
                        return Err(format!(
                            "{s}: owner {} per {}, want {want}",
                            row["owner"],
                            node_name(*k)
                        ));
                    }
                    let active = row["local"]["state"].as_str() == Some("active");
                    if active != (node_name(*k) == want) {
                        return Err(format!(
                            "{s}: state {} on {}",
                            row["local"]["state"],
                            node_name(*k)
                        ));
                    }
                }
            }
            Ok(())
        },
    )
    .await
}
