//! Failure detection at scale, beside foca and chitchat (a plain program, run as root:
//! `cargo bench --bench scale -- --n 10,100 --runs 3`).
//!
//! One trial = one system (rallypoint, foca, chitchat) at one timing profile (its
//! defaults, or 200 ms timing) with N nodes in one process on loopback, every node
//! seeded with node 0 only. Each trial runs in a child process (this program again, with
//! `--child`) inside a network namespace of its own, so that the bytes on that
//! namespace's `lo` are the trial's alone. The child measures:
//!
//! - formation: from just before node 0 starts until every node sees the N-1 others live;
//! - wire bytes and CPU per node per second over a steady window after formation;
//! - resident memory per node: (VmRSS after formation − VmRSS before the first node) / N;
//! - silent failure seen by all: a victim node in another process of the namespace joins
//!   (seeded with node 0); once every node sees it, it is stopped (SIGSTOP), and the time
//!   until every one of the N nodes no longer counts it live is taken;
//! - crash seen by all: the same with another victim and `kill -9`.
//!
//! Trials go round-robin over the systems and profiles (run 1 of each, then run 2 of
//! each, ...), and each figure is the median over the runs. `--stability 120s` (with N =
//! 300, optionally `--load 2`) instead counts rallypoint's false `nodedown`s over a window
//! after formation, at its defaults and at 200 ms timing. See docs/benchmarks.md.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion};
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec};
use foca_rand::SeedableRng;
use rallypoint::strategies::static_hosts::StaticHosts;
use rallypoint::{Cluster, Event, NodeName, Update};
use tokio::sync::watch;

/// Nodes of a trial listen on `127.0.0.1:NODE_PORT0 + i` (foca and chitchat; rallypoint
/// picks free ports), victims on `VICTIM_PORT0 + k`. Below the ephemeral range.
const NODE_PORT0: u16 = 20000;
const VICTIM_PORT0: u16 = 19000;
const COOKIE: &str = "scale-bench-cookie, 16+ bytes";
const CLUSTER_ID: &str = "rpscale";
/// How often the child looks at every node's view while it waits for a condition.
const POLL: Duration = Duration::from_millis(2);
/// Bytes of the Ethernet header that `lo` counts in its statistics per packet.
const LO_HEADER: u64 = 14;

// ---------------------------------------------------------------------------------------
// Systems and their settings

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Rallypoint,
    Foca,
    Chitchat,
}

impl System {
    const ALL: [System; 3] = [System::Rallypoint, System::Foca, System::Chitchat];

    fn name(self) -> &'static str {
        match self {
            System::Rallypoint => "rallypoint",
            System::Foca => "foca",
            System::Chitchat => "chitchat",
        }
    }

    fn parse(s: &str) -> Option<System> {
        System::ALL.into_iter().find(|x| x.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    /// Each system as it comes.
    Defaults,
    /// Heartbeats, probes or gossip rounds every 200 ms, the failure detector scaled.
    Fast,
}

impl Timing {
    const ALL: [Timing; 2] = [Timing::Defaults, Timing::Fast];

    fn name(self) -> &'static str {
        match self {
            Timing::Defaults => "defaults",
            Timing::Fast => "200ms",
        }
    }

    fn parse(s: &str) -> Option<Timing> {
        Timing::ALL.into_iter().find(|x| x.name() == s)
    }
}

fn rallypoint_config(timing: Timing) -> rallypoint::membership::Config {
    match timing {
        Timing::Defaults => rallypoint::membership::Config::default(),
        Timing::Fast => rallypoint::membership::Config {
            heartbeat_interval: Duration::from_millis(200),
            down_after: Duration::from_secs(1),
            ..rallypoint::membership::Config::default()
        },
    }
}

/// foca has no default configuration; `Config::new_lan(cluster size)` is its LAN preset.
/// The cluster size given is N + 2 (the nodes and the two victims).
fn foca_config(timing: Timing, n: usize) -> foca::Config {
    let size = NonZeroU32::new(n as u32 + 2).expect("n + 2 > 0");
    let mut c = foca::Config::new_lan(size);
    if timing == Timing::Fast {
        c.probe_period = Duration::from_millis(200);
        c.probe_rtt = Duration::from_millis(100);
        c.suspect_to_down_after /= 5;
    }
    c
}

/// chitchat's own defaults: gossip every second (its `Default`, test-only, and Quickwit
/// use 1 s), `FailureDetectorConfig::default()` (phi 8, initial interval 5 s, max 10 s),
/// protocol V0 (its documented default until every node can decode V1).
fn chitchat_config(timing: Timing, id: ChitchatId, seeds: Vec<String>) -> ChitchatConfig {
    let mut failure_detector_config = FailureDetectorConfig::default();
    let gossip_interval = match timing {
        Timing::Defaults => Duration::from_secs(1),
        Timing::Fast => {
            failure_detector_config.initial_interval = Duration::from_secs(1);
            failure_detector_config.max_interval = Duration::from_secs(2);
            Duration::from_millis(200)
        }
    };
    ChitchatConfig {
        listen_addr: id.gossip_advertise_addr,
        chitchat_id: id,
        cluster_id: CLUSTER_ID.to_owned(),
        gossip_interval,
        seed_nodes: seeds,
        failure_detector_config,
        marked_for_deletion_grace_period: Duration::from_secs(15 * 60),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    }
}

fn settings(system: System, timing: Timing) -> &'static str {
    match (system, timing) {
        (System::Rallypoint, Timing::Defaults) => {
            "membership::Config::default(): heartbeat_interval 500 ms, down_after 3 s"
        }
        (System::Rallypoint, Timing::Fast) => {
            "heartbeat_interval 200 ms, down_after 1 s, the rest default"
        }
        (System::Foca, Timing::Defaults) => {
            "Config::new_lan(N+2): probe_period 1 s, probe_rtt 500 ms, suspect_to_down_after 4 s × max(1, log10(N+2)), periodic gossip 200 ms to 3"
        }
        (System::Foca, Timing::Fast) => {
            "new_lan(N+2) with probe_period 200 ms, probe_rtt 100 ms, suspect_to_down_after ÷ 5"
        }
        (System::Chitchat, Timing::Defaults) => {
            "gossip_interval 1 s, FailureDetectorConfig::default() (phi 8, initial_interval 5 s, max_interval 10 s), protocol V0"
        }
        (System::Chitchat, Timing::Fast) => {
            "gossip_interval 200 ms, initial_interval 1 s, max_interval 2 s, phi 8, protocol V0"
        }
    }
}

// ---------------------------------------------------------------------------------------
// Nodes: how each system is started, and what a node sees

fn rallypoint_name(i: usize) -> String {
    format!("n{i}@127.0.0.1")
}

fn victim_rallypoint_name(k: usize) -> String {
    format!("v{k}@127.0.0.1")
}

fn victim_chitchat_id(k: usize) -> ChitchatId {
    ChitchatId::new(
        format!("v{k}"),
        0,
        SocketAddr::from((Ipv4Addr::LOCALHOST, VICTIM_PORT0 + k as u16)),
    )
}

fn node_chitchat_id(i: usize) -> ChitchatId {
    ChitchatId::new(
        format!("n{i}"),
        0,
        SocketAddr::from((Ipv4Addr::LOCALHOST, NODE_PORT0 + i as u16)),
    )
}

/// A victim as each system names it.
struct VictimKey {
    rallypoint: NodeName,
    port: u16,
    chitchat: ChitchatId,
}

impl VictimKey {
    fn new(k: usize) -> Self {
        VictimKey {
            rallypoint: victim_rallypoint_name(k)
                .parse()
                .expect("a valid node name"),
            port: VICTIM_PORT0 + k as u16,
            chitchat: victim_chitchat_id(k),
        }
    }
}

/// What one node counts as live, read without waiting.
enum View {
    Rallypoint(watch::Receiver<Arc<rallypoint::Snapshot>>),
    /// The ports of the members foca reported up and not since down.
    Foca(Arc<Mutex<HashSet<u16>>>),
    /// chitchat's live-nodes watch (this node included).
    Chitchat(watch::Receiver<BTreeMap<ChitchatId, NodeState>>),
}

impl View {
    fn others(&self) -> usize {
        match self {
            View::Rallypoint(w) => w.borrow().members.len(),
            View::Foca(s) => lock(s).len(),
            View::Chitchat(w) => w.borrow().len().saturating_sub(1),
        }
    }

    fn sees(&self, v: &VictimKey) -> bool {
        match self {
            View::Rallypoint(w) => w.borrow().members.contains_key(&v.rallypoint),
            View::Foca(s) => lock(s).contains(&v.port),
            View::Chitchat(w) => w.borrow().contains_key(&v.chitchat),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whatever must stay alive while the nodes run.
type Keep = Vec<Box<dyn std::any::Any + Send>>;

async fn start_rallypoint(
    name: String,
    timing: Timing,
    seed: Option<String>,
    port: u16,
) -> Cluster {
    let mut b = Cluster::builder()
        .name(name.clone())
        .cluster_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .cookie(COOKIE)
        .membership(rallypoint_config(timing));
    if let Some(seed) = seed {
        b = b.topology("seed", StaticHosts::new([seed]));
    }
    b.start()
        .await
        .unwrap_or_else(|e| panic!("rallypoint node {name} did not start: {e}"))
}

/// foca's identity: the port on 127.0.0.1 and a generation, bumped to rejoin after being
/// declared down.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct FocaId {
    port: u16,
    generation: u64,
}

impl foca::Identity for FocaId {
    type Addr = u16;

    fn renew(&self) -> Option<Self> {
        Some(FocaId {
            port: self.port,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> u16 {
        self.port
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

static FOCA_ERRORS: AtomicU64 = AtomicU64::new(0);

/// One foca node: a UDP socket, a task that feeds foca what arrives and the timers it
/// asked for, and sends what it produced. Returns the node's view.
async fn start_foca(
    port: u16,
    config: foca::Config,
    seed: Option<u16>,
) -> (Arc<Mutex<HashSet<u16>>>, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap_or_else(|e| panic!("foca node on port {port}: bind: {e}"));
    let view = Arc::new(Mutex::new(HashSet::new()));
    let seen = view.clone();
    let id = FocaId {
        port,
        generation: 1,
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let rng = foca_rand::rngs::SmallRng::seed_from_u64(nanos ^ (u64::from(port) << 32));
    let max_packet = config.max_packet_size.get();
    let mut foca = Foca::new(id, config, rng, PostcardCodec);
    let task = tokio::spawn(async move {
        let (timer_tx, mut timer_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut rt = AccumulatingRuntime::new();
        if let Some(seed) = seed {
            let to = FocaId {
                port: seed,
                generation: 0,
            };
            if foca.announce(to, &mut rt).is_err() {
                FOCA_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut buf = vec![0u8; max_packet + 64];
        loop {
            while let Some((to, data)) = rt.to_send() {
                let _ = socket.send_to(&data, (Ipv4Addr::LOCALHOST, to.port)).await;
            }
            while let Some((after, timer)) = rt.to_schedule() {
                let tx = timer_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = tx.send(timer);
                });
            }
            while let Some(n) = rt.to_notify() {
                match n {
                    OwnedNotification::MemberUp(m) => {
                        lock(&seen).insert(m.port);
                    }
                    OwnedNotification::MemberDown(m) => {
                        lock(&seen).remove(&m.port);
                    }
                    _ => {}
                }
            }
            let r = tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((len, _)) => foca.handle_data(&buf[..len], &mut rt),
                    Err(_) => Ok(()),
                },
                Some(t) = timer_rx.recv() => foca.handle_timer(t, &mut rt),
            };
            if r.is_err() {
                FOCA_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (view, task)
}

async fn start_chitchat(
    id: ChitchatId,
    timing: Timing,
    seeds: Vec<String>,
) -> (
    chitchat::ChitchatHandle,
    watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
) {
    let name = id.node_id.clone();
    let handle = chitchat::spawn_chitchat(
        chitchat_config(timing, id, seeds),
        Vec::new(),
        &UdpTransport,
    )
    .await
    .unwrap_or_else(|e| panic!("chitchat node {name} did not start: {e}"));
    let watch = handle.chitchat().lock().await.live_nodes_watcher();
    (handle, watch)
}

/// Starts the N nodes of a trial, node 0 first, each other seeded with node 0 only.
async fn start_nodes(system: System, timing: Timing, n: usize) -> (Vec<View>, Keep) {
    let mut views = Vec::with_capacity(n);
    let mut keep: Keep = Vec::with_capacity(n);
    match system {
        System::Rallypoint => {
            let mut seed = None;
            for i in 0..n {
                let c = start_rallypoint(rallypoint_name(i), timing, seed.clone(), 0).await;
                if i == 0 {
                    seed = Some(c.local().addr.to_string());
                }
                views.push(View::Rallypoint(c.watch()));
                keep.push(Box::new(c));
            }
        }
        System::Foca => {
            let config = foca_config(timing, n);
            for i in 0..n {
                let seed = (i > 0).then_some(NODE_PORT0);
                let (view, task) = start_foca(NODE_PORT0 + i as u16, config.clone(), seed).await;
                views.push(View::Foca(view));
                keep.push(Box::new(task));
            }
        }
        System::Chitchat => {
            for i in 0..n {
                let seeds = if i == 0 {
                    Vec::new()
                } else {
                    vec![format!("127.0.0.1:{NODE_PORT0}")]
                };
                let (handle, watch) = start_chitchat(node_chitchat_id(i), timing, seeds).await;
                views.push(View::Chitchat(watch));
                keep.push(Box::new(handle));
            }
        }
    }
    (views, keep)
}

/// Waits until `pred` holds for every view at once, polling; the time from `t0`, or
/// `None` after `deadline`.
async fn wait_all(
    views: &[View],
    t0: Instant,
    deadline: Duration,
    pred: impl Fn(&View) -> bool,
) -> Option<Duration> {
    let mut next = 0;
    loop {
        while next < views.len() && pred(&views[next]) {
            next += 1;
        }
        if next == views.len() {
            // Confirm in one pass: a node that was satisfied may no longer be.
            match views.iter().position(|v| !pred(v)) {
                None => return Some(t0.elapsed()),
                Some(j) => next = j,
            }
        }
        if t0.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// What the child reads of itself

/// IP bytes and packets sent on `lo` of this process's network namespace.
fn lo_tx() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    for line in text.lines() {
        let Some((dev, rest)) = line.split_once(':') else {
            continue;
        };
        if dev.trim() != "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        let (bytes, packets) = (f.get(8).copied(), f.get(9).copied());
        return (bytes.unwrap_or(0), packets.unwrap_or(0));
    }
    panic!("no lo in /proc/self/net/dev");
}

/// User + system CPU time of this process (all its threads), in milliseconds. The
/// counters of /proc/self/stat's utime and stime, read through getrusage for microsecond
/// resolution.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// rallypoint at N = 300 holds ~90,000 sockets in one process.
fn raise_nofile() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let want = nr_open.min(400_000);
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return;
    }
    // Not allowed to raise the hard limit (a container, no CAP_SYS_RESOURCE): the soft
    // limit can still go up to it.
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimits.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) == 0 && {
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &cur) == 0
        }
    };
    eprintln!(
        "scale: could not raise RLIMIT_NOFILE to {want}; soft limit {} ({}): a full mesh \
         of N nodes in one process needs about 2·N² descriptors",
        cur.rlim_cur,
        if raised {
            "raised to the hard limit"
        } else {
            "unchanged"
        }
    );
}

// ---------------------------------------------------------------------------------------
// Child modes

/// A victim process, killed (and reaped) when dropped.
struct Victim(Child);

impl Victim {
    fn spawn(system: System, timing: Timing, n: usize, k: usize, seed: Option<&str>) -> Victim {
        let exe = std::env::current_exe().expect("own executable");
        let mut cmd = Command::new(exe);
        if let Some(seed) = seed {
            cmd.env("RPSCALE_SEED", seed);
        }
        let child = cmd
            .args([
                "--victim",
                system.name(),
                timing.name(),
                &n.to_string(),
                &k.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a victim process");
        Victim(child)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: sends a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, sig);
        }
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `--victim SYSTEM TIMING N K`: one node seeded with node 0, until killed.
fn victim_main(args: &[String]) {
    let system = args
        .first()
        .and_then(|s| System::parse(s))
        .expect("victim system");
    let timing = args
        .get(1)
        .and_then(|s| Timing::parse(s))
        .expect("victim timing");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).expect("victim n");
    let k: usize = args.get(3).and_then(|s| s.parse().ok()).expect("victim k");
    child_runtime().block_on(async move {
        let port = VICTIM_PORT0 + k as u16;
        let mut keep: Keep = Vec::new();
        match system {
            System::Rallypoint => {
                // Node 0 listens on a port it picked: the child passes it in the environment.
                let seed = std::env::var("RPSCALE_SEED").expect("RPSCALE_SEED");
                let c = start_rallypoint(victim_rallypoint_name(k), timing, Some(seed), port).await;
                keep.push(Box::new(c));
            }
            System::Foca => {
                let (_, task) = start_foca(port, foca_config(timing, n), Some(NODE_PORT0)).await;
                keep.push(Box::new(task));
            }
            System::Chitchat => {
                let seeds = vec![format!("127.0.0.1:{NODE_PORT0}")];
                let (handle, _) = start_chitchat(victim_chitchat_id(k), timing, seeds).await;
                keep.push(Box::new(handle));
            }
        }
        std::future::pending::<()>().await;
    });
}

struct ChildArgs {
    system: System,
    timing: Timing,
    n: usize,
    window: Duration,
    deadline: Duration,
    settle: Duration,
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "none".into())
}

/// `--child SYSTEM TIMING N WINDOW_MS DEADLINE_MS SETTLE_MS`: one trial; prints one
/// `RESULT key=value ...` line.
fn child_main(args: &[String]) {
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("child argument {i} missing or not a number"))
    };
    let a = ChildArgs {
        system: args
            .first()
            .and_then(|s| System::parse(s))
            .expect("child system"),
        timing: args
            .get(1)
            .and_then(|s| Timing::parse(s))
            .expect("child timing"),
        n: num(2) as usize,
        window: Duration::from_millis(num(3)),
        deadline: Duration::from_millis(num(4)),
        settle: Duration::from_millis(num(5)),
    };
    raise_nofile();
    let line = child_runtime().block_on(trial(a));
    println!("RESULT {line}");
    // No orderly shutdown: the process ends, the namespace goes.
    std::process::exit(0);
}

async fn trial(a: ChildArgs) -> String {
    let n = a.n;
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let (views, keep) = start_nodes(a.system, a.timing, n).await;
    let formation = wait_all(&views, t0, a.deadline, |v| v.others() >= n - 1).await;
    let mut out = format!("formation_ms={}", ms(formation));
    if formation.is_none() {
        let least = views.iter().map(View::others).min().unwrap_or(0);
        out += &format!(" least_seen={least}");
        return out;
    }
    tokio::time::sleep(a.settle).await;
    let rss1 = rss_kib();
    let (b0, p0) = lo_tx();
    let c0 = cpu_ms();
    let w0 = Instant::now();
    tokio::time::sleep(a.window).await;
    let (b1, p1) = lo_tx();
    let c1 = cpu_ms();
    let secs = w0.elapsed().as_secs_f64();
    let ip_bytes = (b1 - b0).saturating_sub(LO_HEADER * (p1 - p0));
    out += &format!(
        " wire_b_node_s={:.1} cpu_ms_node_s={:.4} rss_kib_node={:.1}",
        ip_bytes as f64 / n as f64 / secs,
        (c1 - c0) / n as f64 / secs,
        rss1.saturating_sub(rss0) as f64 / n as f64,
    );
    // rallypoint's victims need node 0's address (its port was picked by the OS).
    let seed = match &views[0] {
        View::Rallypoint(w) => Some(w.borrow().local.addr.to_string()),
        _ => None,
    };
    let silent_key = VictimKey::new(0);
    let crash_key = VictimKey::new(1);
    let silent = Victim::spawn(a.system, a.timing, n, 0, seed.as_deref());
    let crash = Victim::spawn(a.system, a.timing, n, 1, seed.as_deref());
    let j0 = Instant::now();
    let joined = wait_all(&views, j0, a.deadline, |v| {
        v.sees(&silent_key) && v.sees(&crash_key)
    })
    .await;
    out += &format!(" victims_join_ms={}", ms(joined));
    if joined.is_some() {
        silent.signal(libc::SIGSTOP);
        let s0 = Instant::now();
        let seen = wait_all(&views, s0, a.deadline, |v| !v.sees(&silent_key)).await;
        out += &format!(" silent_ms={}", ms(seen));
        crash.signal(libc::SIGKILL);
        let k0 = Instant::now();
        let seen = wait_all(&views, k0, a.deadline, |v| !v.sees(&crash_key)).await;
        out += &format!(" crash_ms={}", ms(seen));
    }
    out += &format!(" foca_errors={}", FOCA_ERRORS.load(Ordering::Relaxed));
    drop(silent);
    drop(crash);
    std::mem::forget(keep);
    out
}

/// `--stability-child TIMING N SECS DEADLINE_MS`: rallypoint forms, then every node's
/// `NodeDown` events are counted over SECS.
fn stability_child_main(args: &[String]) {
    let timing = args.first().and_then(|s| Timing::parse(s)).expect("timing");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).expect("n");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).expect("secs");
    let deadline: u64 = args.get(3).and_then(|s| s.parse().ok()).expect("deadline");
    raise_nofile();
    let line = child_runtime().block_on(async move {
        let t0 = Instant::now();
        let (views, keep) = start_nodes(System::Rallypoint, timing, n).await;
        let formation = wait_all(&views, t0, Duration::from_millis(deadline), |v| {
            v.others() >= n - 1
        })
        .await;
        let mut out = format!("formation_ms={}", ms(formation));
        if formation.is_none() {
            let least = views.iter().map(View::others).min().unwrap_or(0);
            return out + &format!(" least_seen={least}");
        }
        let downs = Arc::new(AtomicU64::new(0));
        let resyncs = Arc::new(AtomicU64::new(0));
        let mut counters = Vec::new();
        for c in keep.iter().filter_map(|k| (**k).downcast_ref::<Cluster>()) {
            let mut sub = c.subscribe();
            let (downs, resyncs) = (downs.clone(), resyncs.clone());
            counters.push(tokio::spawn(async move {
                while let Some(u) = sub.recv().await {
                    match u {
                        Update::Event(Event::NodeDown { .. }) => {
                            downs.fetch_add(1, Ordering::Relaxed);
                        }
                        Update::Resync(_) => {
                            resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                        Update::Event(_) => {}
                    }
                }
            }));
        }
        let c0 = cpu_ms();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let cpu = (cpu_ms() - c0) / n as f64 / secs as f64;
        let least = views.iter().map(View::others).min().unwrap_or(0);
        out += &format!(
            " false_downs={} resyncs={} least_seen_at_end={least} cpu_ms_node_s={cpu:.4}",
            downs.load(Ordering::Relaxed),
            resyncs.load(Ordering::Relaxed),
        );
        std::mem::forget(keep);
        out
    });
    println!("RESULT {line}");
    std::process::exit(0);
}

/// `--busy PARENT_PID`: a busy loop, until the parent is gone.
fn busy_main(args: &[String]) {
    let parent: i32 = args
        .first()
        .and_then(|s| s.parse().ok())
        .expect("parent pid");
    let mut x: u64 = 1;
    loop {
        for _ in 0..10_000_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent: namespaces, trials, tables

/// A network namespace of our own, deleted (its processes killed first) when dropped.
struct Netns(String);

impl Netns {
    fn create(name: &str) -> Netns {
        run_ip(&["netns", "add", name]);
        let ns = Netns(name.to_owned());
        run_ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_netns_pids(&self.0);
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn run_ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip {}: {e} (is iproute2 installed?)", args.join(" ")));
    assert!(st.success(), "ip {} failed (run as root)", args.join(" "));
}

/// Kills what still runs in a namespace of ours (a trial's leftover victims).
fn kill_netns_pids(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill has no memory preconditions; these are processes of our trial.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Deletes namespaces left by an earlier run of this bench that was interrupted (their
/// names carry the parent's pid, no longer alive).
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("rpscale-") else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("scale: deleting stale namespace {name}");
            drop(Netns(name.to_owned()));
        }
    }
}

struct Opts {
    ns: Vec<usize>,
    runs: usize,
    systems: Vec<System>,
    timings: Vec<Timing>,
    window: Duration,
    deadline: Duration,
    settle: Duration,
    stability: Option<Duration>,
    stability_n: usize,
    load: usize,
}

fn parse_duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s:?} is not a duration: {e}"))
}

fn parse_opts(args: &[String]) -> Opts {
    let env = |k: &str| std::env::var(k).ok();
    let mut o = Opts {
        ns: vec![10],
        runs: 3,
        systems: System::ALL.to_vec(),
        timings: Timing::ALL.to_vec(),
        window: Duration::from_secs(10),
        deadline: Duration::from_secs(60),
        settle: Duration::from_secs(2),
        stability: None,
        stability_n: 300,
        load: 0,
    };
    let list = |s: &str| -> Vec<String> { s.split(',').map(|x| x.trim().to_owned()).collect() };
    let set_ns = |o: &mut Opts, v: &str| {
        o.ns = list(v)
            .iter()
            .map(|x| {
                x.parse()
                    .unwrap_or_else(|_| panic!("--n: {x:?} is not a number"))
            })
            .collect();
        assert!(o.ns.iter().all(|&n| n >= 2), "--n: at least 2 nodes");
    };
    if let Some(v) = env("SCALE_N") {
        set_ns(&mut o, &v);
    }
    if let Some(v) = env("SCALE_RUNS") {
        o.runs = v.parse().expect("SCALE_RUNS: a number");
    }
    if let Some(v) = env("SCALE_WINDOW") {
        o.window = parse_duration(&v);
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{arg} needs a value"))
                .clone()
        };
        match arg.as_str() {
            "--n" => {
                let v = value();
                set_ns(&mut o, &v);
            }
            "--runs" => o.runs = value().parse().expect("--runs: a number"),
            "--systems" => {
                o.systems = list(&value())
                    .iter()
                    .map(|s| System::parse(s).unwrap_or_else(|| panic!("--systems: {s:?}?")))
                    .collect()
            }
            "--timings" => {
                o.timings = list(&value())
                    .iter()
                    .map(|s| Timing::parse(s).unwrap_or_else(|| panic!("--timings: {s:?}?")))
                    .collect()
            }
            "--window" => o.window = parse_duration(&value()),
            "--deadline" => o.deadline = parse_duration(&value()),
            "--settle" => o.settle = parse_duration(&value()),
            "--stability" => o.stability = Some(parse_duration(&value())),
            "--stability-n" => o.stability_n = value().parse().expect("--stability-n: a number"),
            "--load" => o.load = value().parse().expect("--load: a number"),
            // cargo bench passes --bench to a harness-less bench.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?} (--n 10,100 --runs 3 --systems rallypoint,foca,chitchat \
                 --timings defaults,200ms --window 10s --deadline 60s --settle 2s \
                 --stability 120s --stability-n 300 --load 2)"
            ),
        }
    }
    o
}

/// Runs one child in a fresh namespace and returns its `key=value` pairs (empty when it
/// printed none: it crashed or overran).
fn run_child(k: usize, child_args: &[String], overall: Duration) -> BTreeMap<String, String> {
    let ns = Netns::create(&format!("rpscale-{}-{k}", std::process::id()));
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(&exe)
        .args(child_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ip netns exec");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("RESULT ") {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    let got = rx.recv_timeout(overall).ok();
    if got.is_none() {
        eprintln!("scale: trial {k} printed no result within {overall:?}; killed");
        let _ = child.kill();
    }
    let _ = child.wait();
    drop(ns);
    got.unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[derive(Default)]
struct Cell {
    formation: Vec<Option<f64>>,
    silent: Vec<Option<f64>>,
    crash: Vec<Option<f64>>,
    wire: Vec<f64>,
    cpu: Vec<f64>,
    rss: Vec<f64>,
}

fn num(r: &BTreeMap<String, String>, k: &str) -> Option<f64> {
    r.get(k).and_then(|v| v.parse().ok())
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// The median of the runs that produced a figure, with how many did not.
fn median_opt(xs: &[Option<f64>]) -> (Option<f64>, usize) {
    let ok: Vec<f64> = xs.iter().flatten().copied().collect();
    (median(&ok), xs.len() - ok.len())
}

fn thousands(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{out}.{f}"),
        None => out,
    }
}

fn fmt_ms(xs: &[Option<f64>], missing: &str) -> String {
    match median_opt(xs) {
        (None, _) => missing.to_owned(),
        (Some(m), 0) => format!("{} ms", thousands(m, 0)),
        (Some(m), bad) => format!("{} ms ({bad}/{} {missing})", thousands(m, 0), xs.len()),
    }
}

fn fmt_num(xs: &[f64], decimals: usize, unit: &str) -> String {
    median(xs).map_or("–".into(), |m| {
        format!("{}{unit}", thousands(m, decimals))
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn parent_main(args: &[String]) {
    let o = parse_opts(args);
    sweep_stale_namespaces();
    let _busy: Vec<Victim> = (0..o.load)
        .map(|_| {
            let exe = std::env::current_exe().expect("own executable");
            Victim(
                Command::new(exe)
                    .args(["--busy", &std::process::id().to_string()])
                    .spawn()
                    .expect("spawn a busy loop"),
            )
        })
        .collect();
    println!(
        "# scale bench: load average {} at start; {} busy-loop process(es)",
        loadavg(),
        o.load
    );
    if let Some(window) = o.stability {
        stability(&o, window);
        println!("# load average {} at the end", loadavg());
        return;
    }
    println!(
        "# N = {:?}, {} run(s), steady window {:?} after {:?} of settling, deadlines {:?}",
        o.ns, o.runs, o.window, o.settle, o.deadline
    );
    for &t in &o.timings {
        for &s in &o.systems {
            println!("# {} at {}: {}", s.name(), t.name(), settings(s, t));
        }
    }
    let mut cells: BTreeMap<(usize, usize, usize), Cell> = BTreeMap::new();
    let mut k = 0;
    let overall = o.deadline * 4 + o.window + o.settle + Duration::from_secs(60);
    for &n in &o.ns {
        for run in 1..=o.runs {
            for (ti, &t) in o.timings.iter().enumerate() {
                for (si, &s) in o.systems.iter().enumerate() {
                    k += 1;
                    let child_args: Vec<String> = vec![
                        "--child".into(),
                        s.name().into(),
                        t.name().into(),
                        n.to_string(),
                        o.window.as_millis().to_string(),
                        o.deadline.as_millis().to_string(),
                        o.settle.as_millis().to_string(),
                    ];
                    let r = run_child(k, &child_args, overall);
                    eprintln!(
                        "# N={n} run {run} {} {}: {}",
                        t.name(),
                        s.name(),
                        r.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    let c = cells.entry((n, ti, si)).or_default();
                    c.formation.push(num(&r, "formation_ms"));
                    c.silent.push(num(&r, "silent_ms"));
                    c.crash.push(num(&r, "crash_ms"));
                    c.wire.extend(num(&r, "wire_b_node_s"));
                    c.cpu.extend(num(&r, "cpu_ms_node_s"));
                    c.rss.extend(num(&r, "rss_kib_node"));
                }
            }
        }
    }
    println!();
    println!(
        "| N | timing | system | formation | silent failure seen by all | crash seen by all | wire B/node/s | CPU ms/node/s | RSS/node |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((n, ti, si), c) in &cells {
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.timings[*ti].name(),
            o.systems[*si].name(),
            fmt_ms(&c.formation, "did not form"),
            fmt_ms(&c.silent, "not seen"),
            fmt_ms(&c.crash, "not seen"),
            fmt_num(&c.wire, 0, ""),
            fmt_num(&c.cpu, 2, ""),
            fmt_num(&c.rss, 0, " KiB"),
        );
    }
    let Some(rp) = o.systems.iter().position(|&s| s == System::Rallypoint) else {
        return;
    };
    println!();
    println!("| N | timing | ratio | formation | silent failure | crash | wire | CPU | RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            // Three significant figures, however small.
            let decimals = if r >= 100.0 {
                0
            } else {
                (2 - r.log10().floor() as i32).max(0) as usize
            };
            format!("{r:.decimals$}×")
        }
        _ => "–".into(),
    };
    for &n in &o.ns {
        for (ti, t) in o.timings.iter().enumerate() {
            let Some(mine) = cells.get(&(n, ti, rp)) else {
                continue;
            };
            for (si, s) in o.systems.iter().enumerate() {
                if si == rp {
                    continue;
                }
                let Some(other) = cells.get(&(n, ti, si)) else {
                    continue;
                };
                println!(
                    "| {n} | {} | rallypoint ÷ {} | {} | {} | {} | {} | {} | {} |",
                    t.name(),
                    s.name(),
                    ratio(
                        median_opt(&mine.formation).0,
                        median_opt(&other.formation).0
                    ),
                    ratio(median_opt(&mine.silent).0, median_opt(&other.silent).0),
                    ratio(median_opt(&mine.crash).0, median_opt(&other.crash).0),
                    ratio(median(&mine.wire), median(&other.wire)),
                    ratio(median(&mine.cpu), median(&other.cpu)),
                    ratio(median(&mine.rss), median(&other.rss)),
                );
            }
        }
    }
    println!();
    println!("# load average {} at the end", loadavg());
}

fn stability(o: &Opts, window: Duration) {
    let n = o.stability_n;
    println!("# stability: rallypoint, N = {n}, false nodedowns over {window:?} after formation");
    println!();
    println!("| N | timing | load | formation | false nodedowns | CPU ms/node/s |");
    println!("|---|---|---|---|---|---|");
    let overall = o.deadline + window + Duration::from_secs(60);
    for (k, &t) in o.timings.iter().enumerate() {
        let args: Vec<String> = vec![
            "--stability-child".into(),
            t.name().into(),
            n.to_string(),
            window.as_secs().to_string(),
            o.deadline.as_millis().to_string(),
        ];
        let r = run_child(k + 1, &args, overall);
        eprintln!(
            "# stability {}: {}",
            t.name(),
            r.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let formation = num(&r, "formation_ms")
            .map_or("did not form".into(), |m| format!("{} ms", thousands(m, 0)));
        let downs = r.get("false_downs").cloned().unwrap_or_else(|| "–".into());
        let cpu = num(&r, "cpu_ms_node_s").map_or("–".into(), |c| format!("{c:.2}"));
        println!(
            "| {n} | {} | {} busy | {formation} | {downs} | {cpu} |",
            t.name(),
            o.load
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--child") => child_main(&args[1..]),
        Some("--victim") => victim_main(&args[1..]),
        Some("--stability-child") => stability_child_main(&args[1..]),
        Some("--busy") => busy_main(&args[1..]),
        _ => parent_main(&args),
    }
}
